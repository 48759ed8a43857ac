"""An in-process cache of evaluation views, kept current from the event log.

A GET of an evaluation is the hottest read of the service (clients poll it, most of all while
it runs), and a database round trip costs an order of magnitude more than the rest of the
request (perf-baseline.md). So an append does not evict a cached view, it replaces it:
- appends made by this process hand over the views their inline projection just folded (the
  same fold a rebuild runs), at once after commit (`refresh`);
- appends of other processes (workers elsewhere on PostgreSQL) are seen by a tail of the log
  by position, which re-reads the rows of the cached evaluations they touched, one query per
  tail page (`LogTail`). A cached view is at most one tail interval (`view_tail_seconds`) plus
  that query behind another process's commit;
- a cached view is never replaced by one with a smaller `last_position` (an older fold), and
  an entry keeps the expiry of its first read: the time-to-live still bounds anything that
  changes read models without events.

A read that raced an invalidation never stores its result: each id remembers the generation
it was last invalidated at, and a put carries the generation its read started in.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence

import msgspec

from domain.projections import EvaluationView
from infrastructure.eventstore import RecordedEvent
from infrastructure.list_cache import ListCache

MAX_ENTRIES = 10_000
# Recorded by `infrastructure.rebuild`; every server drops its cached views on it.
REBUILT_EVENT = "read_models.rebuilt"
ReadAfter = Callable[[int], Awaitable[list[RecordedEvent]]]
LoadViews = Callable[[Sequence[str]], Awaitable[list[EvaluationView]]]


class _Ref(msgspec.Struct):
    evaluation_id: str


_ref_decoder = msgspec.json.Decoder(_Ref)


def evaluation_ids(recorded: Iterable[RecordedEvent]) -> set[str]:
    """The evaluations that recorded events belong to (item events carry theirs)."""
    return set(last_positions(recorded))


def last_positions(recorded: Iterable[RecordedEvent]) -> dict[str, int]:
    """Each touched evaluation's last position among the recorded events."""
    found: dict[str, int] = {}
    for record in recorded:
        if record.stream_type == "evaluation":
            found[record.stream_id] = record.position
        elif record.stream_type == "item":
            found[_ref_decoder.decode(record.data).evaluation_id] = record.position
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
            held = self._entries.get(view.id)
            if held is not None and held[1].last_position > view.last_position:
                pass  # a refresh stored a newer fold while this read was in flight
            else:
                if len(self._entries) >= MAX_ENTRIES:
                    self._entries.clear()
                self._entries[view.id] = (time.monotonic() + self.ttl_seconds, view)
        if self._reads_in_flight == 0:
            self._invalidated_at.clear()

    def end_reads(self, started: int, views: Iterable[EvaluationView]) -> None:
        """`end_read` for a read (begun once) that returned several views."""
        for view in views:
            self._reads_in_flight += 1  # each end_read ends one read; the last one ends ours
            self.end_read(started, view)
        self.end_read(started, None)

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
        self.refresh(recorded, {})

    def refresh(
        self, recorded: Sequence[RecordedEvent], views: Mapping[str, EvaluationView]
    ) -> None:
        """Events committed: a cached evaluation they touched takes its view from `views`
        (what the projection folded in their transaction, or a re-read row), else is
        forgotten. Reads in flight never store a result over it (see `forget`)."""
        if any(r.event_type == REBUILT_EVENT for r in recorded):
            self.clear()  # a rebuild may have changed every read model
        touched = evaluation_ids(recorded)
        kept = self.replace(views[i] for i in touched if i in views)
        self.forget(touched - kept)

    def replace(self, views: Iterable[EvaluationView]) -> set[str]:
        """Put newer views in place of cached ones (keeping their expiry); returns the ids
        whose entry now holds the given view or a newer one. Views not cached are not added:
        only a read starts an entry, so the cache holds what clients ask for."""
        self._generation += 1
        kept: set[str] = set()
        for view in views:
            entry = self._entries.get(view.id)
            if entry is None:
                continue
            kept.add(view.id)
            if entry[1].last_position <= view.last_position:
                self._entries[view.id] = (entry[0], view)
            if self._reads_in_flight:
                self._invalidated_at[view.id] = self._generation
        return kept

    def behind(self, positions: Mapping[str, int]) -> list[str]:
        """Cached evaluations whose view was folded before the given positions (a view at
        `last_position` L holds every event up to L, so this process's own appends, already
        refreshed, are not read again)."""
        return [
            i
            for i, position in positions.items()
            if (entry := self._entries.get(i)) is not None and entry[1].last_position < position
        ]


class LogTail:
    """Follows the log by position and brings the caches up to date with what other processes
    appended (this process's own appends, noted by `own`, were applied at commit):
    - cached views those appends moved past are re-read when `load_views` is given (one query
      per page of the log), else forgotten;
    - list pages (`lists`): a re-read view whose status changed moves its workspace, and an
      event of an evaluation the view cache does not hold empties the list cache."""

    def __init__(
        self,
        read_after: ReadAfter,
        last_position: int,
        cache: ViewCache,
        load_views: LoadViews | None = None,
        lists: ListCache | None = None,
    ) -> None:
        self._read_after = read_after
        self.position = last_position
        self._cache = cache
        self._load_views = load_views
        self._lists = lists
        self._own: set[int] = set()

    def own(self, recorded: Sequence[RecordedEvent]) -> None:
        """Positions this process committed and already applied to its caches."""
        if self._cache.enabled:
            self._own.update(r.position for r in recorded)

    async def poll(self) -> None:
        while True:
            page = await self._read_after(self.position)
            if not page:
                return
            foreign = [r for r in page if r.position not in self._own]
            if foreign:
                await self._apply(foreign)
            self.position = page[-1].position
            self._own = {p for p in self._own if p > self.position}

    async def _apply(self, foreign: list[RecordedEvent]) -> None:
        lists = self._lists
        if any(r.event_type == REBUILT_EVENT for r in foreign):
            self._cache.clear()
            if lists is not None:
                lists.clear()
        positions = last_positions(foreign)
        if lists is not None and any(self._cache.get(i) is None for i in positions):
            lists.clear()  # which workspace it belongs to is unknown here
        behind = self._cache.behind(positions)
        before = {i: view for i in behind if (view := self._cache.get(i)) is not None}
        kept: set[str] = set()
        if self._load_views is not None and behind:
            # Read after the page: each row is at least as new as the page's events.
            loaded = await self._load_views(behind)
            kept = self._cache.replace(loaded)
            if lists is not None:
                lists.moved(
                    v.workspace_id
                    for v in loaded
                    if (old := before.get(v.id)) is None or old.status != v.status
                )
        elif lists is not None and behind:
            lists.clear()
        self._cache.forget(set(behind) - kept)
