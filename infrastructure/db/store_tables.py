"""The event log and the inline read-model tables.

Ids are canonical UUID text and times are fixed-width ISO-8601 UTC text on both dialects, so
id-prefix lookups and time ordering are plain string comparisons that use the indexes.
"""

from __future__ import annotations

import sqlalchemy as sa

from infrastructure.db.metadata import metadata

ID = sa.String(36)
TIME = sa.String(32)
HASH = sa.String(64)
# SQLite only makes INTEGER PRIMARY KEY an alias of its rowid (monotonic with AUTOINCREMENT).
POSITION = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

events = sa.Table(
    "events",
    metadata,
    sa.Column("position", POSITION, sa.Identity(always=False), primary_key=True),
    sa.Column("event_id", ID, nullable=False, unique=True),
    sa.Column("stream_type", sa.String(32), nullable=False),
    sa.Column("stream_id", ID, nullable=False),
    sa.Column("stream_version", sa.Integer, nullable=False),
    sa.Column("event_type", sa.String(64), nullable=False),
    sa.Column("schema_version", sa.Integer, nullable=False),
    sa.Column("data", sa.Text, nullable=False),
    sa.Column("metadata", sa.Text, nullable=False),
    sa.Column("recorded_at", TIME, nullable=False),
    # The audit hash chains (domain/audit_chain.py), lower-case hex SHA-256, written by the
    # append that inserts the row. The empty default only serves rows that bypass the store
    # (benchmark filler); `assay audit verify` reports such rows.
    sa.Column("prev_hash", HASH, nullable=False, server_default=""),
    sa.Column("hash", HASH, nullable=False, server_default=""),
    sa.Column("chain_prev_hash", HASH, nullable=False, server_default=""),
    sa.Column("chain_hash", HASH, nullable=False, server_default=""),
    sa.UniqueConstraint("stream_type", "stream_id", "stream_version", name="uq_events_stream"),
    sqlite_autoincrement=True,
)

# Inline read models: a few indexed columns to filter and sort by, and the whole view as JSON.
evaluations = sa.Table(
    "evaluations",
    metadata,
    sa.Column("id", ID, primary_key=True),
    sa.Column("org_id", ID, nullable=False),
    sa.Column("workspace_id", ID, nullable=False),
    sa.Column("project_id", ID, nullable=True),
    sa.Column("created_by", ID, nullable=True),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("created_at", TIME, nullable=False),
    sa.Column("last_position", sa.BigInteger, nullable=False),
    sa.Column("doc", sa.Text, nullable=False),
    sa.Index("ix_evaluations_ws_created", "workspace_id", "created_at"),
)

items = sa.Table(
    "items",
    metadata,
    sa.Column("id", ID, primary_key=True),
    sa.Column("evaluation_id", ID, nullable=False),
    sa.Column("position", sa.Integer, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("last_position", sa.BigInteger, nullable=False),
    sa.Column("doc", sa.Text, nullable=False),
    sa.Index("ix_items_evaluation_position", "evaluation_id", "position"),
)

READ_MODEL_TABLES = (evaluations, items)
