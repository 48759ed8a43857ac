"""Telling "the database is away" (restarting, unreachable, refusing connections for now) from
every other database error, on both drivers, and riding such an outage out.

The API answers these with 503 (app/errors.py) and recovers by itself: the engine checks a
pooled connection before handing it out (pool_pre_ping), so connections that died with the
server are replaced instead of failing the next request. Workers retry their appends through
`ride_out`: an append retried with the same event ids is idempotent (the event store answers
the events it already stored), so an outcome is never recorded twice even when the first
attempt committed and only its answer was lost.
"""

from __future__ import annotations

import asyncio
import socket
import sqlite3
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import asyncpg
import structlog
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

log = structlog.get_logger("assay.db")

T = TypeVar("T")

_DRIVER_OUTAGES: tuple[type[BaseException], ...] = (
    ConnectionError,  # refused, reset, aborted
    socket.gaierror,  # the host name does not resolve (yet)
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,  # "the database system is starting up / shutting down"
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    asyncpg.TooManyConnectionsError,
    asyncpg.InterfaceError,  # "connection is closed", "another operation is in progress"
)
# SQLite's only passing failure: another process holds the write lock past busy_timeout.
_SQLITE_BUSY = ("database is locked", "database is busy")


def is_database_unavailable(exc: BaseException) -> bool:
    """Whether `exc` (or what it wraps) says the database cannot be reached right now."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, DBAPIError) and current.connection_invalidated:
            return True
        if isinstance(current, OperationalError | InterfaceError):
            original = current.orig
            if isinstance(original, sqlite3.OperationalError):
                return any(text in str(original) for text in _SQLITE_BUSY)
            if original is not None and _is_driver_outage(original):
                return True
        if _is_driver_outage(current):
            return True
        current = current.__cause__ or current.__context__
    return False


def _is_driver_outage(exc: BaseException) -> bool:
    if isinstance(exc, _DRIVER_OUTAGES):
        return True
    # SQLAlchemy's asyncpg adapter re-raises driver errors as its own classes and keeps the
    # driver's exception in `__cause__`; the adapter's names are all we see without it.
    return type(exc).__name__ in {"ConnectionDoesNotExistError", "CannotConnectNowError"}


async def ride_out(
    attempt: Callable[[], Awaitable[T]], *, what: str, patience_seconds: float = 120.0
) -> T:
    """Run `attempt`, retrying while the database is away, for up to `patience_seconds`
    (then the last error is raised). Only for attempts that are safe to repeat."""
    deadline = time.monotonic() + patience_seconds
    delay = 0.2
    while True:
        try:
            return await attempt()
        except Exception as exc:
            if not is_database_unavailable(exc) or time.monotonic() + delay > deadline:
                raise
            log.warning("database_unavailable_retrying", what=what, error=repr(exc), delay=delay)
        await asyncio.sleep(delay)
        delay = min(delay * 2, 5.0)
