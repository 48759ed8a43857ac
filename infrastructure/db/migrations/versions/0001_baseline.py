"""Baseline schema: event log with its database-enforced rules, read models, identity.

Revision ID: 0001
Revises:
Create Date: 2026-11-26
"""

from alembic import op

from infrastructure.db import append_only
from infrastructure.db.tables import metadata

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    bind = op.get_bind()
    metadata.create_all(bind)
    for statement in append_only.SQLITE if bind.dialect.name == "sqlite" else append_only.POSTGRESQL:
        op.execute(statement)


def downgrade() -> None:
    bind = op.get_bind()
    for statement in (
        append_only.DROP_SQLITE if bind.dialect.name == "sqlite" else append_only.DROP_POSTGRESQL
    ):
        op.execute(statement)
    metadata.drop_all(bind)
