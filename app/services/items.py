"""Item commands for workers: every transition of one item goes through its handle.

A handle serialises the appends of one item inside this process (the runner and the lease
renewer share it) and tracks the stream version it appends at. When an append conflicts,
somebody else moved the item (the evaluation was cancelled, or the lease expired and another
worker took over): the handle raises `ItemLost` and this worker lets the item go.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

from domain import item as it
from domain.projections import ItemView
from infrastructure import codec
from infrastructure.db.outage import ride_out
from infrastructure.eventstore import ConcurrencyConflict, EventStore, SideWrite


class ItemLost(Exception):
    """The item moved under this worker; it must stop working on it."""


def state_of(view: ItemView) -> it.ItemState:
    return it.ItemState(
        item_id=view.id,
        evaluation_id=view.evaluation_id,
        status=view.status,
        retry_count=view.retry_count,
        max_retries=view.max_retries,
        version=view.version,
    )


class ItemHandle:
    def __init__(
        self, store: EventStore, state: it.ItemState, clock: Callable[[], str], worker_id: str
    ) -> None:
        self.store = store
        self.state = state
        self.clock = clock
        self.worker_id = worker_id
        self._lock = asyncio.Lock()

    @property
    def status(self) -> it.ItemStatus:
        return self.state.status

    @property
    def busy(self) -> bool:
        """An append is in flight (the stored version may be ahead of `state` for a moment)."""
        return self._lock.locked()

    async def apply(
        self, *proposed: it.AnyItemEvent, side_writes: Sequence[SideWrite] = ()
    ) -> it.ItemState:
        """Decide and append `proposed` (in order, atomically, with `side_writes` in the same
        transaction); raise ItemLost on a conflict."""
        async with self._lock:
            state = self.state
            decided: list[it.AnyItemEvent] = []
            for event in proposed:
                for accepted in it.decide(state, event):
                    decided.append(accepted)
                    state = it.evolve(state, accepted)
            metadata = codec.EventMetadata(correlation_id=self.state.evaluation_id)
            appends = codec.to_appends(
                decided, {("item", self.state.item_id): self.state.version}, metadata
            )
            try:
                # Retried through a database restart with the same event ids: idempotent.
                recorded_at = self.clock()
                await ride_out(
                    lambda: self.store.append(
                        appends, recorded_at=recorded_at, side_writes=side_writes
                    ),
                    what="item append",
                )
            except ConcurrencyConflict as exc:
                raise ItemLost(f"item {self.state.item_id} moved: {exc}") from exc
            self.state = state
            return state
