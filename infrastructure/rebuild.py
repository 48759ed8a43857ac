"""Rebuild and verify the inline read models from the event log, while the API keeps serving.

Both fold the whole log through the same `Projector` the append path uses, into scratch
tables. The last stretch (events appended meanwhile) is folded inside a transaction that holds
the append lock, and in that same transaction a rebuild swaps the scratch rows in (readers see
the old rows until it commits) while a verify compares them with the live rows.
"""

from __future__ import annotations

import getpass
import socket
import uuid
from collections.abc import Callable

import msgspec
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from infrastructure.clock import utc_now
from infrastructure.db.engine import write_transaction
from infrastructure.db.store_tables import READ_MODEL_TABLES
from infrastructure.eventstore import EventStore, NewEvent, StreamAppend
from infrastructure.ids import new_time_ordered_id
from infrastructure.readmodels import Projector
from infrastructure.view_cache import REBUILT_EVENT

PAGE = 5000
Progress = Callable[[int, int], None]


class Difference(msgspec.Struct, frozen=True):
    table: str
    id: str
    problem: str  # "missing" (rebuild has it, live lacks it), "extra", "different"


def _scratch_tables() -> tuple[sa.MetaData, list[tuple[sa.Table, sa.Table]]]:
    scratch = sa.MetaData()
    pairs = [
        (
            live,
            sa.Table(f"{live.name}_rebuild", scratch, *(c._copy() for c in live.columns)),
        )
        for live in READ_MODEL_TABLES
    ]
    return scratch, pairs


async def _fold_into_scratch(
    store: EventStore, projector: Projector, progress: Progress | None
) -> int:
    total = await store.last_position()
    position = 0
    while True:
        page = await store.read_all(after_position=position, limit=PAGE)
        if not page:
            return position
        async with write_transaction(store.engine) as conn:
            await conn.run_sync(projector, page)
        position = page[-1].position
        if progress is not None:
            progress(position, max(total, position))


async def _catch_up(
    store: EventStore, conn: AsyncConnection, projector: Projector, position: int
) -> int:
    """Fold what was appended since `position`; returns the last position folded."""
    while True:
        page = await store.read_all(after_position=position, limit=PAGE)
        if not page:
            return position
        await conn.run_sync(projector, page)
        position = page[-1].position


def _rebuilt_event(through_position: int) -> StreamAppend:
    """The rebuild itself, recorded for auditors; servers drop their cached views on it."""
    data = {
        "through_position": through_position,
        "tables": [str(t.name) for t in READ_MODEL_TABLES],
        "host": socket.gethostname(),
        "os_user": getpass.getuser(),
    }
    return StreamAppend(
        stream_type="operations",
        stream_id=str(uuid.uuid4()),
        expected_version=0,
        events=[
            NewEvent(
                event_id=new_time_ordered_id(),
                event_type=REBUILT_EVENT,
                data=msgspec.json.encode(data).decode(),
            )
        ],
    )


async def _run(store: EventStore, *, swap: bool, progress: Progress | None) -> list[Difference]:
    scratch, pairs = _scratch_tables()
    # DDL too takes the write lock up front: a deferred transaction that must upgrade its
    # lock while the API appends fails at once on SQLite instead of waiting.
    async with write_transaction(store.engine) as conn:
        await conn.run_sync(scratch.drop_all)
        await conn.run_sync(scratch.create_all)
    try:
        evaluation_scratch, item_scratch, count_scratch = (s for _, s in pairs)
        projector = Projector(evaluation_scratch, item_scratch, count_scratch)
        position = await _fold_into_scratch(store, projector, progress)
        differences: list[Difference] = []
        recorded = []
        async with store.append_transaction() as conn:
            through = await _catch_up(store, conn, projector, position)
            for live, rebuilt in pairs:
                if swap:
                    await conn.execute(live.delete())
                    await conn.execute(
                        live.insert().from_select(list(live.c.keys()), sa.select(*rebuilt.c))
                    )
                else:
                    differences += await _compare(conn, live, rebuilt)
            if swap:
                recorded = await conn.run_sync(store.insert, [(_rebuilt_event(through), utc_now())])
        store.committed(recorded)
        return differences
    finally:
        async with write_transaction(store.engine) as conn:
            await conn.run_sync(scratch.drop_all)


async def _compare(conn: AsyncConnection, live: sa.Table, rebuilt: sa.Table) -> list[Difference]:
    columns = [c.name for c in live.columns]
    key = [columns.index(c.name) for c in live.primary_key]

    async def rows(table: sa.Table) -> dict[str, tuple[object, ...]]:
        result = await conn.execute(sa.select(*(table.c[name] for name in columns)))
        return {"/".join(str(row[i]) for i in key): tuple(row) for row in result.all()}

    have, want = await rows(live), await rows(rebuilt)
    found = [Difference(live.name, k, "missing") for k in want.keys() - have.keys()]
    found += [Difference(live.name, k, "extra") for k in have.keys() - want.keys()]
    found += [
        Difference(live.name, k, "different")
        for k in have.keys() & want.keys()
        if have[k] != want[k]
    ]
    return sorted(found, key=lambda d: (d.table, d.id))


async def rebuild(store: EventStore, progress: Progress | None = None) -> None:
    """Replace every inline read model with a fold of the whole log."""
    await _run(store, swap=True, progress=progress)


async def verify(store: EventStore, progress: Progress | None = None) -> list[Difference]:
    """Fold the log into scratch tables and list how the live read models differ."""
    return await _run(store, swap=False, progress=progress)
