"""The read caches of one serving process and how they learn of appends.

At commit, this process's appends hand the caches their projection's fold (views replaced in
place, list pages of the workspaces whose membership moved dropped); a tail of the log brings
in what other processes appended, within `view_tail_seconds` (infrastructure.view_cache).
"""

from __future__ import annotations

from infrastructure.eventstore import RecordedEvent
from infrastructure.list_cache import ListCache
from infrastructure.readmodels import Projector
from infrastructure.view_cache import REBUILT_EVENT, LoadViews, LogTail, ReadAfter, ViewCache


class ReadCaches:
    def __init__(self, ttl_seconds: float, projector: Projector) -> None:
        self.views = ViewCache(ttl_seconds)
        self.lists = ListCache(ttl_seconds)
        self._projector = projector
        self.tail: LogTail | None = None

    def committed(self, recorded: list[RecordedEvent]) -> None:
        """The event store's after-commit hook."""
        fold = self._projector.folded(recorded)
        self.views.refresh(recorded, fold.views)
        if any(r.event_type == REBUILT_EVENT for r in recorded):
            self.lists.clear()
        self.lists.moved(fold.moved_workspaces)
        if self.tail is not None:
            self.tail.own(recorded)

    def follow(self, read_after: ReadAfter, last_position: int, load: LoadViews) -> LogTail:
        """The tail that keeps these caches current with other processes' appends."""
        self.tail = LogTail(read_after, last_position, self.views, load, self.lists)
        return self.tail

    def clear(self) -> None:
        self.views.clear()
        self.lists.clear()
