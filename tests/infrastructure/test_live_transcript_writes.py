"""The transcript writes behind live transcripts, on both backends: the live writer stores
batches as the agent records them, and the final write (in the item's append) is idempotent
however far the live writer got."""

from __future__ import annotations

import asyncio
import uuid

from sqlalchemy.ext.asyncio import AsyncEngine

from app.worker.live_transcript import LiveTranscript
from infrastructure.agents.protocol import TranscriptMessage
from infrastructure.db.engine import write_transaction
from infrastructure.work_queue import WorkQueue


def message(seq: int, text: str | None = None) -> TranscriptMessage:
    return TranscriptMessage(
        seq=seq, role="assistant", content=text or f"m{seq}", created_at="2026-01-01T00:00:00Z"
    )


async def final_write(
    queue: WorkQueue, session: str, messages: list[TranscriptMessage], after_seq: int
) -> None:
    write = queue.transcript_write(session, session, messages, after_seq=after_seq)
    assert write is not None
    async with write_transaction(queue.engine) as conn:
        await conn.run_sync(write)


async def test_the_final_write_twice_leaves_one_row_per_message(engine: AsyncEngine) -> None:
    queue = WorkQueue(engine)
    session = str(uuid.uuid4())
    await queue.store_transcript(session, session, [message(1), message(2)])
    messages = [message(s) for s in range(1, 6)]

    await final_write(queue, session, messages, after_seq=2)
    await final_write(queue, session, messages, after_seq=2)
    # Even from zero (nothing known stored), the rows are replaced, not doubled.
    await final_write(queue, session, messages, after_seq=0)

    stored = await queue.transcript(session)
    assert [(m.seq, m.content) for m in stored] == [(s, f"m{s}") for s in range(1, 6)]


async def test_the_live_writer_stores_batches_while_running_and_reports_how_far(
    engine: AsyncEngine,
) -> None:
    queue = WorkQueue(engine)
    session = str(uuid.uuid4())
    live = LiveTranscript(queue, session, session, interval=0.05)
    live.start()
    live.add(message(1))
    live.add(message(2))
    for _ in range(100):
        if len(await queue.transcript(session)) == 2:
            break
        await asyncio.sleep(0.02)
    live.add(message(3))
    await live.stop()

    assert [m.seq for m in await queue.transcript(session)][:2] == [1, 2]
    assert live.stored_seq in (2, 3)
    # stop(flush=True), as after a crash: nothing recorded is lost.
    live.add(message(4))
    await live.stop(flush=True)
    assert [m.seq for m in await queue.transcript(session)] == [1, 2, 3, 4]
    assert live.stored_seq == 4
    assert not live.pending


async def test_a_run_that_ends_within_the_interval_makes_no_live_write(
    engine: AsyncEngine,
) -> None:
    queue = WorkQueue(engine)
    session = str(uuid.uuid4())
    live = LiveTranscript(queue, session, session, interval=0.5)
    live.start()
    live.add(message(1))
    live.add(message(2))
    await asyncio.sleep(0.1)
    await live.stop()  # the item's own append stores them (ItemRunner._record)
    assert await queue.transcript(session) == []
    assert live.stored_seq == 0 and [m.seq for m in live.pending] == [1, 2]
