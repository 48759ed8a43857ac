"""An in-process cache of list pages: which evaluations a page shows, and the filter's total.

A page's documents are not kept here: they come from the view cache, which appends keep
current in place (infrastructure.view_cache). What this cache keeps changes only when the
workspace's membership does: an evaluation created, or one changing status (or project).
Those are exactly the appends that move the list counters (infrastructure.list_counts), so:
- this process's appends name the workspaces whose counters they moved (`moved`), at once
  after commit;
- other processes' appends are seen by the log tail: a cached evaluation whose re-read view
  changed status moves its workspace, and an event of an evaluation the view cache does not
  hold (a new one, or one not read lately) empties this cache, within the tail interval;
- an entry lives at most `ttl_seconds`, like a cached view.

Entries are checked against a per-workspace generation when read, so a page read from the
database while its workspace moved is never served: it was stored under the old generation.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

MAX_ENTRIES = 10_000
# workspace_id, status or None, project_id or None, page, page_size
ListKey = tuple[str, str | None, str | None, int, int]
Stamp = tuple[int, int]


class ListCache:
    def __init__(self, ttl_seconds: float) -> None:
        self.ttl_seconds = ttl_seconds
        self._entries: dict[ListKey, tuple[float, Stamp, tuple[str, ...], int]] = {}
        self._generations: dict[str, int] = {}
        self._epoch = 0  # moved by `clear`: every workspace at once

    def stamp(self, workspace_id: str) -> Stamp:
        """Take before reading a page from the database; pass to `put`."""
        return (self._epoch, self._generations.get(workspace_id, 0))

    def get(self, key: ListKey) -> tuple[tuple[str, ...], int] | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        expires, stamp, ids, total = entry
        if expires < time.monotonic() or stamp != self.stamp(key[0]):
            self._entries.pop(key, None)
            return None
        return ids, total

    def put(self, key: ListKey, stamp: Stamp, ids: Iterable[str], total: int) -> None:
        if self.ttl_seconds <= 0 or stamp != self.stamp(key[0]):
            return  # the workspace moved while the page was read
        if len(self._entries) >= MAX_ENTRIES:
            self._entries.clear()
        self._entries[key] = (time.monotonic() + self.ttl_seconds, stamp, tuple(ids), total)

    def moved(self, workspace_ids: Iterable[str]) -> None:
        for workspace_id in workspace_ids:
            self._generations[workspace_id] = self._generations.get(workspace_id, 0) + 1

    def clear(self) -> None:
        self._entries.clear()
        self._epoch += 1
