"""Engine factory: one place that knows how each dialect is tuned."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

# Execution option a connection sets before it begins a transaction that will write.
WRITE_OPTION = "assay_write"


def is_sqlite_url(url: str) -> bool:
    return url.startswith("sqlite")


def create_engine(url: str, *, pool_size: int = 10) -> AsyncEngine:
    """An async engine for `sqlite+aiosqlite://` or `postgresql+asyncpg://` URLs."""
    if is_sqlite_url(url):
        engine = create_async_engine(url, poolclass=NullPool if ":memory:" in url else None)
        _tune_sqlite(engine.sync_engine)
        return engine
    if url.startswith("postgresql://"):
        url = "postgresql+asyncpg://" + url.removeprefix("postgresql://")
    # pool_pre_ping: a pooled connection is checked before use, so connections that died with
    # a database restart are replaced instead of failing the request that draws them.
    return create_async_engine(url, pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True)


def create_sqlite_sync_engine(engine: AsyncEngine) -> Engine | None:
    """A synchronous (stdlib sqlite3) engine on the same SQLite file as `engine`, tuned the
    same way; None for PostgreSQL and for in-memory databases (another connection would see
    another database)."""
    url = engine.url
    if engine.dialect.name != "sqlite" or url.database in (None, "", ":memory:"):
        return None
    sync = sa.create_engine(url.set(drivername="sqlite"))
    _tune_sqlite(sync)
    return sync


def _tune_sqlite(engine: Engine) -> None:
    # WAL lets readers run beside the one writer; `isolation_level=None` hands transaction
    # control to us so every append can open with BEGIN IMMEDIATE (commit order == position order).
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA busy_timeout=10000")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        # Writers take the database lock up front. Readers open no transaction at all: each
        # read is one statement, and skipping BEGIN saves a hop to aiosqlite's thread.
        if conn.get_execution_options().get(WRITE_OPTION, False):
            conn.exec_driver_sql("BEGIN IMMEDIATE")


@asynccontextmanager
async def write_transaction(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """A transaction that will write: commits on success, rolls back on error.

    On SQLite it opens with BEGIN IMMEDIATE, taking the write lock up front instead of failing
    mid-way when a deferred transaction tries to upgrade its lock.
    """
    async with engine.connect() as conn:
        await conn.execution_options(**{WRITE_OPTION: True})
        async with conn.begin():
            yield conn
