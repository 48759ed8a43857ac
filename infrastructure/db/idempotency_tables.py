"""Idempotency keys of create requests: one row per (caller, key), written in the same
transaction as the evaluation's events, so its primary key is what stops two concurrent
requests with one key from creating two evaluations."""

from __future__ import annotations

import sqlalchemy as sa

from infrastructure.db.metadata import metadata
from infrastructure.db.store_tables import ID, TIME

idempotency_keys = sa.Table(
    "idempotency_keys",
    metadata,
    sa.Column("caller_id", ID, nullable=False),
    sa.Column("key", sa.String(255), nullable=False),
    # SHA-256 of the workspace and the canonical request body: "the same request".
    sa.Column("fingerprint", sa.String(64), nullable=False),
    sa.Column("evaluation_id", ID, nullable=False),
    sa.Column("created_at", TIME, nullable=False),
    sa.PrimaryKeyConstraint("caller_id", "key"),
    sa.Index("ix_idempotency_keys_created_at", "created_at"),
)
