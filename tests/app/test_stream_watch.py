"""Running items' watchers share one read of their streams' versions per interval."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from app.worker.stream_watch import StreamWatch


class Versions:
    def __init__(self, stored: dict[str, int]) -> None:
        self.stored = stored
        self.reads: list[list[str]] = []
        self.failure: Exception | None = None

    async def __call__(self, ids: Sequence[str]) -> dict[str, int]:
        self.reads.append(list(ids))
        await asyncio.sleep(0)
        if self.failure is not None:
            raise self.failure
        return {i: self.stored[i] for i in ids if i in self.stored}


async def test_the_watchers_of_one_tick_are_answered_by_one_read() -> None:
    versions = Versions({f"item-{n}": n for n in range(1, 33)})
    watch = StreamWatch(versions, 0.05)
    ids = [f"item-{n}" for n in range(32)]  # item-0 has no events
    answers = await asyncio.gather(*(watch.next_version(i) for i in ids))
    assert answers == list(range(32))
    assert versions.reads == [sorted(ids)]
    # The next tick is one more read, for whoever asks then.
    assert await watch.next_version("item-5") == 5
    assert versions.reads[1:] == [["item-5"]]


async def test_a_failed_read_reaches_every_watcher_of_its_tick_and_the_next_tick_reads_again() -> (
    None
):
    versions = Versions({"a": 3})
    versions.failure = ConnectionRefusedError("the database restarts")
    watch = StreamWatch(versions, 0.05)
    results = await asyncio.gather(
        watch.next_version("a"), watch.next_version("b"), return_exceptions=True
    )
    assert all(isinstance(r, ConnectionRefusedError) for r in results)
    versions.failure = None
    assert await watch.next_version("a") == 3


async def test_a_watcher_cancelled_while_waiting_leaves_the_others_their_answer() -> None:
    versions = Versions({"a": 1, "b": 2})
    watch = StreamWatch(versions, 0.05)
    leaving = asyncio.ensure_future(watch.next_version("a"))
    staying = asyncio.ensure_future(watch.next_version("b"))
    await asyncio.sleep(0)
    leaving.cancel()
    assert await staying == 2
    with pytest.raises(asyncio.CancelledError):
        await leaving
