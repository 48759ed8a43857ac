"""The running items' stream versions, read for all of them at once.

Every running item has a watcher that looks at its stream's version every interval: an append
its worker did not make means the item is no longer this run's (cancelled, or taken back). One
query per watcher was 64 queries a second at 32 slots, each a round of thread hops through the
database driver. Here the watchers wake on the same ticks of the loop's clock, the versions
they ask for in one tick are read by one query, and each gets its own from the answer.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence

ReadVersions = Callable[[Sequence[str]], Awaitable[dict[str, int]]]


class StreamWatch:
    def __init__(self, read: ReadVersions, interval_seconds: float) -> None:
        self._read = read
        self.interval_seconds = interval_seconds
        # The ids asked for in the current tick, and the future their answer will settle.
        self._gathering: tuple[set[str], asyncio.Future[dict[str, int]]] | None = None

    async def next_version(self, stream_id: str) -> int:
        """Wait for the next tick, then answer the stream's version (0: no events). A failed
        read raises to every watcher of that tick."""
        loop = asyncio.get_running_loop()
        await asyncio.sleep(self.interval_seconds - loop.time() % self.interval_seconds)
        if self._gathering is None:
            self._gathering = (set(), loop.create_future())
            loop.call_soon(self._read_gathered)  # after every watcher of this tick asked
        asked, answer = self._gathering
        asked.add(stream_id)
        versions = await asyncio.shield(answer)
        return versions.get(stream_id, 0)

    def _read_gathered(self) -> None:
        assert self._gathering is not None
        asked, answer = self._gathering
        self._gathering = None
        # Retrieved here, so a failure nobody waits for any more (every watcher of the tick
        # was cancelled) is not reported as never retrieved.
        answer.add_done_callback(lambda done: done.cancelled() or done.exception())
        read = asyncio.ensure_future(self._read(sorted(asked)))

        def settle(done: asyncio.Future[dict[str, int]]) -> None:
            if answer.done():
                return
            if done.cancelled():
                answer.cancel()
            elif (failure := done.exception()) is not None:
                answer.set_exception(failure)
            else:
                answer.set_result(done.result())

        read.add_done_callback(settle)
