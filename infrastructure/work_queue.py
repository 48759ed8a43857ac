"""What workers read and write besides events: claimable items, the worker registry, transcripts."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from typing import Any, Protocol

import msgspec
import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from domain.projections import EvaluationView, ItemView
from infrastructure.agents.protocol import TranscriptMessage
from infrastructure.clock import Clock, iso, system_clock
from infrastructure.db.engine import write_transaction
from infrastructure.db.execution_tables import transcript_messages, workers
from infrastructure.db.store_tables import evaluations, items
from infrastructure.eventstore import SideWrite
from infrastructure.readmodels import decode_evaluation, decode_item

# A worker heartbeats every few seconds; one silent for this long is taken for dead.
WORKER_TIMEOUT_SECONDS = 15.0

_ACTIVE_EVALUATIONS = sa.select(evaluations.c.doc).where(
    evaluations.c.status.in_(("queued", "running"))
)
_QUEUED_ITEMS = (
    sa.select(items.c.doc)
    .where(items.c.evaluation_id == sa.bindparam("evaluation_id"), items.c.status == "queued")
    .order_by(items.c.position)
    .limit(sa.bindparam("limit"))
)
_INSERT_TRANSCRIPT = transcript_messages.insert()


class WorkerInfo(msgspec.Struct, frozen=True):
    id: str
    hostname: str
    pid: int
    slots: int
    started_at: str
    heartbeat_at: str


def _json(value: object) -> str:
    return msgspec.json.encode(value).decode()


def _from_json(text: str) -> Any:
    return msgspec.json.decode(text)


def _transcript_rows(
    session_id: str, item_id: str, messages: Sequence[TranscriptMessage]
) -> list[dict[str, Any]]:
    return [
        {
            "session_id": session_id,
            "item_id": item_id,
            "seq": m.seq,
            "role": m.role,
            "content": m.content,
            "tool_calls": None if m.tool_calls is None else _json(m.tool_calls),
            "tool_call_id": m.tool_call_id,
            "metadata": _json(m.metadata),
            "created_at": m.created_at,
        }
        for m in messages
    ]


class TranscriptStore(Protocol):
    """Where a worker keeps what agents said and did (WorkQueue on a database)."""

    def transcript_write(
        self,
        session_id: str,
        item_id: str,
        messages: Sequence[TranscriptMessage],
        *,
        after_seq: int = 0,
    ) -> SideWrite | None: ...

    async def store_transcript(
        self, session_id: str, item_id: str, messages: Sequence[TranscriptMessage]
    ) -> None: ...


class WorkQueue:
    def __init__(self, engine: AsyncEngine, clock: Clock = system_clock) -> None:
        self.engine = engine
        self.clock = clock

    # ---- claimable work ----

    async def active_evaluations(self) -> list[EvaluationView]:
        async with self.engine.connect() as conn:
            docs = (await conn.execute(_ACTIVE_EVALUATIONS)).scalars().all()
        return [decode_evaluation(d) for d in docs]

    async def queued_items(self, evaluation_id: str, limit: int = 50) -> list[ItemView]:
        async with self.engine.connect() as conn:
            docs = (
                await conn.execute(_QUEUED_ITEMS, {"evaluation_id": evaluation_id, "limit": limit})
            ).scalars()
            return [decode_item(d) for d in docs.all()]

    # ---- worker registry ----

    async def register_worker(self, info: WorkerInfo) -> None:
        async with write_transaction(self.engine) as conn:
            await conn.execute(workers.delete().where(workers.c.id == info.id))
            await conn.execute(workers.insert(), msgspec.structs.asdict(info))

    async def heartbeat(self, worker_id: str, at: str) -> None:
        async with write_transaction(self.engine) as conn:
            await conn.execute(
                workers.update().where(workers.c.id == worker_id).values(heartbeat_at=at)
            )

    async def unregister_worker(self, worker_id: str) -> None:
        async with write_transaction(self.engine) as conn:
            await conn.execute(workers.delete().where(workers.c.id == worker_id))

    async def live_workers(self) -> list[WorkerInfo]:
        """Workers that sent a heartbeat within WORKER_TIMEOUT_SECONDS."""
        cutoff = self.clock() - timedelta(seconds=WORKER_TIMEOUT_SECONDS)
        heartbeat_after = iso(cutoff)
        async with self.engine.connect() as conn:
            rows = (
                await conn.execute(
                    sa.select(workers).where(workers.c.heartbeat_at > heartbeat_after)
                )
            ).all()
        return [WorkerInfo(**row._mapping) for row in rows]

    # ---- transcripts ----

    def transcript_write(
        self,
        session_id: str,
        item_id: str,
        messages: Sequence[TranscriptMessage],
        *,
        after_seq: int = 0,
    ) -> SideWrite | None:
        """The write that stores an agent's transcript past `after_seq` (what the live
        transcript already stored), for the append of the item's next events
        (`EventStore.append(side_writes=...)`): none when there is nothing to store.

        Idempotent: it replaces the session's rows past `after_seq`, so a message the live
        writer stored meanwhile, or a second run of the same write, leaves one row per seq."""
        rows = _transcript_rows(session_id, item_id, [m for m in messages if m.seq > after_seq])
        if not rows:
            return None
        first = min(int(r["seq"]) for r in rows)
        replaced = transcript_messages.delete().where(
            transcript_messages.c.session_id == session_id,
            transcript_messages.c.seq >= first,
        )

        def write(conn: Connection) -> None:
            conn.execute(replaced)
            conn.execute(_INSERT_TRANSCRIPT, rows)

        return write

    async def store_transcript(
        self, session_id: str, item_id: str, messages: Sequence[TranscriptMessage]
    ) -> None:
        """Store messages of a running agent in a transaction of their own (side data: no
        event). Safe to repeat: the rows of these seqs are replaced."""
        if not messages:
            return
        write = self.transcript_write(
            session_id, item_id, messages, after_seq=min(m.seq for m in messages) - 1
        )
        if write is None:
            return
        async with write_transaction(self.engine) as conn:
            await conn.run_sync(write)

    async def transcript(
        self, session_id: str, *, after_seq: int = 0, limit: int = 500
    ) -> list[TranscriptMessage]:
        query = (
            sa.select(transcript_messages)
            .where(
                transcript_messages.c.session_id == session_id,
                transcript_messages.c.seq > after_seq,
            )
            .order_by(transcript_messages.c.seq)
            .limit(limit)
        )
        async with self.engine.connect() as conn:
            rows = (await conn.execute(query)).mappings().all()
        return [
            TranscriptMessage(
                seq=row["seq"],
                role=row["role"],
                content=row["content"],
                tool_calls=None
                if row["tool_calls"] is None
                else msgspec.json.decode(row["tool_calls"]),
                tool_call_id=row["tool_call_id"],
                metadata=_from_json(row["metadata"]),
                created_at=row["created_at"],
            )
            for row in rows
        ]
