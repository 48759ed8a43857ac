"""Measure what live transcripts cost: one commit per message vs one per batch.

    .venv/bin/python scripts/measure_live_transcript.py [DATABASE_URL]

Default: a fresh SQLite file in a temporary folder. Prints the milliseconds per commit and
per message for 200 messages written one per commit and in batches of 10.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
import uuid
from pathlib import Path

from infrastructure.agents.protocol import TranscriptMessage
from infrastructure.clock import utc_now
from infrastructure.db.engine import create_engine
from infrastructure.db.migrate import upgrade
from infrastructure.work_queue import WorkQueue

MESSAGES = 200


def message(seq: int) -> TranscriptMessage:
    return TranscriptMessage(
        seq=seq,
        role="tool" if seq % 2 else "assistant",
        content="exit code: 0\n--- stdout ---\n" + "x" * 800,
        metadata={"tool": "shell", "exit_code": 0},
        created_at=utc_now(),
    )


async def measure(url: str) -> None:
    await upgrade(url)
    engine = create_engine(url)
    queue = WorkQueue(engine)
    try:
        for batch in (1, 10):
            session = str(uuid.uuid4())
            started = time.perf_counter()
            for first in range(1, MESSAGES + 1, batch):
                await queue.store_transcript(
                    session, session, [message(s) for s in range(first, first + batch)]
                )
            elapsed = (time.perf_counter() - started) * 1000
            commits = MESSAGES // batch
            print(
                f"batch {batch:>2}: {commits} commits, {elapsed / commits:.2f} ms/commit, "
                f"{elapsed / MESSAGES:.2f} ms/message"
            )
    finally:
        await engine.dispose()


def main() -> None:
    if len(sys.argv) > 1:
        asyncio.run(measure(sys.argv[1]))
        return
    with tempfile.TemporaryDirectory() as folder:
        asyncio.run(measure(f"sqlite+aiosqlite:///{Path(folder) / 'measure.db'}"))


if __name__ == "__main__":
    main()
