"""`assay log export` / `assay log import`: move a whole installation between databases.

An export is NDJSON. A full export (no filter) first holds one line per row of the tables the
log does not describe, `{"record": "<table>", "row": {...}}` (identities, API keys as hashes,
secrets still encrypted, transcripts, registry blobs as base64), then one line per event in
position order, in the audit shape (shared/spec/audit.md) with its hashes. A filtered export
(`--org`, `--after`) holds events only: it is for auditors and cannot be imported, since its
global chain has holes.

An import checks the whole file first (both hash chains, known tables) and writes nothing when
anything is wrong; then it loads every line in one transaction with batch inserts, keeping
positions and hashes, and rebuilds the read models from the loaded log.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import msgspec
import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection

from domain.audit_chain import Finding, Link, verify_links
from infrastructure import rebuild as rebuilding
from infrastructure.audit.wire import WireEvent, from_wire, link_of, to_wire
from infrastructure.db.execution_tables import transcript_messages
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


def check_file(path: Path) -> tuple[int, int, str | None]:
    """Check the whole file before anything is written: (events, records, one secret's
    ciphertext to test the target's key with). Raises TransferError naming what is wrong."""
    counts = {"events": 0, "records": 0}
    ciphertext: list[str] = []

    def links() -> Iterator[Link]:
        for number, line in _lines(path):
            if isinstance(line, RecordLine):
                if counts["events"]:
                    raise TransferError(f"line {number}: a record after the events")
                if line.record not in _BY_NAME:
                    raise TransferError(f"line {number}: unknown table {line.record!r}")
                if line.record == "secrets" and not ciphertext:
                    ciphertext.append(str(line.row.get("ciphertext")))
                counts["records"] += 1
                continue
            counts["events"] += 1
            yield link_of(from_wire(line))

    finding: Finding | None = verify_links(links())
    if finding is not None:
        raise TransferError(
            f"the export's hash chain is broken at position {finding.position}: "
            f"{finding.problem}: {finding.detail} (a filtered export, --org or --after, "
            "cannot be imported)"
        )
    if counts["records"] == 0:
        raise TransferError("the file holds no identity records: import needs a full export")
    return counts["events"], counts["records"], ciphertext[0] if ciphertext else None


async def _require_empty(store: EventStore) -> None:
    async with store.engine.connect() as conn:
        for table in (events, *CARRIED):
            if (await conn.execute(sa.select(sa.literal(1)).select_from(table).limit(1))).first():
                raise TransferError(
                    f"the target database is not empty (table {table.name} has rows): "
                    "import only into a freshly migrated database"
                )


# COPY takes tuples: a RecordedEvent field for field (its fields are the table's columns).
_EVENT_COLUMNS = list(RecordedEvent.__struct_fields__)


async def _load_postgresql(conn: AsyncConnection, path: Path) -> int:
    """The same load with the events through COPY (asyncpg's binary copy in the same
    transaction; the version trigger still checks every row): several times an INSERT's rate."""
    raw = await conn.get_raw_connection()
    driver: Any = raw.driver_connection
    batch: list[tuple[Any, ...]] = []
    last_position = 0
    for _number, line in _lines(path):
        if isinstance(line, RecordLine):
            table = _BY_NAME[line.record]
            binary = _binary_columns(table)
            row = {k: base64.b64decode(v) if k in binary else v for k, v in line.row.items()}
            await conn.execute(table.insert(), [row])
            continue
        batch.append(msgspec.structs.astuple(from_wire(line)))
        last_position = line.position
        if len(batch) >= BATCH * 5:
            await driver.copy_records_to_table("events", records=batch, columns=_EVENT_COLUMNS)
            batch.clear()
    if batch:
        await driver.copy_records_to_table("events", records=batch, columns=_EVENT_COLUMNS)
    if last_position:
        await conn.run_sync(_move_identity, last_position)
    return last_position


def _move_identity(conn: Connection, last_position: int) -> None:
    # Positions were given explicitly: move the identity past them for later appends.
    conn.execute(
        sa.text("SELECT setval(pg_get_serial_sequence('events', 'position'), :p)"),
        {"p": last_position},
    )


_SQLITE_INSERT_EVENT = "INSERT INTO events ({}) VALUES ({})".format(
    ", ".join(_EVENT_COLUMNS), ", ".join("?" * len(_EVENT_COLUMNS))
)


def _load(conn: Connection, path: Path) -> int:
    """The load on SQLite: events as tuples straight through the driver's executemany."""
    batch: list[tuple[Any, ...]] = []
    last_position = 0
    for _number, line in _lines(path):
        if isinstance(line, RecordLine):
            table = _BY_NAME[line.record]
            binary = _binary_columns(table)
            row = {k: base64.b64decode(v) if k in binary else v for k, v in line.row.items()}
            conn.execute(table.insert(), [row])
            continue
        batch.append(msgspec.structs.astuple(from_wire(line)))
        last_position = line.position
        if len(batch) >= BATCH:
            conn.exec_driver_sql(_SQLITE_INSERT_EVENT, batch)
            batch.clear()
    if batch:
        conn.exec_driver_sql(_SQLITE_INSERT_EVENT, batch)
    return last_position


async def import_file(
    store: EventStore, path: Path, *, secret_readable: Callable[[str], bool] | None = None
) -> ImportReport:
    await _require_empty(store)
    count, records, ciphertext = await asyncio.to_thread(check_file, path)
    if ciphertext is not None and secret_readable is not None and not secret_readable(ciphertext):
        raise TransferError(
            "the secrets in this export were encrypted with another key: give the target the "
            "source's key (ASSAY_SECRET_KEY, or the same secret key file) and import again"
        )
    async with store.append_transaction() as conn:
        if conn.dialect.name == "postgresql":
            last_position = await _load_postgresql(conn, path)
        else:
            last_position = await conn.run_sync(_load, path)
    await rebuilding.rebuild(store)
    return ImportReport(events=count, records=records, last_position=last_position)
