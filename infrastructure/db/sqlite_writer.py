"""One thread that runs SQLite write transactions, each as a single hop from the event loop.

Through aiosqlite every cursor, execute, fetch and close is a round trip to aiosqlite's own
thread (about four per statement, each a queue put and a loop wake-up), and on this stack those
hops, not SQLite, were the cost of an append (`../shared/perf-baseline.md`: 1.9 ms of CPU for an
append with its read-model update through SQLAlchemy async, 0.1 ms through sqlite3). Here the
whole transaction (BEGIN IMMEDIATE, inserts, the inline projection, COMMIT) runs on a stdlib
sqlite3 connection in this thread, and the loop waits for it once. One thread is also all a
SQLite file can use: it has one writer at a time.
"""

from __future__ import annotations

import asyncio
import functools
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

    async def transaction(self, work: Callable[[Connection], T]) -> T:
        """Run `work` in one write transaction (BEGIN IMMEDIATE); commit if it returns."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._thread, functools.partial(self._run, work))

    def _run(self, work: Callable[[Connection], T]) -> T:
        with self._engine.connect() as conn:
            conn.execution_options(**{WRITE_OPTION: True})
            with conn.begin():
                return work(conn)

    async def close(self) -> None:
        await asyncio.to_thread(self._thread.shutdown, wait=True)
        self._engine.dispose()
