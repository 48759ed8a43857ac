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
    # The evaluation's rank in its workspace in creation (commit) order, 1, 2, 3...: the list's
    # order, and a key to seek page N by (infrastructure.list_counts). Null only in a row a
    # migration could not rank (never written so by the projection).
    sa.Column("workspace_seq", sa.BigInteger, nullable=True),
    # The same within its project (null without one): a project's list seeks by it.
    sa.Column("project_seq", sa.BigInteger, nullable=True),
    # One index per filter the list offers, each ending in its order: no sort, no scan.
    sa.Index("ix_evaluations_ws_seq", "workspace_id", "workspace_seq", unique=True),
    sa.Index("ix_evaluations_ws_status_seq", "workspace_id", "status", "workspace_seq"),
    sa.Index(
        "ix_evaluations_ws_project_seq", "workspace_id", "project_id", "project_seq", unique=True
    ),
    sa.Index(
        "ix_evaluations_ws_project_status_seq",
        "workspace_id",
        "project_id",
        "status",
        "workspace_seq",
    ),
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

# How many evaluations each list filter matches, kept by the inline projection so a list's
# total is one row, not a count(*). "" stands for "any" (project_id "" counts every project).
evaluation_counts = sa.Table(
    "evaluation_counts",
    metadata,
    sa.Column("workspace_id", ID, primary_key=True),
    sa.Column("project_id", sa.String(36), primary_key=True),
    sa.Column("status", sa.String(16), primary_key=True),
    sa.Column("total", sa.BigInteger, nullable=False),
)

READ_MODEL_TABLES = (evaluations, items, evaluation_counts)
