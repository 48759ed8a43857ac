"""Everything a running server holds: built once in `create_app`, closed at shutdown."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from pathlib import Path

import structlog
from sqlalchemy.ext.asyncio import AsyncEngine

from app.auth import Authenticator
from app.services.evaluations import EvaluationService
from app.services.registry import RegistryService
from app.services.sandboxes import SandboxService
from app.services.task_sets import TaskSetService
from app.worker.pool import WorkerPool
from infrastructure.db.engine import create_engine
from infrastructure.eventstore import EventStore
from infrastructure.identity.crypto import load_cipher
from infrastructure.identity.store import IdentityStore
from infrastructure.queries import ReadModelQueries
from infrastructure.read_caches import ReadCaches
from infrastructure.readmodels import Projector
from infrastructure.registry.blobs import BlobStore
from infrastructure.registry.bundles import BundleCache, BundleSource
from infrastructure.registry.log import RegistryLog
from infrastructure.settings import Settings
from infrastructure.tasks import TaskCatalog, load_catalog
from infrastructure.work_queue import WorkQueue

log = structlog.get_logger("assay.server")

# How long a server trusts its count of live worker slots (effective_concurrency).
CAPACITY_CACHE_SECONDS = 2.0


@dataclass
class Container:
    settings: Settings
    engine: AsyncEngine
    store: EventStore
    queries: ReadModelQueries
    identity: IdentityStore
    authenticator: Authenticator
    catalog: TaskCatalog
    evaluations: EvaluationService
    sandboxes: SandboxService
    queue: WorkQueue
    registry: RegistryService
    bundles: BundleSource
    task_sets: TaskSetService
    _capacity: tuple[float, int] = (0.0, 0)
    caches: ReadCaches | None = None

    @classmethod
    def build(cls, settings: Settings) -> Container:
        engine = create_engine(settings.database_url)
        projector = Projector()
        # Cached views take the fold of the committed events instead of being evicted, so a
        # poll of a running evaluation stays a cache hit (infrastructure.read_caches).
        caches = ReadCaches(settings.view_cache_seconds, projector)
        store = EventStore(engine, in_transaction=projector, after_commit=caches.committed)
        queries = ReadModelQueries(engine, caches.views, caches.lists)
        identity = IdentityStore(engine, load_cipher(settings))
        catalog = load_catalog(settings.task_paths)
        for problem in catalog.problems:
            # One line per bundle left out, so an operator sees a typo at start, not at create.
            log.warning(
                "task_bundle_problem", task=problem.name, path=problem.path, error=problem.error
            )
        queue = WorkQueue(engine)
        blobs = BlobStore(engine)
        bundles = BundleSource(blobs, BundleCache(Path(settings.bundle_cache)))
        registry = RegistryService(
            log=RegistryLog(engine, store),
            blobs=blobs,
            bundles=bundles,
            identity=identity,
            catalog=catalog,
        )
        task_sets = TaskSetService(registry)
        return cls(
            settings=settings,
            engine=engine,
            store=store,
            queries=queries,
            identity=identity,
            authenticator=Authenticator(identity, settings.auth_cache_seconds),
            catalog=catalog,
            evaluations=EvaluationService(
                store=store,
                queries=queries,
                identity=identity,
                catalog=catalog,
                settings=settings,
                tasks=registry,
                task_sets=task_sets,
            ),
            sandboxes=SandboxService(store=store, queries=queries, settings=settings),
            queue=queue,
            registry=registry,
            bundles=bundles,
            task_sets=task_sets,
            caches=caches,
        )

    async def capacity(self) -> int:
        """Item slots of the live workers: what any evaluation can be granted at most."""
        expires, slots = self._capacity
        if expires > time.monotonic():
            return slots
        live = await self.queue.live_workers()
        slots = sum(w.slots for w in live)
        self._capacity = (time.monotonic() + CAPACITY_CACHE_SECONDS, slots)
        return slots

    def worker_pool(self, slots: int) -> WorkerPool:
        return WorkerPool(
            settings=self.settings,
            store=self.store,
            queue=self.queue,
            identity=self.identity,
            catalog=self.catalog,
            slots=slots,
            bundles=self.bundles,
        )

    async def follow_log(self) -> None:
        """Keep the view cache current with appends of other processes (runs until cancelled)."""
        if self.caches is None or not self.caches.views.enabled:
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
        await self.store.close()
        await self.engine.dispose()
