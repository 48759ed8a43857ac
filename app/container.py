"""Everything a process holds: built once by the composition root (`app.composition`), closed
when the process stops."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import structlog
from sqlalchemy.ext.asyncio import AsyncEngine

from app.auth import Authenticator
from app.services.evaluations import EvaluationService
from app.services.items import ItemService
from app.services.registry import RegistryService
from app.services.sandboxes import SandboxService
from app.services.task_sets import TaskSetService
from app.services.work_signal import WorkSignal
from app.worker.pool import WorkerPool
from app.worker.runner import ItemRunner
from infrastructure.clock import Clock
from infrastructure.eventstore import EventStore
from infrastructure.expiring import ExpiringMap
from infrastructure.identity.store import IdentityStore
from infrastructure.live.hub import LiveHub
from infrastructure.queries import ReadModelQueries
from infrastructure.read_caches import ReadCaches
from infrastructure.registry.bundles import BundleSource
from infrastructure.repository import Repository
from infrastructure.sandbox.registry import ProviderRegistry, sandbox_providers
from infrastructure.settings import Settings
from infrastructure.tasks import TaskCatalog
from infrastructure.work_queue import WorkQueue

log = structlog.get_logger("assay.server")

# How long a server trusts its count of live worker slots (effective_concurrency).
CAPACITY_CACHE_SECONDS = 2.0


@dataclass
class Container:
    settings: Settings
    clock: Clock
    engine: AsyncEngine
    store: EventStore
    repository: Repository
    queries: ReadModelQueries
    identity: IdentityStore
    authenticator: Authenticator
    catalog: TaskCatalog
    evaluations: EvaluationService
    items: ItemService
    sandboxes: SandboxService
    queue: WorkQueue
    registry: RegistryService
    bundles: BundleSource
    task_sets: TaskSetService
    work: WorkSignal
    # None: each worker pool gets the providers its settings and slots say (warm pool sized by
    # its slots); tests inject their own.
    providers: ProviderRegistry | None
    caches: ReadCaches
    live: LiveHub
    _capacity: ExpiringMap[str, int] = field(
        default_factory=lambda: ExpiringMap(CAPACITY_CACHE_SECONDS, max_entries=1)
    )

    async def capacity(self) -> int:
        """Item slots of the live workers: what any evaluation can be granted at most."""
        slots = self._capacity.get("live_slots")
        if slots is not None:
            return slots
        live = await self.queue.live_workers()
        slots = sum(w.slots for w in live)
        self._capacity.put("live_slots", slots)
        return slots

    def worker_pool(self, slots: int) -> WorkerPool:
        """A pool of `slots` item slots on this container's parts (not started)."""
        runner = ItemRunner(
            catalog=self.catalog,
            bundles=self.bundles,
            items=self.items,
            transcripts=self.queue,
            default_max_steps=self.settings.default_max_steps,
        )
        return WorkerPool(
            settings=self.settings,
            items=self.items,
            runner=runner,
            providers=self.providers or sandbox_providers(self.settings, slots),
            queue=self.queue,
            identity=self.identity,
            work=self.work,
            clock=self.clock,
            slots=slots,
        )

    async def follow_log(self) -> None:
        """Keep the view cache current with appends of other processes (runs until cancelled)."""
        if not self.caches.views.enabled:
            return
        tail = self.caches.follow(
            lambda after: self.store.read_all(after_position=after, limit=1000),
            await self.store.last_position(),
            self.queries.evaluations_by_id,
        )
        while True:
            await asyncio.sleep(self.settings.view_tail_seconds)
            try:
                await tail.poll()
            except Exception as exc:  # a passing database hiccup: empty the caches, go on
                self.caches.clear()
                log.warning("log_tail_failed", error=repr(exc))

    async def close(self) -> None:
        await self.live.close()
        await self.store.close()
        await self.engine.dispose()
