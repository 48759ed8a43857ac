"""SQLite write transactions, run on the event loop's own connection while the lock is free and
on one writer thread when it is not.

Through aiosqlite every cursor, execute, fetch and close is a round trip to aiosqlite's own
thread (about four per statement, each a queue put and a loop wake-up), and on this stack those
hops, not SQLite, were the cost of an append (`../shared/perf-baseline.md`: 1.9 ms of CPU for an
append with its read-model update through SQLAlchemy async, 0.1 ms through sqlite3). So the
whole transaction (BEGIN IMMEDIATE, inserts, the inline projection, COMMIT) runs on a stdlib
sqlite3 connection.

Even one hop to a thread and back (a future, a wake-up of the loop through its socket, the GIL
passed twice) cost more than the transaction itself once the statements were prepared: in WAL
mode with synchronous=NORMAL a commit does not wait for the disk. So the loop runs the
transaction itself on a connection of its own whose busy timeout is zero: it only ever starts
when the write lock is free (BEGIN IMMEDIATE fails at once otherwise) and then holds the lock
for the few statements of one batch. When another connection holds the lock (another process,
the async engine's own writes), the transaction goes to the writer thread instead, which waits
for the lock (busy_timeout) without blocking the loop. One thread is all a SQLite file can use:
it has one writer at a time.
"""

from __future__ import annotations

import asyncio
import functools
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from sqlalchemy.engine import Connection, Engine

from infrastructure.db.engine import WRITE_OPTION

T = TypeVar("T")


class SQLiteWriter:
    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="assay-sqlite-writer")
        # The loop's own connection (never waits for the lock), opened at the first write.
        self._inline: Connection | None = None

    async def transaction(self, work: Callable[[Connection], T]) -> T:
        """Run `work` in one write transaction (BEGIN IMMEDIATE); commit if it returns."""
        conn = self._inline_connection()
        driver = conn.connection.driver_connection
        assert isinstance(driver, sqlite3.Connection)
        try:
            driver.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError:
            # The lock is taken: wait for it off the loop.
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self._thread, functools.partial(self._run, work))
        try:
            result = work(conn)
        except BaseException:
            # The body's statements ran through `conn` (SQLAlchemy began its own transaction
            # object over the one opened above): roll back both views of the one transaction.
            if conn.in_transaction():
                conn.rollback()
            if driver.in_transaction:
                driver.rollback()
            raise
        if conn.in_transaction():
            conn.commit()
        else:
            driver.commit()
        return result

    def _inline_connection(self) -> Connection:
        if self._inline is None:
            conn = self._engine.connect()
            conn.exec_driver_sql("PRAGMA busy_timeout=0")
            conn.commit()
            self._inline = conn
        return self._inline

    def _run(self, work: Callable[[Connection], T]) -> T:
        with self._engine.connect() as conn:
            conn.execution_options(**{WRITE_OPTION: True})
            with conn.begin():
                return work(conn)

    async def close(self) -> None:
        if self._inline is not None:
            # Its busy timeout is zero: discard it rather than hand it back to the pool.
            self._inline.invalidate()
            self._inline.close()
            self._inline = None
        await asyncio.to_thread(self._thread.shutdown, wait=True)
        self._engine.dispose()
