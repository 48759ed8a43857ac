"""The composition root: builds everything a process needs (the API server, a worker process,
the command line) from settings, and nothing else builds services.

Every part is injectable: tests and benchmarks pass a fake clock, an engine of their own or a
sandbox registry. An event store is only ever built by `open_store`, with the inline read
models and the lease book in its append transaction, so no process can append without them.
"""

from __future__ import annotations

from pathlib import Path

import structlog
from sqlalchemy.ext.asyncio import AsyncEngine

from app.auth import Authenticator
from app.container import Container
from app.services.evaluations import EvaluationService
from app.services.idempotency import Idempotency
from app.services.items import ItemService
from app.services.registry import RegistryService
from app.services.sandboxes import SandboxService
from app.services.task_sets import TaskSetService
from app.services.work_signal import WorkSignal
from infrastructure.clock import Clock, system_clock
from infrastructure.db.engine import create_engine
from infrastructure.eventstore import AfterCommit, EventStore, RecordedEvent, in_order
from infrastructure.idempotency import IdempotencyKeys
from infrastructure.identity.crypto import load_cipher
from infrastructure.identity.store import IdentityStore
from infrastructure.leases import LeaseBook
from infrastructure.live.hub import LiveHub
from infrastructure.live.routing import EventRouter, Routed
from infrastructure.queries import ReadModelQueries
from infrastructure.read_caches import ReadCaches
from infrastructure.readmodels import Projector
from infrastructure.registry.blobs import BlobStore
from infrastructure.registry.bundles import BundleCache, BundleSource
from infrastructure.registry.log import RegistryLog
from infrastructure.repository import Repository
from infrastructure.sandbox.registry import ProviderRegistry
from infrastructure.settings import Settings
from infrastructure.tasks import TaskCatalog, load_catalog
from infrastructure.work_queue import WorkQueue

log = structlog.get_logger("assay.server")


def open_store(
    engine: AsyncEngine,
    *,
    projector: Projector | None = None,
    after_commit: AfterCommit | None = None,
) -> tuple[EventStore, LeaseBook]:
    """The event store of `engine`, keeping the read models and the lease book in step."""
    leases = LeaseBook(engine)
    store = EventStore(
        engine,
        in_transaction=in_order(projector or Projector(), leases.follow),
        after_commit=after_commit,
    )
    return store, leases


def build_container(
    settings: Settings,
    *,
    clock: Clock = system_clock,
    engine: AsyncEngine | None = None,
    catalog: TaskCatalog | None = None,
    providers: ProviderRegistry | None = None,
) -> Container:
    engine = engine or create_engine(settings.database_url)
    projector = Projector()
    # Cached views take the fold of the committed events instead of being evicted, so a poll
    # of a running evaluation stays a cache hit (infrastructure.read_caches).
    caches = ReadCaches(settings.view_cache_seconds, projector)
    live: LiveHub | None = None

    def committed(recorded: list[RecordedEvent]) -> None:
        caches.committed(recorded)
        if live is not None:
            live.wake()  # this process's own appends reach its live streams at once

    store, leases = open_store(engine, projector=projector, after_commit=committed)

    async def forget_changed(routed: list[Routed]) -> None:
        # Another process's appends may reach a stream before this server's log tail does:
        # the evaluation objects the streams send must not come from a stale cached view.
        caches.views.forget_recorded([r.record for r in routed])

    live = LiveHub(
        lambda after, limit: store.read_all(after_position=after, limit=limit),
        store.last_position,
        EventRouter(engine),
        poll_seconds=settings.live_poll_seconds,
        queue_limit=settings.sse_queue_limit,
        before_delivery=forget_changed,
    )
    repository = Repository(store)
    queries = ReadModelQueries(engine, caches.views, caches.lists)
    identity = IdentityStore(engine, load_cipher(settings))
    if catalog is None:
        catalog = load_catalog(settings.task_paths)
        for problem in catalog.problems:
            # One line per bundle left out, so an operator sees a typo at start, not at create.
            log.warning(
                "task_bundle_problem", task=problem.name, path=problem.path, error=problem.error
            )
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
    work = WorkSignal()
    return Container(
        settings=settings,
        clock=clock,
        engine=engine,
        store=store,
        repository=repository,
        queries=queries,
        identity=identity,
        authenticator=Authenticator(identity, settings.auth_cache_seconds),
        catalog=catalog,
        evaluations=EvaluationService(
            repository=repository,
            queries=queries,
            identity=identity,
            catalog=catalog,
            settings=settings,
            work=work,
            idempotency=Idempotency(IdempotencyKeys(engine), clock),
            clock=clock,
            tasks=registry,
            task_sets=task_sets,
        ),
        items=ItemService(
            repository=repository,
            leases=leases,
            clock=clock,
            lease_seconds=settings.lease_seconds,
            retry_backoff_seconds=settings.retry_backoff_seconds,
        ),
        sandboxes=SandboxService(
            repository=repository, queries=queries, settings=settings, clock=clock
        ),
        queue=WorkQueue(engine, clock),
        registry=registry,
        bundles=bundles,
        task_sets=task_sets,
        work=work,
        providers=providers,
        caches=caches,
        live=live,
    )
