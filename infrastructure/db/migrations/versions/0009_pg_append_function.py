"""PostgreSQL: one database function takes the append lock, checks the log's head and inserts.

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-30

An append was three statements on PostgreSQL (the advisory lock, the insert, then COMMIT),
each a round trip. The function runs the first two as one call. Its statements run one after
another inside it, each with a snapshot of its own, so the head check sees every append that
committed while this one waited for the lock (one statement that waited inside itself would
compare against a snapshot taken before the wait). SQLite needs nothing: its appender holds
the database's only write lock from BEGIN IMMEDIATE.
"""

from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

COLUMNS = (
    ("event_id", "text"),
    ("stream_type", "text"),
    ("stream_id", "text"),
    ("stream_version", "int4"),
    ("event_type", "text"),
    ("schema_version", "int4"),
    ("data", "text"),
    ("metadata", "text"),
    ("recorded_at", "text"),
    ("prev_hash", "text"),
    ("hash", "text"),
    ("chain_prev_hash", "text"),
    ("chain_hash", "text"),
)
APPEND_LOCK_KEY = 0x61737361  # infrastructure.eventstore.APPEND_LOCK_KEY, frozen here
PARAMETERS = ", ".join(f"p_{name} {kind}[]" for name, kind in COLUMNS)
SIGNATURE = ", ".join(f"{kind}[]" for _, kind in COLUMNS) + ", int8"


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    names = ", ".join(name for name, _ in COLUMNS)
    arrays = ", ".join(f"p_{name}" for name, _ in COLUMNS)
    op.execute(
        f"""
        CREATE FUNCTION assay_append_events({PARAMETERS}, p_head int8)
        RETURNS TABLE (out_event_id text, out_position int8)
        LANGUAGE plpgsql VOLATILE AS $$
        BEGIN
            -- Every append takes this lock first: positions then commit in order.
            PERFORM pg_advisory_xact_lock({APPEND_LOCK_KEY});
            -- The rows' chain continues the head the caller knew; another writer moved it:
            -- insert nothing (the caller reads the head, still holding the lock, and retries).
            IF (SELECT coalesce(max(e.position), 0) FROM events e) <> p_head THEN
                RETURN;
            END IF;
            RETURN QUERY
                INSERT INTO events ({names})
                SELECT * FROM unnest({arrays})
                RETURNING events.event_id::text, events.position::int8;
        END
        $$
        """
    )


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(f"DROP FUNCTION assay_append_events({SIGNATURE})")
