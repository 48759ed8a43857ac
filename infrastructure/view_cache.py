"""An in-process cache of evaluation views, kept current from the event log.

A GET of an evaluation is the hottest read of the service (clients poll it), and a database
round trip costs an order of magnitude more than the rest of the request (perf-baseline.md).
The cache forgets an evaluation as soon as an event of it commits: at once for appends made
by this process (the event store's after-commit hook), and within `tail_seconds` for appends
of other processes (a tail of the log by position). A time-to-live bounds anything else that
changes read models without events (`assay projections rebuild` in another process).

A read that raced an invalidation never stores its result: each id remembers the generation
it was last invalidated at, and a put carries the generation its read started in.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterable

import msgspec

from domain.projections import EvaluationView
from infrastructure.eventstore import RecordedEvent

MAX_ENTRIES = 10_000
# Recorded by `infrastructure.rebuild`; every server drops its cached views on it.
REBUILT_EVENT = "read_models.rebuilt"
ReadAfter = Callable[[int], Awaitable[list[RecordedEvent]]]


class _Ref(msgspec.Struct):
    evaluation_id: str


_ref_decoder = msgspec.json.Decoder(_Ref)


def evaluation_ids(recorded: Iterable[RecordedEvent]) -> set[str]:
    """The evaluations that recorded events belong to (item events carry theirs)."""
    found: set[str] = set()
    for record in recorded:
        if record.stream_type == "evaluation":
            found.add(record.stream_id)
        elif record.stream_type == "item":
            found.add(_ref_decoder.decode(record.data).evaluation_id)
    return found


class ViewCache:
    def __init__(self, ttl_seconds: float) -> None:
        self.ttl_seconds = ttl_seconds
        self._entries: dict[str, tuple[float, EvaluationView]] = {}
        # Only while reads are in flight does an invalidation need remembering.
        self._reads_in_flight = 0
        self._invalidated_at: dict[str, int] = {}
        self._generation = 0
        # Reads that started before this generation may not store their result (after clear).
        self._floor = 0

    @property
    def enabled(self) -> bool:
        return self.ttl_seconds > 0

    def generation(self) -> int:
        return self._generation

    def get(self, evaluation_id: str) -> EvaluationView | None:
        entry = self._entries.get(evaluation_id)
        if entry is None:
            return None
        if entry[0] < time.monotonic():
            self._entries.pop(evaluation_id, None)
            return None
        return entry[1]

    def begin_read(self) -> int:
        """Call before reading a view from the database; pass the result to `end_read`."""
        self._reads_in_flight += 1
        return self._generation

    def end_read(self, started: int, view: EvaluationView | None) -> None:
        self._reads_in_flight -= 1
        if view is not None and self._fresh(view.id, started):
            if len(self._entries) >= MAX_ENTRIES:
                self._entries.clear()
            self._entries[view.id] = (time.monotonic() + self.ttl_seconds, view)
        if self._reads_in_flight == 0:
            self._invalidated_at.clear()

    def _fresh(self, evaluation_id: str, started: int) -> bool:
        # A read that raced an invalidation of its id (or a clear) never stores its result.
        return (
            self.enabled
            and started >= self._floor
            and self._invalidated_at.get(evaluation_id, -1) <= started
        )

    def forget(self, ids: Iterable[str]) -> None:
        self._generation += 1
        for evaluation_id in ids:
            self._entries.pop(evaluation_id, None)
            if self._reads_in_flight:
                self._invalidated_at[evaluation_id] = self._generation

    def clear(self) -> None:
        """Forget everything, and refuse results of reads already in flight."""
        self._entries.clear()
        self._invalidated_at.clear()
        self._generation += 1
        self._floor = self._generation

    def forget_recorded(self, recorded: list[RecordedEvent]) -> None:
        if any(r.event_type == REBUILT_EVENT for r in recorded):
            self.clear()  # a rebuild may have changed every read model
        self.forget(evaluation_ids(recorded))


class LogTail:
    """Follows the log by position and forgets the evaluations other processes changed."""

    def __init__(self, read_after: ReadAfter, last_position: int, cache: ViewCache) -> None:
        self._read_after = read_after
        self.position = last_position
        self._cache = cache

    async def poll(self) -> None:
        while True:
            page = await self._read_after(self.position)
            if not page:
                return
            self._cache.forget_recorded(page)
            self.position = page[-1].position
