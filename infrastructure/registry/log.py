"""The registry's events in the one log, and their fold (the registry's read model).

Task families are streams of type `task`. The read model is `domain.registry.evolve` folded
over those streams in commit order; a process keeps its fold in memory and, before each
read, folds the events committed since its last position (by anyone, any process), so every
read sees every committed push, deletion and visibility change. Registry history is small
(a handful of events per task version), so this costs one indexed range read per request.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable

import msgspec
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from domain import registry as reg
from infrastructure import codec
from infrastructure.clock import utc_now
from infrastructure.db.store_tables import events
from infrastructure.eventstore import EventStore, NewEvent, RecordedEvent, StreamAppend

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(reg.AnyTaskEvent)


class RegistryLog:
    def __init__(
        self, engine: AsyncEngine, store: EventStore, clock: Callable[[], str] = utc_now
    ) -> None:
        self.engine = engine
        self.store = store
        self.clock = clock
        self.families: dict[str, reg.TaskFamily] = {}
        self._position = 0
        self._lock = asyncio.Lock()

    async def catch_up(self) -> dict[str, reg.TaskFamily]:
        """The fold, advanced to the last committed registry event."""
        async with self._lock:
            query = (
                sa.select(
                    events.c.position,
                    events.c.stream_id,
                    events.c.data,
                    events.c.metadata,
                    events.c.recorded_at,
                )
                .where(events.c.stream_type == reg.TASK_STREAM, events.c.position > self._position)
                .order_by(events.c.position)
            )
            async with self.engine.connect() as conn:
                rows = (await conn.execute(query)).all()
            for position, stream_id, data, metadata, recorded_at in rows:
                self._fold(stream_id, data, metadata, recorded_at)
                self._position = position
            return self.families

    def _fold(self, stream_id: str, data: str, metadata: str, recorded_at: str) -> None:
        event = _decoder.decode(data)
        actor = msgspec.json.decode(metadata, type=codec.EventMetadata).actor
        family = reg.evolve(
            self.families.get(stream_id), event, recorded_at, actor.email if actor else None
        )
        if family is None:
            self.families.pop(stream_id, None)
        else:
            self.families[stream_id] = family

    async def family(self, org_id: str, name: str) -> reg.TaskFamily | None:
        return (await self.catch_up()).get(reg.task_stream_id(org_id, name))

    async def append(
        self,
        family: reg.TaskFamily | None,
        org_id: str,
        name: str,
        new_events: list[reg.AnyTaskEvent],
        metadata: codec.EventMetadata,
    ) -> list[RecordedEvent]:
        """Append at the version the caller decided on (ConcurrencyConflict when it moved)."""
        if not new_events:
            return []
        encoded_metadata = _encoder.encode(metadata).decode()
        recorded = await self.store.append(
            [
                StreamAppend(
                    stream_type=reg.TASK_STREAM,
                    stream_id=reg.task_stream_id(org_id, name),
                    expected_version=family.stream_version if family else 0,
                    events=[
                        NewEvent(
                            event_id=str(uuid.uuid4()),
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
