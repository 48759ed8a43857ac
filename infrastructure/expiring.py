"""ExpiringMap: the one in-process cache whose entries lapse a fixed time after they are put.

Used where a server may trust a recent answer for a moment instead of asking the database
again (verified API keys, orgs and workspaces in `app.auth`; the live worker slots in
`app.container`). Bounded: past `max_entries` the oldest put goes first, which with one
lifetime for every entry is also the first to lapse. The clock is injectable, so tests step
time instead of sleeping.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

DEFAULT_MAX_ENTRIES = 10_000


class ExpiringMap(Generic[K, V]):
    def __init__(
        self,
        seconds: float,
        *,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """Entries live `seconds` (0 or less: nothing is kept) on the monotonic `clock`."""
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self.seconds = seconds
        self.max_entries = max_entries
        self._clock = clock
        # Insertion order is put order (a put moves its key to the end): oldest first.
        self._entries: dict[K, tuple[float, V]] = {}

    def get(self, key: K) -> V | None:
        """The value put under `key`, unless it lapsed (then it is dropped)."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry[0] <= self._clock():
            del self._entries[key]
            return None
        return entry[1]

    def put(self, key: K, value: V) -> None:
        if self.seconds <= 0:
            return
        now = self._clock()
        self._entries.pop(key, None)
        self._drop_lapsed(now)
        while len(self._entries) >= self.max_entries:
            del self._entries[next(iter(self._entries))]
        self._entries[key] = (now + self.seconds, value)

    def drop(self, key: K) -> None:
        self._entries.pop(key, None)

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        """Entries held, lapsed ones not yet dropped included."""
        return len(self._entries)

    def _drop_lapsed(self, now: float) -> None:
        # Oldest first, so lapsed entries sit at the front: stop at the first live one.
        while self._entries:
            oldest = next(iter(self._entries))
            if self._entries[oldest][0] > now:
                return
            del self._entries[oldest]
