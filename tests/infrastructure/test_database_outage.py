"""Which failures mean "the database is away" (503, and worth retrying), on both drivers, and
`ride_out` retrying only those."""

from __future__ import annotations

import sqlite3

import asyncpg
import httpx
import pytest
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError

from infrastructure.db import outage
from infrastructure.db.outage import is_database_unavailable, ride_out


def _wrapped(original: BaseException, kind: type[DBAPIError] = OperationalError) -> DBAPIError:
    return kind("SELECT 1", {}, original)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "failure",
    [
        ConnectionRefusedError(111, "Connect call failed"),
        ConnectionResetError(104, "reset by peer"),
        TimeoutError(),
        asyncpg.CannotConnectNowError("the database system is starting up"),
        asyncpg.AdminShutdownError("terminating connection due to administrator command"),
        asyncpg.ConnectionDoesNotExistError("connection was closed in the middle of operation"),
        _wrapped(sqlite3.OperationalError("database is locked")),
        _wrapped(asyncpg.CannotConnectNowError("the database system is shutting down")),
    ],
    ids=repr,
)
def test_outages_are_recognised(failure: BaseException) -> None:
    assert is_database_unavailable(failure)


def test_a_refused_outbound_http_call_is_not_a_database_outage() -> None:
    refused = httpx.ConnectError("connection refused")
    refused.__cause__ = ConnectionRefusedError(111, "refused")
    assert not is_database_unavailable(refused)


@pytest.mark.parametrize(
    "failure",
    [
        ValueError("a bug"),
        FileNotFoundError("a task file"),
        _wrapped(sqlite3.OperationalError("no such table: events")),
        _wrapped(sqlite3.IntegrityError("UNIQUE constraint failed"), IntegrityError),
    ],
    ids=repr,
)
def test_other_failures_are_not_outages(failure: BaseException) -> None:
    assert not is_database_unavailable(failure)


async def test_ride_out_retries_an_outage_until_the_database_answers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(outage.asyncio, "sleep", _no_sleep)
    calls: list[int] = []

    async def attempt() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionRefusedError(111, "refused")
        return "appended"

    assert await ride_out(attempt, what="test") == "appended"
    assert len(calls) == 3


async def test_ride_out_raises_other_failures_at_once() -> None:
    calls: list[int] = []

    async def attempt() -> None:
        calls.append(1)
        raise ValueError("a bug")

    with pytest.raises(ValueError):
        await ride_out(attempt, what="test")
    assert len(calls) == 1


async def test_ride_out_gives_up_after_its_patience() -> None:
    async def attempt() -> None:
        raise ConnectionRefusedError(111, "refused")

    with pytest.raises(ConnectionRefusedError):
        await ride_out(attempt, what="test", patience_seconds=0)


async def _no_sleep(_seconds: float) -> None:
    return None
