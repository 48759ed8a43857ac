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
from sqlalchemy.exc import DBAPIError

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
    """Whether `exc`, as the database layer raised it, says the database cannot be reached
    right now. Only the database layer's own wrapping is looked through: a refused connection
    inside another library's error (an outbound HTTP call) is not the database."""
    if isinstance(exc, DBAPIError):
        if exc.connection_invalidated:
            return True
        original = exc.orig
        if isinstance(original, sqlite3.OperationalError):
            return any(text in str(original) for text in _SQLITE_BUSY)
        # SQLAlchemy's asyncpg adapter raises its own classes with the driver's error as cause.
        return any(
            candidate is not None and _is_driver_outage(candidate)
            for candidate in (original, getattr(original, "__cause__", None), exc.__cause__)
        )
    # Raised unwrapped when a new connection cannot be opened (the server is down).
    return _is_driver_outage(exc)


def _is_driver_outage(exc: BaseException) -> bool:
    if isinstance(exc, _DRIVER_OUTAGES):
        return True
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
