"""`assay log export` / `assay log import`: move a whole installation between databases.

An export is NDJSON. A full export (no filter) first holds one line per row of the tables the
log does not describe, `{"record": "<table>", "row": {...}}` (identities, API keys as hashes,
secrets still encrypted, transcripts, registry blobs as base64), then one line per event in
position order, in the audit shape (shared/spec/audit.md) with its hashes. A filtered export
(`--org`, `--after`) holds events only: it is for auditors and cannot be imported, since its
global chain has holes.

An import reads the file once, in one transaction: it checks every line as it loads it (both
hash chains, known tables, that the target's key opens the secrets) and rolls everything back
at the first thing wrong; rows go in batches (COPY on PostgreSQL), keeping positions and
hashes; then the read models are rebuilt from the loaded log.
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import msgspec
import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection

from domain.audit_chain import ChainWalk, Finding
from infrastructure import rebuild as rebuilding
from infrastructure.audit.wire import WireEvent, from_wire, link_of, to_wire
from infrastructure.db.execution_tables import leases, transcript_messages
from infrastructure.db.idempotency_tables import idempotency_keys
from infrastructure.db.registry_tables import registry_blob_orgs, registry_blobs
from infrastructure.db.store_tables import evaluations, events, items
from infrastructure.eventstore import EventStore, RecordedEvent
from infrastructure.identity.tables import (
    api_keys,
    memberships,
    orgs,
    projects,
    runtimes,
    secrets,
    users,
    workspaces,
)

PAGE = 5000
BATCH = 2000
# Parents before children (foreign keys); workers and uploads in progress stay behind.
CARRIED = (
    orgs,
    workspaces,
    users,
    memberships,
    api_keys,
    projects,
    runtimes,
    secrets,
    transcript_messages,
    # In-flight items keep their leases: in the target they lapse and are reclaimed.
    leases,
    idempotency_keys,
    registry_blobs,
    registry_blob_orgs,
)
_BY_NAME = {str(t.name): t for t in CARRIED}


class TransferError(Exception):
    """An export or import that cannot be done as asked; the message says why."""


class RecordLine(msgspec.Struct, frozen=True):
    record: str
    row: dict[str, Any]


class ImportReport(msgspec.Struct, frozen=True):
    events: int
    records: int
    last_position: int


_encoder = msgspec.json.Encoder()
_record_decoder = msgspec.json.Decoder(RecordLine)
_event_decoder = msgspec.json.Decoder(WireEvent)
_RECORD_PREFIX = b'{"record":'


def _binary_columns(table: sa.Table) -> set[str]:
    return {c.name for c in table.columns if isinstance(c.type, sa.LargeBinary)}


# ---- export ----


async def export_lines(
    store: EventStore, *, org: str | None = None, after: int = 0
) -> AsyncIterator[bytes]:
    """The export, line by line (each ends with a newline)."""
    keep: Callable[[str, str], bool] | None = None
    if org is not None:
        keep = await _org_streams(store, org)
    if org is None and after == 0:
        async with store.engine.connect() as conn:
            for table in CARRIED:
                binary = _binary_columns(table)
                result = await conn.stream(sa.select(table))
                async for row in result.mappings():
                    values = {
                        k: base64.b64encode(v).decode() if k in binary else v
                        for k, v in row.items()
                    }
                    yield _encoder.encode(RecordLine(str(table.name), values)) + b"\n"
    position = after
    while page := await store.read_all(after_position=position, limit=PAGE):
        for record in page:
            if keep is None or keep(record.stream_type, record.stream_id):
                yield _encoder.encode(to_wire(record)) + b"\n"
        position = page[-1].position


async def _org_streams(store: EventStore, org_key: str) -> Callable[[str, str], bool]:
    """The org's events: its evaluations' streams and their items'."""
    async with store.engine.connect() as conn:
        org_id = (await conn.execute(sa.select(orgs.c.id).where(orgs.c.key == org_key))).scalar()
        if org_id is None:
            raise TransferError(f"no organization {org_key!r}")
        evaluation_ids = set(
            (await conn.execute(sa.select(evaluations.c.id).where(evaluations.c.org_id == org_id)))
            .scalars()
            .all()
        )
        item_ids = set(
            (
                await conn.execute(
                    sa.select(items.c.id)
                    .join(evaluations, items.c.evaluation_id == evaluations.c.id)
                    .where(evaluations.c.org_id == org_id)
                )
            )
            .scalars()
            .all()
        )

    def keep(stream_type: str, stream_id: str) -> bool:
        if stream_type == "evaluation":
            return stream_id in evaluation_ids
        return stream_type == "item" and stream_id in item_ids

    return keep


# ---- import ----


def _lines(path: Path) -> Iterator[tuple[int, RecordLine | WireEvent]]:
    with path.open("rb") as f:
        for number, line in enumerate(f, start=1):
            if line.strip():
                # Export writes record lines with `record` first: no need to parse twice.
                decoder = _record_decoder if line.startswith(_RECORD_PREFIX) else _event_decoder
                try:
                    yield number, decoder.decode(line)
                except msgspec.DecodeError as exc:
                    raise TransferError(f"line {number}: not an export line ({exc})") from exc


