"""Operational tables of the execution engine, outside the event log.

`workers` is a registry of live worker processes (heartbeats), used to size
`effective_concurrency` and to tell orphaned sandboxes from live ones. `transcript_messages`
holds what agents said and did: bulky artifacts, redacted of secrets, keyed by the session
id that the item's `item.agent_started` event records.
"""

from __future__ import annotations

import sqlalchemy as sa

from infrastructure.db.metadata import metadata
from infrastructure.db.store_tables import ID, TIME

workers = sa.Table(
    "workers",
    metadata,
    sa.Column("id", sa.String(128), primary_key=True),
    sa.Column("hostname", sa.String(255), nullable=False),
    sa.Column("pid", sa.Integer, nullable=False),
    sa.Column("slots", sa.Integer, nullable=False),
    sa.Column("started_at", TIME, nullable=False),
    sa.Column("heartbeat_at", TIME, nullable=False),
)

transcript_messages = sa.Table(
    "transcript_messages",
    metadata,
    sa.Column("session_id", ID, primary_key=True),
    sa.Column("seq", sa.Integer, primary_key=True),
    sa.Column("item_id", ID, nullable=False),
    sa.Column("role", sa.String(32), nullable=False),
    sa.Column("content", sa.Text, nullable=True),
    sa.Column("tool_calls", sa.Text, nullable=True),
    sa.Column("tool_call_id", sa.String(128), nullable=True),
    sa.Column("metadata", sa.Text, nullable=False),
    sa.Column("created_at", TIME, nullable=False),
    sa.Index("ix_transcript_messages_item", "item_id"),
)

# Which worker holds which in-flight item, until when. Bookkeeping, not history: a claim and
# an item's leaving flight are events (the lease book follows them in the same transaction),
# but a renewal only moves `expires_at` here, so the log is not filled with heartbeats.
leases = sa.Table(
    "leases",
    metadata,
    sa.Column("item_id", ID, primary_key=True),
    sa.Column("evaluation_id", ID, nullable=False),
    sa.Column("worker_id", sa.String(128), nullable=False),
    sa.Column("expires_at", TIME, nullable=False),
    sa.Index("ix_leases_evaluation", "evaluation_id"),
    sa.Index("ix_leases_expires_at", "expires_at"),
)
