"""`assay audit verify` and `assay audit checkpoint` over a database.

The walk is the pure `domain.audit_chain.verify_links`; it runs in a thread and pulls pages of
the log from the event loop, so a log of any length is verified in constant memory.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import msgspec
import sqlalchemy as sa

from domain.audit_chain import Checkpoint, Finding, Link, verify_links
from infrastructure.audit.wire import link_of
from infrastructure.clock import utc_now
from infrastructure.db.store_tables import events
from infrastructure.eventstore import EventStore

PAGE = 5000
_LOCATE = sa.select(events.c.position).where(events.c.chain_hash == sa.bindparam("h")).limit(1)


class Head(msgspec.Struct, frozen=True):
    """What `assay audit checkpoint` prints: keep it somewhere the database's owner cannot
    write, and pass it to `verify --checkpoint` later. `at`: when it was taken."""

    position: int
    chain_hash: str
    at: str


class Outcome(msgspec.Struct, frozen=True):
    events: int
    head: Head | None
    finding: Finding | None


async def head(store: EventStore) -> Head:
    last = await store.read_all(after_position=max(await store.last_position() - 1, 0), limit=1)
    if not last:
        return Head(position=0, chain_hash="0" * 64, at=utc_now())
    return Head(position=last[-1].position, chain_hash=last[-1].chain_hash, at=utc_now())


async def verify(store: EventStore, checkpoint: Checkpoint | None = None) -> Outcome:
    loop = asyncio.get_running_loop()
    counted = {"events": 0}

    def pages() -> Iterator[Link]:
        position = 0
        while True:
            page = asyncio.run_coroutine_threadsafe(
                store.read_all(after_position=position, limit=PAGE), loop
            ).result()
            if not page:
                return
            for record in page:
                counted["events"] += 1
                yield link_of(record)
            position = page[-1].position

    def locate(chain_hash: str) -> int | None:
        async def find() -> int | None:
            async with store.engine.connect() as conn:
                found = (await conn.execute(_LOCATE, {"h": chain_hash})).scalar()
                return int(found) if found is not None else None

        return asyncio.run_coroutine_threadsafe(find(), loop).result()

    finding = await asyncio.to_thread(
        lambda: verify_links(pages(), locate=locate, checkpoint=checkpoint)
    )
    return Outcome(
        events=counted["events"],
        head=None if finding is not None else await head(store),
        finding=finding,
    )
