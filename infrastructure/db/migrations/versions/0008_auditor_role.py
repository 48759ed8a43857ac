"""The auditor role: memberships may hold `auditor` (read-only on the org, plus its feed).

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-30
"""

from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

OLD = "role IN ('owner', 'admin', 'member', 'viewer')"
NEW = "role IN ('owner', 'admin', 'member', 'viewer', 'auditor')"


def _replace_check(condition: str) -> None:
    # Batch mode: SQLite cannot alter a CHECK constraint in place, so the table is copied.
    with op.batch_alter_table("memberships", recreate="always") as batch:
        batch.drop_constraint(op.f("ck_memberships_role"), type_="check")
        batch.create_check_constraint("role", condition)


def upgrade() -> None:
    _replace_check(NEW)


def downgrade() -> None:
    op.execute("DELETE FROM memberships WHERE role = 'auditor'")
    _replace_check(OLD)
