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
from infrastructure.eventstore import EventStore, RecordedEvent
from infrastructure.identity.crypto import load_cipher
from infrastructure.identity.store import IdentityStore
from infrastructure.live.hub import LiveHub
from infrastructure.live.routing import EventRouter, Routed
from infrastructure.queries import ReadModelQueries
from infrastructure.readmodels import Projector
from infrastructure.registry.blobs import BlobStore
from infrastructure.registry.bundles import BundleCache, BundleSource
from infrastructure.registry.log import RegistryLog
from infrastructure.settings import Settings
from infrastructure.tasks import TaskCatalog, load_catalog
from infrastructure.view_cache import LogTail, ViewCache
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
    live: LiveHub
    _capacity: tuple[float, int] = (0.0, 0)

    @classmethod
    def build(cls, settings: Settings) -> Container:
        engine = create_engine(settings.database_url)
        cache = ViewCache(settings.view_cache_seconds)
        live: LiveHub | None = None

        def committed(recorded: list[RecordedEvent]) -> None:
            cache.forget_recorded(recorded)
            if live is not None:
                live.wake()

        store = EventStore(engine, in_transaction=Projector(), after_commit=committed)

        async def forget_changed(routed: list[Routed]) -> None:
            # Another process's appends: the streams' evaluation objects must not be stale.
            cache.forget_recorded([r.record for r in routed])

        live = LiveHub(
            lambda after, limit: store.read_all(after_position=after, limit=limit),
            store.last_position,
            EventRouter(engine),
            poll_seconds=settings.live_poll_seconds,
            queue_limit=settings.sse_queue_limit,
            before_delivery=forget_changed,
        )
        queries = ReadModelQueries(engine, cache)
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
            live=live,
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
        if not self.queries.cache.enabled:
            return
        tail = LogTail(
            lambda after: self.store.read_all(after_position=after, limit=1000),
            await self.store.last_position(),
            self.queries.cache,
        )
        while True:
            await asyncio.sleep(self.settings.view_tail_seconds)
            try:
                await tail.poll()
            except Exception as exc:  # a passing database hiccup: empty the cache, go on
                self.queries.cache.clear()
                log.warning("log_tail_failed", error=repr(exc))

    async def close(self) -> None:
        await self.live.close()
        await self.store.close()
        await self.engine.dispose()
