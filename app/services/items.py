"""Item commands of the workers: claim, every transition of a claimed item, a lease expiry.

The same path as the API's commands (app/services/evaluations.py): the item is loaded from its
own stream (`infrastructure.repository`), the pure `domain.item.decide` turns each command into
events, and one commit appends them together with the read models and the lease book, whose
concurrency rule may refuse a claim. A claimed item is then held as a `ClaimedItem`: its state
as this worker last appended it, so a transition costs no read. When an append conflicts,
somebody else moved the item (the evaluation was cancelled, or the lease expired and another
worker took over): `ItemLost`, and the worker lets it go.
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection, Sequence
from datetime import timedelta
from typing import Protocol

import structlog

from domain import item as it
from domain.errors import IllegalTransition
from domain.timestamps import iso
from infrastructure import codec
from infrastructure.clock import Clock
from infrastructure.eventstore import ConcurrencyConflict, SideWrite
from infrastructure.leases import Lease
from infrastructure.repository import Repository

log = structlog.get_logger("assay.worker")


class ItemLost(Exception):
    """The item moved under this worker; it must stop working on it."""


class Leases(Protocol):
    """The lease book as the item commands use it (`infrastructure.leases.LeaseBook`)."""

    async def renew(self, worker_id: str, item_ids: Sequence[str], until: str) -> None: ...

    async def expired(self, now: str, limit: int = 100) -> list[Lease]: ...

    async def held(self, item_id: str) -> Lease | None: ...


class ItemService:
    def __init__(
        self,
        *,
        repository: Repository,
        leases: Leases,
        clock: Clock,
        lease_seconds: float,
        retry_backoff_seconds: float,
    ) -> None:
        self.repository = repository
        self.leases = leases
        self.clock = clock
        self.lease_seconds = lease_seconds
        self.retry_backoff_seconds = retry_backoff_seconds

    def lease_until(self) -> str:
        return iso(self.clock() + timedelta(seconds=self.lease_seconds))

    def infra_failure(self, error: str) -> it.ReportInfraFailure:
        """An infra failure now, retried after the configured backoff (the domain's policy
        says whether a retry is left and how long it waits)."""
        return it.ReportInfraFailure(
            error=error, at=self.clock(), backoff_seconds=self.retry_backoff_seconds
        )

    async def claim(self, item_ids: Sequence[str], worker_id: str) -> list[ClaimedItem]:
        """Claim what can be claimed of `item_ids` for `worker_id`; the claims share one group
        commit. An item another worker took first, or whose evaluation is at its concurrency,
        is left out."""
        states = await self.repository.items(item_ids)
        lease = self.lease_until()
        claimed = await asyncio.gather(
            *(self._claim(states[i], worker_id, lease) for i in item_ids if i in states)
        )
        return [c for c in claimed if c is not None]

    async def _claim(self, state: it.ItemState, worker_id: str, lease: str) -> ClaimedItem | None:
        item = ClaimedItem(self, state)
        try:
            await item.execute(it.Claim(worker_id=worker_id, lease_expires_at=lease))
        except (ItemLost, IllegalTransition):
            return None  # taken meanwhile, no longer queued, or the evaluation is at capacity
        return item

    async def stored_versions(self, item_ids: Sequence[str]) -> dict[str, int]:
        """How many events each item's stream holds now (watchers compare them with their
        own), in one query."""
        return await self.repository.store.stream_versions("item", item_ids)

    async def renew(self, worker_id: str, item_ids: Collection[str]) -> None:
        await self.leases.renew(worker_id, list(item_ids), self.lease_until())

    async def expire_leases(self, exclude: Collection[str] = ()) -> list[str]:
        """Take back the items whose worker stopped renewing its lease (it died): each goes
        back to the queue, or ends infra_error without retries left. Returns their ids."""
        now = self.clock()
        taken: list[str] = []
        for lease in await self.leases.expired(iso(now)):
            if lease.item_id in exclude:
                continue
            state = await self.repository.item(lease.item_id)
            if state is None:
                continue
            try:
                await ClaimedItem(self, state).execute(it.ExpireLease(at=now))
            except (ItemLost, IllegalTransition):
                continue  # renewed, ended or taken meanwhile
            log.warning("lease_expired", item_id=lease.item_id, worker_id=lease.worker_id)
            taken.append(lease.item_id)
        return taken

    async def commit(
        self,
        state: it.ItemState,
        commands: Sequence[it.AnyItemCommand],
        side_writes: Sequence[SideWrite] = (),
    ) -> it.ItemState:
        """Decide `commands` on `state` and append the events at its version; ItemLost when
        the stream moved meanwhile."""
        events, after = it.execute(state, list(commands))
        try:
            await self.repository.commit(
                events,
                versions={("item", state.item_id): state.version},
                metadata=codec.EventMetadata(correlation_id=state.evaluation_id),
                recorded_at=iso(self.clock()),
                side_writes=side_writes,
                # A worker's outcome must not be lost to a database restart, nor recorded
                # twice: retried with the same event ids, which the store treats as idempotent.
                through_outage=True,
            )
        except ConcurrencyConflict as exc:
            raise ItemLost(f"item {state.item_id} moved: {exc}") from exc
        return after


class ClaimedItem:
    """An item this worker holds. Its appends are serialised here (the runner and the pool
    share it), each at the version the previous one left."""

    def __init__(self, service: ItemService, state: it.ItemState) -> None:
        self.service = service
        self.state = state
        self._lock = asyncio.Lock()

    @property
    def item_id(self) -> str:
        return self.state.item_id

    @property
    def busy(self) -> bool:
        """An append is in flight (the stored version may be ahead of `state` for a moment)."""
        return self._lock.locked()

    def preview(self, *commands: it.AnyItemCommand) -> it.ItemState:
        """The state `commands` would leave, appending nothing (IllegalTransition if refused)."""
        return it.execute(self.state, list(commands))[1]

    async def execute(
        self, *commands: it.AnyItemCommand, side_writes: Sequence[SideWrite] = ()
    ) -> it.ItemState:
        """Decide and append `commands` in order, atomically, with `side_writes` in the same
        transaction; ItemLost on a conflict."""
        async with self._lock:
            self.state = await self.service.commit(self.state, commands, side_writes)
            return self.state
