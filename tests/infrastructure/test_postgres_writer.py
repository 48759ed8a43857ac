"""The PostgreSQL writer keeps one connection while appends keep coming: a connection that died
while held (a database restart, an operator's pg_terminate_backend) costs the next append
nothing but a fresh connection, and an idle store holds none."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from infrastructure.db.engine import create_engine
from infrastructure.db.postgres_writer import PostgresWriter
from infrastructure.eventstore import EventStore, NewEvent, StreamAppend
from tests.conftest import PgDatabases

AT = "2026-11-30T00:00:00.000000Z"


@pytest.fixture
def pg_url(pg_databases: PgDatabases) -> str:
    return pg_databases.new_database()


@pytest.fixture
async def pg_engine(pg_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(pg_url)
    yield engine
    await engine.dispose()


def backend_pid(conn: Connection) -> int:
    return int(conn.exec_driver_sql("SELECT pg_backend_pid()").scalar_one())


async def terminate(engine: AsyncEngine, pid: int) -> None:
    async with engine.connect() as admin:
        await admin.execute(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})


async def test_a_held_connection_that_died_is_replaced_and_the_transaction_runs_once(
    pg_engine: AsyncEngine,
) -> None:
    writer = PostgresWriter(pg_engine)
    runs: list[int] = []

    def work(conn: Connection) -> int:
        pid = backend_pid(conn)
        runs.append(pid)
        conn.exec_driver_sql("CREATE TABLE IF NOT EXISTS marks (pid int)")
        conn.exec_driver_sql(f"INSERT INTO marks VALUES ({pid})")
        return pid

    try:
        first = await writer.transaction(work)
        assert await writer.transaction(work) == first  # held: the same backend
        await terminate(pg_engine, first)
        runs.clear()
        replaced = await writer.transaction(work)
        assert replaced != first
        assert runs[-1] == replaced  # the dead attempt wrote nothing; the retry committed
    finally:
        await writer.close()
    async with pg_engine.connect() as conn:
        marks = (await conn.execute(sa.text("SELECT pid FROM marks ORDER BY pid"))).scalars()
        assert sorted(marks) == sorted([first, first, replaced])


async def test_a_failing_transaction_rolls_back_and_keeps_the_writer_usable(
    pg_engine: AsyncEngine,
) -> None:
    writer = PostgresWriter(pg_engine)
    try:
        with pytest.raises(sa.exc.ProgrammingError):
            await writer.transaction(lambda conn: conn.exec_driver_sql("SELECT * FROM nowhere"))
        assert await writer.transaction(backend_pid) > 0
    finally:
        await writer.close()


async def test_an_idle_store_holds_no_connection_and_appends_after_its_backend_died(
    pg_engine: AsyncEngine,
) -> None:
    store = EventStore(pg_engine, in_transaction=lambda _conn, _recorded: None)
    stream_id = str(uuid.uuid4())

    def one(version: int) -> StreamAppend:
        event = NewEvent(event_id=str(uuid.uuid4()), event_type="test.appended", data="{}")
        return StreamAppend(
            stream_type="test", stream_id=stream_id, expected_version=version, events=[event]
        )

    try:
        await store.append([one(0)], recorded_at=AT)
        await store.close()  # waits for the drain, which hands its connection back when idle
        assert pg_engine.pool.checkedout() == 0  # type: ignore[attr-defined]
        async with pg_engine.connect() as conn:
            # Every pooled backend dies (a restart, as the pool sees it).
            await conn.execute(
                sa.text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                    " WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )
            )
        recorded = await store.append([one(1)], recorded_at=AT)
        assert recorded[0].stream_version == 2
    finally:
        await store.close()
