"""PostgreSQL append transactions on one connection the event store keeps while it appends.

Drawing a pooled connection per append cost three round trips before the first statement: the
pool checks a connection before handing it out (pool_pre_ping: BEGIN, `;`, ROLLBACK through
the asyncpg adapter), which on one writer was as many round trips as the append itself. The
store's appends are already one at a time (its drain commits one batch after another), so one
connection held while appends keep coming pays that check once; the store hands it back to
the pool (`release`) when its queue runs dry.

A held connection can die with a database restart. It is then found out by a statement of
the next transaction, before its COMMIT: nothing of it was written (PostgreSQL drops an open
transaction with its connection), so that attempt is discarded and run again on a freshly
checked (pre-pinged) connection, and an append after a restart succeeds as it did when every
append drew from the pool. A failure at COMMIT is raised: whether it committed is unknown, and
callers retry with the same event ids, which the store answers idempotently.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import TypeVar

from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from infrastructure.db.outage import is_database_unavailable

T = TypeVar("T")


class PostgresWriter:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._conn: AsyncConnection | None = None

    async def transaction(self, work: Callable[[Connection], T]) -> T:
        """Run `work` in one transaction; commit if it returns, roll back if it raises.
        `work` must be safe to run again after a rollback (it is, once, after a connection
        that died while held)."""
        for attempt in (1, 2):
            held = self._conn is not None
            conn = await self._connection()
            try:
                await conn.begin()
                result = await conn.run_sync(work)
            except DBAPIError as exc:
                await self._roll_back()
                if attempt == 1 and held and is_database_unavailable(exc):
                    continue  # the held connection died: nothing of this attempt was written
                raise
            except BaseException:
                await self._roll_back()
                raise
            try:
                await conn.commit()
            except BaseException:
                await self._roll_back()
                raise
            return result
        raise AssertionError("unreachable: the second attempt returns or raises")

    async def _connection(self) -> AsyncConnection:
        if self._conn is None:
            self._conn = await self._engine.connect()
        return self._conn

    async def _roll_back(self) -> None:
        conn = self._conn
        if conn is None:
            return
        try:
            await conn.rollback()
        except Exception:
            await self._discard()
        else:
            if conn.invalidated:
                await self._discard()

    async def _discard(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        try:
            await conn.invalidate()
            await conn.close()
        except Exception:
            pass  # already gone with its server

    async def release(self) -> None:
        """Hand the connection back to the pool (the next transaction draws a checked one)."""
        conn, self._conn = self._conn, None
        if conn is not None:
            # A connection that died is discarded by the pool.
            with contextlib.suppress(Exception):
                await conn.close()

    async def close(self) -> None:
        await self.release()
