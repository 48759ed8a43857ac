"""The append-only event store on SQLAlchemy Core, for SQLite and PostgreSQL.

Appends are coalesced: concurrent `append` calls queue their units, and one drain task
commits as many as are waiting in a single transaction (group commit). That turns the
per-append cost of a transaction and its driver round trips into a per-batch cost, which is
what lets the write path keep up with the raw driver (see scripts/bench_api.py). A batch that
fails is retried one unit per transaction, so one unit's conflict never fails its neighbours.

Global order equals commit order: on SQLite every append transaction is BEGIN IMMEDIATE (one
writer at a time); on PostgreSQL it first takes one transaction-scoped advisory lock (the
append function does), so a position is never visible before a smaller one commits.

The transaction body is synchronous code on a SQLAlchemy `Connection`: on a SQLite file it
runs whole on the event loop's own connection while the write lock is free, else on the
store's writer thread (`infrastructure.db.sqlite_writer`), on PostgreSQL through
`AsyncConnection.run_sync` over asyncpg, on one connection the store keeps for its appends
(`infrastructure.db.postgres_writer`: no pool check per append). One body, two ways to reach
the database.

The audit hash chains (domain/audit_chain.py) are computed in that body too, under the same
lock: the global chain continues from the last row's `chain_hash` (one indexed read per batch
on SQLite; on PostgreSQL one call of the database function `assay_append_events` (migration
0009) takes the lock, checks that the head is still the one this store last committed and
inserts, and the head is read only when another writer moved it) and each stream
from its previous event's `hash`, kept in memory after commits (an event at a given stream
version never changes, so a remembered hash stays right even with other writer processes) and
read from the log on a miss.

The rows go to the driver as one prepared statement per batch: on SQLite an executemany of
tuples with positions the lock holder numbers itself, on PostgreSQL one INSERT ... SELECT FROM
unnest(arrays) RETURNING the positions the identity gave (matched back by event id).
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any, Protocol

import msgspec
import sqlalchemy as sa
import structlog
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from domain.audit_chain import ZERO_HASH, Chainer, canonical_body, canonical_text, hash_body
from infrastructure.db.append_only import VERSION_GAP_MESSAGE
from infrastructure.db.engine import create_sqlite_sync_engine, write_transaction
from infrastructure.db.postgres_writer import PostgresWriter
from infrastructure.db.sqlite_writer import SQLiteWriter
from infrastructure.db.store_tables import events
from infrastructure.metrics import observe_batch

log = structlog.get_logger("assay.eventstore")

# One constant key for the advisory lock that orders every append on PostgreSQL.
APPEND_LOCK_KEY = 0x61737361  # "assa"
MAX_BATCH_UNITS = 256
# Stream heads remembered for the hash chain; past this many the memory starts over.
MAX_REMEMBERED_HEADS = 50_000
StreamHeads = dict[tuple[str, str], tuple[int, str]]


class ConcurrencyConflict(Exception):
    """A stream was not at the expected version (someone else appended first)."""


class IdempotencyConflict(Exception):
    """An event id was appended before with a different payload."""


class NewEvent(msgspec.Struct, frozen=True, kw_only=True):
    event_id: str
    event_type: str
    data: str
    metadata: str = "{}"
    schema_version: int = 1


class StreamAppend(msgspec.Struct, frozen=True, kw_only=True):
    stream_type: str
    stream_id: str
    # The stream's version before this append: 0 for a new stream.
    expected_version: int
    events: Sequence[NewEvent]


class RecordedEvent(msgspec.Struct, frozen=True, kw_only=True):
    position: int
    event_id: str
    stream_type: str
    stream_id: str
    stream_version: int
    event_type: str
    schema_version: int
    data: str
    metadata: str
    recorded_at: str
    # The audit hash chains (domain/audit_chain.py); empty only for rows written around the store.
    prev_hash: str = ""
    hash: str = ""
    chain_prev_hash: str = ""
    chain_hash: str = ""


# Runs inside the append transaction with the events just inserted (inline projections, the
# lease book); raising rolls the append back.
InTransaction = Callable[[Connection, list[RecordedEvent]], None]


def in_order(*steps: InTransaction) -> InTransaction:
    """One in-transaction body that runs `steps` in order."""

    def run(conn: Connection, recorded: list[RecordedEvent]) -> None:
        for step in steps:
            step(conn, recorded)

    return run


# Runs after a batch committed, with its events (caches); it must not raise.
AfterCommit = Callable[[list[RecordedEvent]], None]
# A unit's own rows outside the log (an agent's transcript): written in the unit's transaction,
# so they become visible with its events and share its group commit instead of taking the
# database's write lock on their own.
SideWrite = Callable[[Connection], None]


class _Unit:
    __slots__ = ("appends", "future", "recorded_at", "side_writes")

    def __init__(
        self, appends: Sequence[StreamAppend], recorded_at: str, side_writes: Sequence[SideWrite]
    ) -> None:
        self.appends = appends
        self.recorded_at = recorded_at
        self.side_writes = side_writes
        # The caller awaits this future itself (no shield, no second future): if the caller
        # is cancelled the future is too, but the unit still commits with its batch (the
        # drain never looks at a caller), and settling skips a future already cancelled.
        self.future: asyncio.Future[list[RecordedEvent]] = (
            asyncio.get_running_loop().create_future()
        )

    def resolve(self, recorded: list[RecordedEvent]) -> None:
        if not self.future.done():
            self.future.set_result(recorded)

    def fail(self, exc: BaseException) -> None:
        if not self.future.done():
            self.future.set_exception(exc)


_COLUMNS = (
    events.c.position,
    events.c.event_id,
    events.c.stream_type,
    events.c.stream_id,
    events.c.stream_version,
    events.c.event_type,
    events.c.schema_version,
    events.c.data,
    events.c.metadata,
    events.c.recorded_at,
    events.c.prev_hash,
    events.c.hash,
    events.c.chain_prev_hash,
    events.c.chain_hash,
)
_SELECT = sa.select(*_COLUMNS)
_READ_STREAM = _SELECT.where(
    events.c.stream_type == sa.bindparam("stream_type"),
    events.c.stream_id == sa.bindparam("stream_id"),
    events.c.stream_version > sa.bindparam("after_version"),
).order_by(events.c.stream_version)
_READ_STREAMS = _SELECT.where(
    events.c.stream_type == sa.bindparam("stream_type"),
    events.c.stream_id.in_(sa.bindparam("stream_ids", expanding=True)),
).order_by(events.c.position)
_READ_ALL = (
    _SELECT.where(events.c.position > sa.bindparam("after"))
    .order_by(events.c.position)
    .limit(sa.bindparam("limit"))
)
_BY_EVENT_IDS = _SELECT.where(events.c.event_id.in_(sa.bindparam("ids", expanding=True)))
_LAST_POSITION = sa.select(sa.func.coalesce(sa.func.max(events.c.position), 0))
_STREAM_VERSIONS = (
    sa.select(events.c.stream_id, sa.func.max(events.c.stream_version))
    .where(
        events.c.stream_type == sa.bindparam("stream_type"),
        events.c.stream_id.in_(sa.bindparam("stream_ids", expanding=True)),
    )
    .group_by(events.c.stream_id)
)
_CHAIN_HEAD = (
    sa.select(events.c.position, events.c.chain_hash).order_by(events.c.position.desc()).limit(1)
)
_STREAM_HASHES = sa.select(
    events.c.stream_type, events.c.stream_id, events.c.stream_version, events.c.hash
).where(
    sa.tuple_(events.c.stream_type, events.c.stream_id, events.c.stream_version).in_(
        sa.bindparam("keys", expanding=True)
    )
)
_PG_LOCK = sa.text(f"SELECT pg_advisory_xact_lock({APPEND_LOCK_KEY})")


def _row(row: Any) -> RecordedEvent:
    return RecordedEvent(
        position=row[0],
        event_id=row[1],
        stream_type=row[2],
        stream_id=row[3],
        stream_version=row[4],
        event_type=row[5],
        schema_version=row[6],
        data=row[7],
        metadata=row[8],
        recorded_at=row[9],
        prev_hash=row[10],
        hash=row[11],
        chain_prev_hash=row[12],
        chain_hash=row[13],
    )


class EventStore:
    """`in_transaction` is required: a store that appended without keeping the read models
    (and the lease book) in step would answer stale reads forever, silently."""

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        in_transaction: InTransaction,
        after_commit: AfterCommit | None = None,
    ) -> None:
        self.engine = engine
        self._is_postgres = engine.dialect.name == "postgresql"
        self._in_transaction = in_transaction
        self._after_commit = after_commit
        self._pending: list[_Unit] = []
        self._drain_task: asyncio.Task[None] | None = None
        self._heads: StreamHeads = {}
        # (position, chain_hash) of the last event this store committed (PostgreSQL's insert
        # checks it instead of reading the head first).
        self._chain_head: tuple[int, str] | None = None
        sync_engine = create_sqlite_sync_engine(engine)
        self._writer: SQLiteWriter | PostgresWriter | None = None
        if sync_engine is not None:
            self._writer = SQLiteWriter(sync_engine)
        elif self._is_postgres:
            self._writer = PostgresWriter(engine)

    # ---- writing ----

    async def append(
        self,
        appends: Sequence[StreamAppend],
        *,
        recorded_at: str,
        side_writes: Sequence[SideWrite] = (),
    ) -> list[RecordedEvent]:
        """Append atomically to one or more streams; returns the recorded events in order.
        `side_writes` commit in the same transaction, or not at all (an idempotent re-append
        of events already stored does not run them again).

        Raises ConcurrencyConflict when a stream is not at its expected version and
        IdempotencyConflict when an event id was used before for another event. Re-appending
        exactly the same events (same ids and payloads) returns their original records.
        """
        unit = _Unit(appends, recorded_at, side_writes)
        self._pending.append(unit)
        if self._drain_task is None or self._drain_task.done():
            # The drain runs as its own task so a cancelled request cannot interrupt a commit.
            self._drain_task = asyncio.create_task(self._drain())
        return await unit.future

    async def close(self) -> None:
        if self._drain_task is not None:
            await asyncio.gather(self._drain_task, return_exceptions=True)
        if self._writer is not None:
            await self._writer.close()

    async def _drain(self) -> None:
        while True:
            await self._drain_pending()
            # One turn of the loop first: callers just answered often append again at once
            # (a worker's next transition), and their units join this drain.
            await asyncio.sleep(0)
            if self._pending:
                continue
            if isinstance(self._writer, PostgresWriter):
                await self._writer.release()  # idle: its connection goes back to the pool
            if not self._pending:
                return  # appends from here on start a new drain (this task is done)

    async def _drain_pending(self) -> None:
        while self._pending:
            batch = self._pending[:MAX_BATCH_UNITS]
            del self._pending[:MAX_BATCH_UNITS]
            try:
                await self._commit(batch)
            except Exception as exc:
                # Whatever failed (a conflict, or the in-transaction projection of one unit),
                # retrying alone settles each unit on its own merits.
                if len(batch) == 1:
                    await self._settle_failure(batch[0], exc)
                else:
                    for unit in batch:
                        await self._commit_alone(unit)
            except BaseException as exc:  # cancelled: no caller may wait forever
                for unit in batch:
                    unit.fail(exc)
                raise

    async def _commit_alone(self, unit: _Unit) -> None:
        try:
            await self._commit([unit])
        except Exception as exc:
            await self._settle_failure(unit, exc)

    async def _commit(self, batch: list[_Unit]) -> None:
        if self._writer is not None:
            # On PostgreSQL the batch's insert takes the append lock itself (see `insert`).
            recorded = await self._writer.transaction(lambda conn: self._write_batch(conn, batch))
        else:
            async with self.append_transaction() as conn:
                recorded = await conn.run_sync(self._write_batch, batch)
        self._remember_heads(recorded)
        if recorded:
            self._chain_head = (recorded[-1].position, recorded[-1].chain_hash)
        self.committed(recorded)
        observe_batch(len(batch), len(recorded))
        cursor = 0
        for unit in batch:
            count = sum(len(a.events) for a in unit.appends)
            unit.resolve(recorded[cursor : cursor + count])
            cursor += count

    def _write_batch(self, conn: Connection, batch: list[_Unit]) -> list[RecordedEvent]:
        """The body of an append transaction: events, inline projections, side writes."""
        recorded = self.insert(
            conn,
            [(append, unit.recorded_at) for unit in batch for append in unit.appends],
            heads=self._heads,
            chain_head=self._chain_head,
        )
        if recorded:
            self._in_transaction(conn, recorded)
        for unit in batch:
            for write in unit.side_writes:
                write(conn)
        return recorded

    @staticmethod
    def insert(
        conn: Connection,
        appends: Sequence[tuple[StreamAppend, str]],
        *,
        heads: StreamHeads | None = None,
        chain_head: tuple[int, str] | None = None,
    ) -> list[RecordedEvent]:
        """Insert events inside a transaction of `append_transaction` (no projection), with
        their hash chains. `heads`: stream heads known from earlier commits (read only).
        `chain_head`: (position, chain_hash) of the log's last event when this store last
        committed; on PostgreSQL the insert then checks it in its own statement instead of
        reading it first (a round trip), and reads it only when another writer moved it."""
        if not any(append.events for append, _ in appends):
            return []
        prev_hashes = _stream_prev_hashes(conn, [a for a, _ in appends], heads or {})
        driver = _sqlite_driver(conn)
        if driver is not None:
            head = _driver_call(driver.execute, _SQLITE_CHAIN_HEAD).fetchone()
            last_position, head_hash = (head[0], head[1]) if head is not None else (0, ZERO_HASH)
            return _insert_sqlite(
                driver, _chained_rows(appends, prev_hashes, head_hash), last_position
            )
        is_postgres = conn.dialect.name == "postgresql"
        if is_postgres and chain_head is not None:
            rows = _chained_rows(appends, prev_hashes, chain_head[1])
            result = conn.exec_driver_sql(_PG_APPEND_AT_HEAD, (*_pg_arrays(rows), chain_head[0]))
            given = {event_id: position for event_id, position in result.all()}
            if given:
                return _pg_recorded(rows, given, chain_head[0])
        if is_postgres:  # the head is unknown or moved: read it under the lock (held again)
            conn.execute(_PG_LOCK)
        head = conn.execute(_CHAIN_HEAD).first()
        last_position, head_hash = (head[0], head[1]) if head is not None else (0, ZERO_HASH)
        rows = _chained_rows(appends, prev_hashes, head_hash)
        if not is_postgres:  # aiosqlite (an in-memory database): no driver calls
            recorded = _number(rows, last_position)
            conn.exec_driver_sql(_SQLITE_INSERT, [msgspec.structs.astuple(r) for r in recorded])
            return recorded
        result = conn.exec_driver_sql(_PG_INSERT, _pg_arrays(rows))
        given = {event_id: position for event_id, position in result.all()}
        return _pg_recorded(rows, given, last_position)

    def _remember_heads(self, recorded: list[RecordedEvent]) -> None:
        if len(self._heads) > MAX_REMEMBERED_HEADS:
            self._heads.clear()
        for r in recorded:
            self._heads[(r.stream_type, r.stream_id)] = (r.stream_version, r.hash)

    def committed(self, recorded: list[RecordedEvent]) -> None:
        """Tell the after-commit hook about events whose transaction committed."""
        if self._after_commit is None or not recorded:
            return
        try:
            self._after_commit(recorded)
        except Exception as exc:  # committed is committed: never retry a unit for this
            log.error("after_commit_failed", error=repr(exc))

    @asynccontextmanager
    async def append_transaction(self) -> AsyncIterator[AsyncConnection]:
        """A write transaction that no append can interleave with (it holds the append lock).
        Synchronous bodies (`insert`, projections) run in it through `conn.run_sync`."""
        async with write_transaction(self.engine) as conn:
            if self._is_postgres:
                await conn.execute(_PG_LOCK)
            yield conn

    async def _settle_failure(self, unit: _Unit, exc: Exception) -> None:
        try:
            await self._settle(unit, exc)
        except Exception as lookup_failure:
            unit.fail(lookup_failure)

    async def _settle(self, unit: _Unit, exc: Exception) -> None:
        """Tell an idempotent re-append from a real conflict after a failed single commit."""
        is_conflict = isinstance(exc, IntegrityError) or (
            isinstance(exc, DBAPIError) and VERSION_GAP_MESSAGE in str(exc)
        )
        if not is_conflict:
            unit.fail(exc)
            return
        wanted = [(a, e) for a in unit.appends for e in a.events]
        existing = {r.event_id: r for r in await self.events_by_id([e.event_id for _, e in wanted])}
        if not existing:
            names = ", ".join(
                f"{a.stream_type}/{a.stream_id}@{a.expected_version}" for a in unit.appends
            )
            unit.fail(ConcurrencyConflict(f"stream moved past expected version: {names}"))
            return
        same = len(existing) == len(wanted) and all(
            (r := existing.get(e.event_id)) is not None
            and (r.stream_type, r.stream_id, r.event_type, r.data)
            == (a.stream_type, a.stream_id, e.event_type, e.data)
            for a, e in wanted
        )
        if same:
            unit.resolve([existing[e.event_id] for _, e in wanted])
        else:
            unit.fail(IdempotencyConflict("event id already used for a different event"))

    # ---- reading ----

    async def read_stream(
        self, stream_type: str, stream_id: str, *, after_version: int = 0
    ) -> list[RecordedEvent]:
        async with self.engine.connect() as conn:
            result = await conn.execute(
                _READ_STREAM,
                {
                    "stream_type": stream_type,
                    "stream_id": stream_id,
                    "after_version": after_version,
                },
            )
            return [_row(r) for r in result.all()]

    async def read_streams(
        self, stream_type: str, stream_ids: Sequence[str]
    ) -> dict[str, list[RecordedEvent]]:
        """Several streams of one type at once, each in version order."""
        found: dict[str, list[RecordedEvent]] = {sid: [] for sid in stream_ids}
        async with self.engine.connect() as conn:
            for start in range(0, len(stream_ids), 500):
                chunk = list(stream_ids[start : start + 500])
                result = await conn.execute(
                    _READ_STREAMS, {"stream_type": stream_type, "stream_ids": chunk}
                )
                for r in result.all():
                    found[r[3]].append(_row(r))
        return found

    async def read_all(self, *, after_position: int = 0, limit: int = 1000) -> list[RecordedEvent]:
        """Events in global (commit) order, strictly after `after_position`."""
        async with self.engine.connect() as conn:
            result = await conn.execute(_READ_ALL, {"after": after_position, "limit": limit})
            return [_row(r) for r in result.all()]

    async def events_by_id(self, event_ids: Sequence[str]) -> list[RecordedEvent]:
        if not event_ids:
            return []
        async with self.engine.connect() as conn:
            result = await conn.execute(_BY_EVENT_IDS, {"ids": list(event_ids)})
            return [_row(r) for r in result.all()]

    async def stream_versions(self, stream_type: str, stream_ids: Sequence[str]) -> dict[str, int]:
        """How many events each stream holds, in one query (a stream with none: absent)."""
        found: dict[str, int] = {}
        async with self.engine.connect() as conn:
            for start in range(0, len(stream_ids), 500):
                chunk = list(stream_ids[start : start + 500])
                result = await conn.execute(
                    _STREAM_VERSIONS, {"stream_type": stream_type, "stream_ids": chunk}
                )
                found.update((stream_id, int(version)) for stream_id, version in result)
        return found

    async def last_position(self) -> int:
        async with self.engine.connect() as conn:
            return int((await conn.execute(_LAST_POSITION)).scalar_one())


# A RecordedEvent field for field: its fields are the table's columns, in order.
_ROW_COLUMNS = list(RecordedEvent.__struct_fields__)
_SQLITE_INSERT = "INSERT INTO events ({}) VALUES ({})".format(
    ", ".join(_ROW_COLUMNS), ", ".join("?" * len(_ROW_COLUMNS))
)

_SQLITE_CHAIN_HEAD = "SELECT position, chain_hash FROM events ORDER BY position DESC LIMIT 1"

_PG_COLUMNS = _ROW_COLUMNS[1:]
_PG_TYPES = {"stream_version": "int4", "schema_version": "int4"}
# The rows as one typed array per column ($1 .. $13): one statement whatever the batch size,
# which asyncpg prepares once per connection.
_PG_ARRAYS = ", ".join(
    f"${i}::{_PG_TYPES.get(name, 'text')}[]" for i, name in enumerate(_PG_COLUMNS, 1)
)
# Rows are matched to their positions by event id (unique), never by order.
_PG_INSERT = (
    f"INSERT INTO events ({', '.join(_PG_COLUMNS)}) SELECT * FROM unnest({_PG_ARRAYS})"
    " RETURNING event_id, position"
)
# The append lock, the head check and the insert in one call (migration 0009): the rows go
# in only while the log's last position is still $14, the head their chain continues as this
# store last committed it; no rows back: another writer moved it (the lock is held by then).
_PG_APPEND_AT_HEAD = (
    f"SELECT * FROM assay_append_events({_PG_ARRAYS}, ${len(_PG_COLUMNS) + 1}::int8)"
)


def _chained_rows(
    appends: Sequence[tuple[StreamAppend, str]],
    prev_hashes: dict[tuple[str, str], str],
    chain_head: str,
) -> list[dict[str, Any]]:
    """The rows of `appends` with their hashes, the global chain continuing `chain_head`."""
    prev_hashes = dict(prev_hashes)
    chainer = Chainer(chain_head=chain_head)
    metadata_canonical: dict[str, bytes] = {}
    rows: list[dict[str, Any]] = []
    for append, recorded_at in appends:
        prev = prev_hashes.get((append.stream_type, append.stream_id), ZERO_HASH)
        for offset, event in enumerate(append.events, start=1):
            version = append.expected_version + offset
            metadata = metadata_canonical.get(event.metadata)
            if metadata is None:
                metadata = metadata_canonical[event.metadata] = canonical_text(event.metadata)
            own, chain_prev, chain = chainer.follow(
                hash_body(
                    prev,
                    canonical_body(
                        event_id=event.event_id,
                        stream_type=append.stream_type,
                        stream_id=append.stream_id,
                        stream_version=version,
                        event_type=event.event_type,
                        schema_version=event.schema_version,
                        data_canonical=canonical_text(event.data),
                        metadata_canonical=metadata,
                        recorded_at=recorded_at,
                    ),
                )
            )
            rows.append(
                {
                    "event_id": event.event_id,
                    "stream_type": append.stream_type,
                    "stream_id": append.stream_id,
                    "stream_version": version,
                    "event_type": event.event_type,
                    "schema_version": event.schema_version,
                    "data": event.data,
                    "metadata": event.metadata,
                    "recorded_at": recorded_at,
                    "prev_hash": prev,
                    "hash": own,
                    "chain_prev_hash": chain_prev,
                    "chain_hash": chain,
                }
            )
            prev = own
        prev_hashes[(append.stream_type, append.stream_id)] = prev
    return rows


def _pg_arrays(rows: list[dict[str, Any]]) -> tuple[list[Any], ...]:
    return tuple([row[name] for row in rows] for name in _PG_COLUMNS)


def _pg_recorded(
    rows: list[dict[str, Any]], given: dict[str, int], last_position: int
) -> list[RecordedEvent]:
    recorded: list[RecordedEvent] = []
    for row in rows:
        position = given[row["event_id"]]
        # The chain was computed in row order: positions must follow it (they do: the
        # lock is held and unnest yields rows in array order); never store a lie.
        if position <= last_position:
            raise RuntimeError("event positions were not assigned in insertion order")
        last_position = position
        recorded.append(RecordedEvent(position=position, **row))
    return recorded


def _sqlite_driver(conn: Connection) -> sqlite3.Connection | None:
    """The stdlib sqlite3 connection under `conn` (the store's writer), else None."""
    if conn.dialect.name != "sqlite":
        return None
    driver = conn.connection.driver_connection
    return driver if isinstance(driver, sqlite3.Connection) else None


def _driver_call(method: Callable[..., Any], statement: str, *args: Any) -> Any:
    """A call on the sqlite3 driver, its errors raised as SQLAlchemy would raise them (the
    conflict handling and outage detection look for SQLAlchemy's classes)."""
    try:
        return method(statement, *args)
    except sqlite3.Error as exc:
        raise DBAPIError.instance(statement, None, exc, sqlite3.Error) from exc


def _number(rows: list[dict[str, Any]], last_position: int) -> list[RecordedEvent]:
    return [
        RecordedEvent(position=last_position + offset, **row)
        for offset, row in enumerate(rows, start=1)
    ]


def _insert_sqlite(
    driver: sqlite3.Connection, rows: list[dict[str, Any]], last_position: int
) -> list[RecordedEvent]:
    """SQLite: the appender holds the database's only write lock (BEGIN IMMEDIATE), so it
    numbers the rows itself, after the last one, and hands them to the driver's executemany
    as tuples: no RETURNING, no statement to compile, no SQLAlchemy execution context
    (AUTOINCREMENT's counter follows)."""
    recorded = _number(rows, last_position)
    _driver_call(driver.executemany, _SQLITE_INSERT, [msgspec.structs.astuple(r) for r in recorded])
    return recorded


def _stream_prev_hashes(
    conn: Connection, appends: Sequence[StreamAppend], heads: StreamHeads
) -> dict[tuple[str, str], str]:
    """The hash each append's stream ends with at its expected version (first appends of a
    stream, and streams this batch itself extends, need none)."""
    found: dict[tuple[str, str], str] = {}
    wanted: list[tuple[str, str, int]] = []
    extended: set[tuple[str, str]] = set()
    for append in appends:
        key = (append.stream_type, append.stream_id)
        if append.expected_version > 0 and key not in extended:
            known = heads.get(key)
            if known is not None and known[0] == append.expected_version:
                found[key] = known[1]
            else:
                wanted.append((*key, append.expected_version))
        extended.add(key)
    if wanted:
        for stream_type, stream_id, _version, hash_ in conn.execute(
            _STREAM_HASHES, {"keys": wanted}
        ):
            found[(stream_type, stream_id)] = hash_
    return found


class EventLog(Protocol):
    """What commands need of a log: streams to load, and an atomic append. `EventStore` is
    the database one; tests of a worker's runner use an in-memory one."""

    async def append(
        self,
        appends: Sequence[StreamAppend],
        *,
        recorded_at: str,
        side_writes: Sequence[SideWrite] = (),
    ) -> list[RecordedEvent]: ...

    async def read_stream(
        self, stream_type: str, stream_id: str, *, after_version: int = 0
    ) -> list[RecordedEvent]: ...

    async def read_streams(
        self, stream_type: str, stream_ids: Sequence[str]
    ) -> dict[str, list[RecordedEvent]]: ...

    async def stream_versions(
        self, stream_type: str, stream_ids: Sequence[str]
    ) -> dict[str, int]: ...
