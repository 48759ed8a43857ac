"""The transcript of a running agent, stored as it is recorded so that
`GET .../items/{id}/transcript` shows the run while it happens.

Transcript rows are side data (the `transcript_messages` table), never events: the log stays
one event per state change. The agent's recorder hands each message to `add` (synchronous,
cheap: it only queues); a background task writes what is queued in one transaction `interval`
seconds after the first message of a batch arrived, so a burst of messages (a model turn and
its tool results) costs one commit, a slow model one commit per turn, and an agent that is done
within the interval (a scripted solution, a quick refusal) none. What is still
queued when the agent returns goes into the item's next append (`ItemRunner._record`), which
replaces rows past `stored_seq`: the final write is idempotent however far the live one got.

A failed live write is logged and retried with the next batch; it never fails the item.
"""

from __future__ import annotations

import asyncio
import contextlib

import structlog

from infrastructure.agents.protocol import TranscriptMessage
from infrastructure.work_queue import TranscriptStore

log = structlog.get_logger("assay.worker")

# Measured (scripts/measure_live_transcript.py, 200 messages of ~900 bytes): a transcript
# commit costs ~0.7 ms on SQLite and ~1.6 ms on PostgreSQL, whether it holds 1 message or 10;
# a model turn takes seconds. The cost is commits, and on SQLite each one holds the single
# write lock every item's appends wait for. A quarter second between writes keeps the view
# within a blink of the agent, while a chatty agent (a loop of quick commands) costs at most
# four commits a second per item, and a slow model one commit per turn.
FLUSH_INTERVAL_SECONDS = 0.25


class LiveTranscript:
    def __init__(
        self,
        queue: TranscriptStore,
        session_id: str,
        item_id: str,
        *,
        interval: float = FLUSH_INTERVAL_SECONDS,
    ) -> None:
        self.queue = queue
        self.session_id = session_id
        self.item_id = item_id
        self.interval = interval
        self.pending: list[TranscriptMessage] = []
        # Highest seq stored by this writer: the final write replaces everything after it.
        self.stored_seq = 0
        self.writes = 0
        self._wake = asyncio.Event()
        self._closing = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def add(self, message: TranscriptMessage) -> None:
        self.pending.append(message)
        self._wake.set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"transcript-{self.item_id}")

    async def stop(self, *, flush: bool = False) -> None:
        """Stop writing (after the write in progress, if any). `flush` stores what is still
        queued first: for a run that ends without an outcome (a crash, the deadline), whose
        partial transcript would otherwise be lost."""
        self._closing.set()
        self._wake.set()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if flush:
            await self._write()

    async def _run(self) -> None:
        while not self._closing.is_set():
            await self._wake.wait()
            self._wake.clear()
            # The messages of the next interval join this write; a run that ends meanwhile
            # stores them with its outcome instead (one commit fewer per short item).
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closing.wait(), self.interval)
            if self._closing.is_set():
                return
            await self._write()

    async def _write(self) -> None:
        batch = list(self.pending)
        if not batch:
            return
        try:
            await self.queue.store_transcript(self.session_id, self.item_id, batch)
        except Exception as exc:  # side data: the item goes on, the next batch retries
            log.warning("transcript_write_failed", item_id=self.item_id, error=repr(exc))
            return
        del self.pending[: len(batch)]
        self.stored_seq = batch[-1].seq
        self.writes += 1
