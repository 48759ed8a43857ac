"""The registry's events in the one log, and their fold (the registry's read model).

Task families (`task` streams) and task sets (`task_set` streams). The read model is
`domain.registry.evolve` and `domain.task_sets.evolve` folded over those streams in commit
order; a process keeps its fold in memory and, before each read, folds the events committed
since its last position (by anyone, any process), so every read sees every committed push,
deletion, visibility change and set edit. Registry history is small (a handful of events
per task version or set edit), so this costs one indexed range read per request.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

import msgspec
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from domain import registry as reg
from domain import task_sets as ts
from infrastructure import codec
from infrastructure.clock import utc_now
from infrastructure.db.store_tables import events
from infrastructure.eventstore import EventStore, NewEvent, RecordedEvent, StreamAppend
from infrastructure.ids import new_time_ordered_id

_encoder = msgspec.json.Encoder()
_task_decoder = msgspec.json.Decoder(reg.AnyTaskEvent)
_set_decoder = msgspec.json.Decoder(ts.AnyTaskSetEvent)
_metadata_decoder = msgspec.json.Decoder(codec.EventMetadata)
STREAM_TYPES = (reg.TASK_STREAM, ts.TASK_SET_STREAM)


class RegistryLog:
    def __init__(
        self, engine: AsyncEngine, store: EventStore, clock: Callable[[], str] = utc_now
    ) -> None:
        self.engine = engine
        self.store = store
        self.clock = clock
        self.families: dict[str, reg.TaskFamily] = {}
        self.task_sets: dict[str, ts.TaskSet] = {}
        self._position = 0
        self._lock = asyncio.Lock()

    async def catch_up(self) -> dict[str, reg.TaskFamily]:
        """The task families, with the whole fold advanced to the last committed event."""
        async with self._lock:
            query = (
                sa.select(
                    events.c.position,
                    events.c.stream_type,
                    events.c.stream_id,
                    events.c.data,
                    events.c.metadata,
                    events.c.recorded_at,
                )
                .where(events.c.stream_type.in_(STREAM_TYPES), events.c.position > self._position)
                .order_by(events.c.position)
            )
            async with self.engine.connect() as conn:
                rows = (await conn.execute(query)).all()
            for position, stream_type, stream_id, data, metadata, recorded_at in rows:
                actor = _metadata_decoder.decode(metadata).actor
                if stream_type == reg.TASK_STREAM:
                    family = reg.evolve(
                        self.families.get(stream_id),
                        _task_decoder.decode(data),
                        recorded_at,
                        actor.email if actor else None,
                    )
                    if family is not None:
                        self.families[stream_id] = family
                else:
                    task_set = ts.evolve(
                        self.task_sets.get(stream_id),
                        _set_decoder.decode(data),
                        recorded_at,
                        actor,
                    )
                    if task_set is not None:
                        self.task_sets[stream_id] = task_set
                self._position = position
            return self.families

    async def family(self, org_id: str, name: str) -> reg.TaskFamily | None:
        return (await self.catch_up()).get(reg.task_stream_id(org_id, name))

    async def task_set(self, org_id: str, name: str) -> ts.TaskSet | None:
        """The set's stream state, deleted ones included (their stream goes on)."""
        await self.catch_up()
        return self.task_sets.get(ts.task_set_stream_id(org_id, name))

    async def all_task_sets(self) -> list[ts.TaskSet]:
        await self.catch_up()
        return [s for s in self.task_sets.values() if not s.deleted]

    async def append(
        self,
        stream_type: str,
        stream_id: str,
        expected_version: int,
        new_events: Sequence[reg.AnyTaskEvent | ts.AnyTaskSetEvent],
        metadata: codec.EventMetadata,
    ) -> list[RecordedEvent]:
        """Append at the version the caller decided on (ConcurrencyConflict when it moved)."""
        if not new_events:
            return []
        encoded_metadata = _encoder.encode(metadata).decode()
        recorded = await self.store.append(
            [
                StreamAppend(
                    stream_type=stream_type,
                    stream_id=stream_id,
                    expected_version=expected_version,
                    events=[
                        NewEvent(
                            event_id=new_time_ordered_id(),
                            event_type=str(type(e).__struct_config__.tag),
                            data=_encoder.encode(e).decode(),
                            metadata=encoded_metadata,
                        )
                        for e in new_events
                    ],
                )
            ],
            recorded_at=self.clock(),
        )
        await self.catch_up()
        return recorded

    async def append_task(
        self,
        family: reg.TaskFamily | None,
        org_id: str,
        name: str,
        new_events: Sequence[reg.AnyTaskEvent],
        metadata: codec.EventMetadata,
    ) -> list[RecordedEvent]:
        return await self.append(
            reg.TASK_STREAM,
            reg.task_stream_id(org_id, name),
            family.stream_version if family else 0,
            new_events,
            metadata,
        )

    async def append_task_set(
        self,
        current: ts.TaskSet | None,
        org_id: str,
        name: str,
        new_events: Sequence[ts.AnyTaskSetEvent],
        metadata: codec.EventMetadata,
    ) -> list[RecordedEvent]:
        return await self.append(
            ts.TASK_SET_STREAM,
            ts.task_set_stream_id(org_id, name),
            current.stream_version if current else 0,
            new_events,
            metadata,
        )
