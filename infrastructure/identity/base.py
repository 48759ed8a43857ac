"""What every part of the identity store shares: its engine, cipher and transactions.

Every store method is one short transaction. Writes open with the engine's write option, so on
SQLite they take the lock up front (BEGIN IMMEDIATE) instead of failing mid-way on an upgrade.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import sqlalchemy as sa
from cryptography.fernet import Fernet
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from infrastructure.db.engine import write_transaction
from infrastructure.identity.records import AlreadyExists, NotFound


def new_id() -> str:
    return str(uuid.uuid4())


def as_row(record: Any) -> dict[str, Any]:
    """A record's fields as insert parameters (record fields are named after columns)."""
    return {name: getattr(record, name) for name in record.__struct_fields__}


class StoreBase:
    def __init__(self, engine: AsyncEngine, cipher: Fernet | None) -> None:
        self._engine = engine
        self._cipher = cipher

    @asynccontextmanager
    async def _read(self) -> AsyncIterator[AsyncConnection]:
        async with self._engine.connect() as conn:
            yield conn

    @asynccontextmanager
    async def _write(self, what: str = "record") -> AsyncIterator[AsyncConnection]:
        try:
            async with write_transaction(self._engine) as conn:
                yield conn
        except sa.exc.IntegrityError:
            # Parents are checked first in the same transaction, so what is left is a unique
            # constraint. `from None`: the driver's message repeats the bound parameters.
            raise AlreadyExists(what) from None

    async def _fetch_one(self, stmt: sa.Executable, **params: Any) -> dict[str, Any] | None:
        async with self._read() as conn:
            row = (await conn.execute(stmt, params)).mappings().first()
        return None if row is None else dict(row)

    async def _fetch_all(self, stmt: sa.Executable, **params: Any) -> list[dict[str, Any]]:
        async with self._read() as conn:
            return [dict(row) for row in (await conn.execute(stmt, params)).mappings()]

    @staticmethod
    async def _require(
        conn: AsyncConnection, stmt: sa.Executable, what: str, **params: Any
    ) -> None:
        if (await conn.execute(stmt, params)).first() is None:
            raise NotFound(what)
