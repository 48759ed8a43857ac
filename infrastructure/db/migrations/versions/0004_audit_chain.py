"""Audit hash chains: four hash columns on `events`, backfilled in position order.

The backfill is the one time rows of the log are updated: the append-only trigger is lifted for
it inside this migration's transaction and restored before it commits.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30
"""

import json

import sqlalchemy as sa
from alembic import op

from domain.audit_chain import ZERO_HASH, Chainer, event_content
from infrastructure.db import append_only

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

HASH_COLUMNS = ("prev_hash", "hash", "chain_prev_hash", "chain_hash")
PAGE = 5000


def upgrade() -> None:
    for name in HASH_COLUMNS:
        op.add_column(
            "events", sa.Column(name, sa.String(length=64), nullable=False, server_default="")
        )
    bind = op.get_bind()
    sqlite = bind.dialect.name == "sqlite"
    if sqlite:
        op.execute("DROP TRIGGER IF EXISTS events_no_update")
    else:
        op.execute("ALTER TABLE events DISABLE TRIGGER events_no_update_delete")
    _backfill(bind)
    if sqlite:
        op.execute(append_only.SQLITE[0])
    else:
        op.execute("ALTER TABLE events ENABLE TRIGGER events_no_update_delete")


def _backfill(bind: sa.engine.Connection) -> None:
    select = sa.text(
        "SELECT position, event_id, stream_type, stream_id, stream_version, event_type,"
        " schema_version, data, metadata, recorded_at FROM events"
        " WHERE position > :after ORDER BY position LIMIT :limit"
    )
    update = sa.text(
        "UPDATE events SET prev_hash = :prev_hash, hash = :hash,"
        " chain_prev_hash = :chain_prev_hash, chain_hash = :chain_hash WHERE position = :position"
    )
    chainer = Chainer(chain_head=ZERO_HASH)
    heads: dict[tuple[str, str], str] = {}
    after = 0
    while True:
        rows = bind.execute(select, {"after": after, "limit": PAGE}).all()
        if not rows:
            return
        updates = []
        for row in rows:
            (position, event_id, stream_type, stream_id, version, event_type, schema) = row[:7]
            content = event_content(
                event_id=event_id,
                stream_type=stream_type,
                stream_id=stream_id,
                stream_version=version,
                event_type=event_type,
                schema_version=schema,
                data=json.loads(row[7]),
                metadata=json.loads(row[8]),
                recorded_at=row[9],
            )
            prev = heads.get((stream_type, stream_id), ZERO_HASH)
            own, chain_prev, chain = chainer.link(prev, content)
            heads[(stream_type, stream_id)] = own
            updates.append(
                {
                    "position": position,
                    "prev_hash": prev,
                    "hash": own,
                    "chain_prev_hash": chain_prev,
                    "chain_hash": chain,
                }
            )
        bind.execute(update, updates)
        after = rows[-1][0]


def downgrade() -> None:
    for name in reversed(HASH_COLUMNS):
        op.drop_column("events", name)
