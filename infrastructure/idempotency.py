"""Idempotency keys on disk: look one up, and the side write that records one inside the
append transaction of the evaluation it created (see infrastructure.db.idempotency_tables)."""

from __future__ import annotations

import msgspec
import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from infrastructure.db.idempotency_tables import idempotency_keys as table
from infrastructure.eventstore import SideWrite


class StoredKey(msgspec.Struct, frozen=True, kw_only=True):
    fingerprint: str
    evaluation_id: str
    created_at: str


_LOOKUP = sa.select(table.c.fingerprint, table.c.evaluation_id, table.c.created_at).where(
    table.c.caller_id == sa.bindparam("caller_id"),
    table.c.key == sa.bindparam("key"),
    table.c.created_at >= sa.bindparam("since"),
)


class IdempotencyKeys:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def find(self, caller_id: str, key: str, *, since: str) -> StoredKey | None:
        """The key's record if it was stored at or after `since` (older ones have expired)."""
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(_LOOKUP, {"caller_id": caller_id, "key": key, "since": since})
            ).first()
        if row is None:
            return None
        return StoredKey(fingerprint=row[0], evaluation_id=row[1], created_at=row[2])

    @staticmethod
    def record(caller_id: str, key: str, stored: StoredKey, *, expired_before: str) -> SideWrite:
        """Insert the key with the append; a concurrent request that recorded the same key
        first makes the insert (and so the whole append) fail on the primary key. Expired
        keys go first, the caller's own included, so a key may be used again after expiry."""

        def write(conn: Connection) -> None:
            conn.execute(sa.delete(table).where(table.c.created_at < expired_before))
            conn.execute(
                sa.insert(table).values(
                    caller_id=caller_id,
                    key=key,
                    fingerprint=stored.fingerprint,
                    evaluation_id=stored.evaluation_id,
                    created_at=stored.created_at,
                )
            )

        return write