SecretReadable = Callable[[str], bool]


class _Checker:
    """Checks each line as the load takes it: anything wrong raises TransferError inside the
    load's transaction, so a refused file leaves the target as empty as it was."""

    def __init__(self, secret_readable: SecretReadable | None) -> None:
        self.walk = ChainWalk()
        self.records = 0
        self.events = 0
        self.last_position = 0
        self._secret_readable = secret_readable

    def record(self, number: int, line: RecordLine) -> tuple[sa.Table, dict[str, Any]]:
        if self.events:
            raise TransferError(f"line {number}: a record after the events")
        table = _BY_NAME.get(line.record)
        if table is None:
            raise TransferError(f"line {number}: unknown table {line.record!r}")
        if table is secrets and self._secret_readable is not None:
            if not self._secret_readable(str(line.row.get("ciphertext"))):
                raise TransferError(
                    "the secrets in this export were encrypted with another key: give the "
                    "target the source's key (ASSAY_SECRET_KEY, or the same secret key file) "
                    "and import again"
                )
            self._secret_readable = None  # one secret proves the key
        self.records += 1
        binary = _binary_columns(table)
        return table, {k: base64.b64decode(v) if k in binary else v for k, v in line.row.items()}

    def event(self, line: WireEvent) -> tuple[Any, ...]:
        if not self.records:
            raise TransferError("the file holds no identity records: import needs a full export")
        record = from_wire(line)
        self._judge(self.walk.push(link_of(record)))
        self.events += 1
        self.last_position = record.position
        return msgspec.structs.astuple(record)

    def finish(self) -> None:
        self._judge(self.walk.finish())

    @staticmethod
    def _judge(finding: Finding | None) -> None:
        if finding is not None:
            raise TransferError(
                f"the export's hash chain is broken at position {finding.position}: "
                f"{finding.problem}: {finding.detail} (a filtered export, --org or --after, "
                "cannot be imported)"
            )


async def _require_empty(store: EventStore) -> None:
    async with store.engine.connect() as conn:
        for table in (events, *CARRIED):
            if (await conn.execute(sa.select(sa.literal(1)).select_from(table).limit(1))).first():
                raise TransferError(
                    f"the target database is not empty (table {table.name} has rows): "
                    "import only into a freshly migrated database"
                )


# Events as tuples: a RecordedEvent field for field (its fields are the table's columns).
_EVENT_COLUMNS = list(RecordedEvent.__struct_fields__)
_SQLITE_INSERT_EVENT = "INSERT INTO events ({}) VALUES ({})".format(
    ", ".join(_EVENT_COLUMNS), ", ".join("?" * len(_EVENT_COLUMNS))
)


async def _load_postgresql(conn: AsyncConnection, path: Path, check: _Checker) -> None:
    """Events through COPY (asyncpg's binary copy in the same transaction; the version
    trigger still checks every row): several times an INSERT's rate."""
    raw = await conn.get_raw_connection()
    driver: Any = raw.driver_connection
    batch: list[tuple[Any, ...]] = []
    for number, line in _lines(path):
        if isinstance(line, RecordLine):
            table, row = check.record(number, line)
            await conn.execute(table.insert(), [row])
            continue
        batch.append(check.event(line))
        if len(batch) >= BATCH * 5:
            await driver.copy_records_to_table("events", records=batch, columns=_EVENT_COLUMNS)
            batch.clear()
    check.finish()
    if batch:
        await driver.copy_records_to_table("events", records=batch, columns=_EVENT_COLUMNS)
    if check.last_position:
        await conn.run_sync(_move_identity, check.last_position)


def _move_identity(conn: Connection, last_position: int) -> None:
    # Positions were given explicitly: move the identity past them for later appends.
    conn.execute(
        sa.text("SELECT setval(pg_get_serial_sequence('events', 'position'), :p)"),
        {"p": last_position},
    )


def _load_sqlite(conn: Connection, path: Path, check: _Checker) -> None:
    """Events as tuples straight through the driver's executemany."""
    batch: list[tuple[Any, ...]] = []
    for number, line in _lines(path):
        if isinstance(line, RecordLine):
            table, row = check.record(number, line)
            conn.execute(table.insert(), [row])
            continue
        batch.append(check.event(line))
        if len(batch) >= BATCH:
            conn.exec_driver_sql(_SQLITE_INSERT_EVENT, batch)
            batch.clear()
    check.finish()
    if batch:
        conn.exec_driver_sql(_SQLITE_INSERT_EVENT, batch)


async def import_file(
    store: EventStore, path: Path, *, secret_readable: SecretReadable | None = None
) -> ImportReport:
    """Load a full export into the empty database of `store` in one transaction, checking
    every line on the way, then rebuild the read models from the loaded log."""
    await _require_empty(store)
    check = _Checker(secret_readable)
    async with store.append_transaction() as conn:
        if conn.dialect.name == "postgresql":
            await _load_postgresql(conn, path, check)
        else:
            await conn.run_sync(_load_sqlite, path, check)
    await rebuilding.rebuild(store)
    return ImportReport(
        events=check.events, records=check.records, last_position=check.last_position
    )
