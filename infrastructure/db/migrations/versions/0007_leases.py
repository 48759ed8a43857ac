"""Leases out of the log: a table of which worker holds which in-flight item, until when.

Revision ID: 0007
Revises: 0005
Create Date: 2026-11-30

Until now a worker appended `item.lease_renewed` every few seconds per running item. From here
a renewal updates this table; the log keeps claims, expiries (as infra failures) and outcomes.
Items in flight at upgrade get the lease their read-model row shows.
"""

import json

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0005"
branch_labels = None
depends_on = None

IN_FLIGHT = ("claiming", "provisioning", "agent_running", "agent_finished", "verifying")


def upgrade() -> None:
    op.create_table(
        "leases",
        sa.Column("item_id", sa.String(length=36), nullable=False),
        sa.Column("evaluation_id", sa.String(length=36), nullable=False),
        sa.Column("worker_id", sa.String(length=128), nullable=False),
        sa.Column("expires_at", sa.String(length=32), nullable=False),
        sa.PrimaryKeyConstraint("item_id", name=op.f("pk_leases")),
    )
    op.create_index("ix_leases_evaluation", "leases", ["evaluation_id"])
    op.create_index("ix_leases_expires_at", "leases", ["expires_at"])
    # The read model's lease is the latest renewal recorded in the log, which is what held.
    items = sa.table(
        "items",
        sa.column("id"),
        sa.column("evaluation_id"),
        sa.column("status"),
        sa.column("doc"),
    )
    bind = op.get_bind()
    rows = bind.execute(
        sa.select(items.c.id, items.c.evaluation_id, items.c.doc).where(
            items.c.status.in_(IN_FLIGHT)
        )
    ).all()
    leases = []
    for item_id, evaluation_id, doc in rows:
        view = json.loads(doc)
        if view.get("worker_id") and view.get("lease_expires_at"):
            leases.append(
                {
                    "item_id": item_id,
                    "evaluation_id": evaluation_id,
                    "worker_id": view["worker_id"],
                    "expires_at": view["lease_expires_at"],
                }
            )
    if leases:
        op.bulk_insert(
            sa.table(
                "leases",
                sa.column("item_id"),
                sa.column("evaluation_id"),
                sa.column("worker_id"),
                sa.column("expires_at"),
            ),
            leases,
        )


def downgrade() -> None:
    op.drop_index("ix_leases_expires_at", table_name="leases")
    op.drop_index("ix_leases_evaluation", table_name="leases")
    op.drop_table("leases")
