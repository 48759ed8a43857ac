"""Lists at scale: per-filter indexes ending in the list's order, ranks, and list counters.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-30

Backfilled from the existing rows exactly as the projection would have written them: an
evaluation's rank is its place in its workspace (and in its project) by the position of its
`evaluation.created` event (commit order), and the counters are counts of the rows per filter.
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

_RANKS = """
UPDATE evaluations SET workspace_seq = ranked.seq, project_seq = ranked.project_seq FROM (
    SELECT e.id AS id,
           row_number() OVER (PARTITION BY e.workspace_id ORDER BY created.position) AS seq,
           CASE WHEN e.project_id IS NULL OR e.project_id = '' THEN NULL ELSE row_number() OVER (
               PARTITION BY e.workspace_id, e.project_id ORDER BY created.position
           ) END AS project_seq
    FROM evaluations e
    JOIN events created
      ON created.stream_type = 'evaluation' AND created.stream_id = e.id
     AND created.stream_version = 1
) AS ranked
WHERE evaluations.id = ranked.id
"""

_COUNTS = """
INSERT INTO evaluation_counts (workspace_id, project_id, status, total)
SELECT workspace_id, '', '', count(*) FROM evaluations GROUP BY workspace_id
UNION ALL
SELECT workspace_id, '', status, count(*) FROM evaluations GROUP BY workspace_id, status
UNION ALL
SELECT workspace_id, project_id, '', count(*) FROM evaluations
 WHERE project_id IS NOT NULL AND project_id <> '' GROUP BY workspace_id, project_id
UNION ALL
SELECT workspace_id, project_id, status, count(*) FROM evaluations
 WHERE project_id IS NOT NULL AND project_id <> '' GROUP BY workspace_id, project_id, status
"""


def upgrade() -> None:
    op.add_column("evaluations", sa.Column("workspace_seq", sa.BigInteger(), nullable=True))
    op.add_column("evaluations", sa.Column("project_seq", sa.BigInteger(), nullable=True))
    op.execute(_RANKS)
    op.drop_index("ix_evaluations_ws_created", table_name="evaluations")
    op.create_index(
        "ix_evaluations_ws_seq", "evaluations", ["workspace_id", "workspace_seq"], unique=True
    )
    op.create_index(
        "ix_evaluations_ws_status_seq", "evaluations", ["workspace_id", "status", "workspace_seq"]
    )
    op.create_index(
        "ix_evaluations_ws_project_seq",
        "evaluations",
        ["workspace_id", "project_id", "project_seq"],
        unique=True,
    )
    op.create_index(
        "ix_evaluations_ws_project_status_seq",
        "evaluations",
        ["workspace_id", "project_id", "status", "workspace_seq"],
    )
    op.create_table(
        "evaluation_counts",
        sa.Column("workspace_id", sa.String(length=36), nullable=False),
        sa.Column("project_id", sa.String(length=36), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("total", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint(
            "workspace_id", "project_id", "status", name=op.f("pk_evaluation_counts")
        ),
    )
    op.execute(_COUNTS)


def downgrade() -> None:
    op.drop_table("evaluation_counts")
    op.drop_index("ix_evaluations_ws_project_status_seq", table_name="evaluations")
    op.drop_index("ix_evaluations_ws_project_seq", table_name="evaluations")
    op.drop_index("ix_evaluations_ws_status_seq", table_name="evaluations")
    op.drop_index("ix_evaluations_ws_seq", table_name="evaluations")
    op.create_index(
        "ix_evaluations_ws_created", "evaluations", ["workspace_id", "created_at"], unique=False
    )
    with op.batch_alter_table("evaluations") as batch:
        batch.drop_column("project_seq")
        batch.drop_column("workspace_seq")
