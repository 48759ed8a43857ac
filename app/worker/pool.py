"""A worker process's pool of item slots: claim, run, renew leases, recover lost items.

Claiming is fair across evaluations: each round offers a slot to the active evaluation with
the fewest items in flight first (ties to the one served least recently), so a big evaluation
cannot starve a small one created after it. The read models only say where work may be; the
claim itself is a command on the item's stream (app/services/items.py), appended at the
version it was loaded at, so two workers never both claim an item, and the concurrency rule
checked in the append transaction (infrastructure/leases.py) keeps every evaluation within its
`concurrency`, whichever worker claims.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import structlog

from app.services.items import ClaimedItem, ItemLost, ItemService
from app.services.work_signal import WorkSignal
from app.worker.runner import ItemJob, ItemRunner
from domain import evaluation as ev
from domain import item as it
from domain.errors import IllegalTransition
from domain.projections import EvaluationView, ItemView
from domain.timestamps import iso
from infrastructure.agents.registry import create_agent
from infrastructure.clock import Clock
from infrastructure.db.outage import is_database_unavailable
from infrastructure.identity.store import IdentityStore
from infrastructure.metrics import track_pool, untrack_pool
from infrastructure.sandbox.protocol import SandboxProvider
from infrastructure.sandbox.registry import ProviderRegistry
from infrastructure.settings import Settings
from infrastructure.work_queue import WorkerInfo, WorkQueue

log = structlog.get_logger("assay.worker")

HEARTBEAT_SECONDS = 5.0


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class SandboxUnavailable(Exception):
    """A sandbox provider cannot run items on this host as configured; the message says why
    and how to fix it."""


class WorkerPool:
    """Built by the composition root (app/composition.py) from parts it is handed."""

    def __init__(
        self,
        *,
        settings: Settings,
        items: ItemService,
        runner: ItemRunner,
        providers: ProviderRegistry,
        queue: WorkQueue,
        identity: IdentityStore,
        work: WorkSignal,
        clock: Clock,
        slots: int,
    ) -> None:
        self.settings = settings
        self.items = items
        self.runner = runner
        self.providers = providers
        self.queue = queue
        self.identity = identity
        self.work = work
        self.clock = clock
        self.slots = slots
        self.hostname = socket.gethostname()
        self.worker_id = f"{self.hostname}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._running: dict[str, tuple[asyncio.Task[None], ClaimedItem]] = {}
        self._last_served: dict[str, float] = {}
        self._stopping = False
        self._tasks: list[asyncio.Task[None]] = []

    # ---- lifecycle ----

    async def start(self) -> None:
        """Register and start claiming; SandboxUnavailable (before anything is registered) if
        a provider cannot give the isolation configured."""
        for name in self.providers.names():
            reason = await asyncio.to_thread(self.providers.get(name).unavailable_reason)
            if reason is not None:
                # Refuse rather than run items under an isolation nobody chose: the items wait
                # in the queue for a worker that can give it.
                log.error("sandbox_unavailable", provider=name, reason=reason)
                raise SandboxUnavailable(reason)
        now = iso(self.clock())
        await self.queue.register_worker(
            WorkerInfo(
                id=self.worker_id,
                hostname=self.hostname,
                pid=os.getpid(),
                slots=self.slots,
                started_at=now,
                heartbeat_at=now,
            )
        )
        for name in self.providers.names():
            report = self.providers.get(name).isolation_report()
            log.info(
                "sandbox_isolation",
                provider=name,
                worker_id=self.worker_id,
                available=sorted(k for k, v in report.items() if v),
                unavailable=sorted(k for k, v in report.items() if not v),
            )
        await self._reap_orphans()
        self._tasks = [
            asyncio.create_task(self._claim_loop(), name="claim"),
            asyncio.create_task(self._maintenance_loop(), name="maintenance"),
        ]
        track_pool(self)
        log.info("worker_started", worker_id=self.worker_id, slots=self.slots)

    async def stop(self) -> None:
        """Stop claiming, let running items end within the grace period, hand back the rest
        (see "graceful shutdown" below), and leave the registry."""
        self._stopping = True  # the claim loop ends; maintenance still renews leases
        self.work.notify()
        await self._finish_running(self.settings.shutdown_grace_seconds)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        interrupted = await self._interrupt_running()
        # Its pre-started sandboxes (the warm pool) go with it.
        await self.providers.close()
        untrack_pool(self)
        await self.queue.unregister_worker(self.worker_id)
        log.info("worker_stopped", worker_id=self.worker_id, interrupted_items=interrupted)

    # ---- claiming ----

    async def _claim_loop(self) -> None:
        while not self._stopping:
            claimed = 0
            if len(self._running) < self.slots:
                try:
                    claimed = await self._claim_round()
                except Exception as exc:
                    _log_failure("claim_failed", exc)
            if claimed == 0:
                await self.work.wait(self.settings.poll_seconds)

    async def _claim_round(self) -> int:
        if len(self._running) >= self.slots:
            return 0
        evaluations = [
            e
            for e in await self.queue.active_evaluations()
            if e.item_counts["queued"] > 0 and ev.in_flight(e.item_counts) < e.config.concurrency
        ]
        evaluations.sort(
            key=lambda e: (
                ev.in_flight(e.item_counts),
                self._last_served.get(e.id, 0.0),
                e.created_at,
            )
        )
        free = self.slots - len(self._running)
        now = iso(self.clock())
        candidates: list[tuple[EvaluationView, list[ItemView]]] = []
        for evaluation in evaluations:
            room = min(free, evaluation.config.concurrency - ev.in_flight(evaluation.item_counts))
            ready = [
                view
                for view in await self.queue.queued_items(evaluation.id, limit=room + 8)
                if view.retry_not_before is None or view.retry_not_before <= now
            ]
            if ready:
                candidates.append((evaluation, ready[:room]))
        # Deal the free slots round-robin, fewest-in-flight evaluation first, then claim them
        # all at once: the claims' appends share one group commit.
        picks: list[tuple[EvaluationView, ItemView]] = []
        while len(picks) < free and any(views for _, views in candidates):
            for evaluation, views in candidates:
                if views and len(picks) < free:
                    picks.append((evaluation, views.pop(0)))
        evaluation_of = {view.id: evaluation for evaluation, view in picks}
        claimed = await self.items.claim([view.id for _, view in picks], self.worker_id)
        for item in claimed:
            evaluation = evaluation_of[item.item_id]
            self._last_served[evaluation.id] = time.monotonic()
            await self._start(item, evaluation)
        return len(claimed)

    async def _start(self, item: ClaimedItem, evaluation: EvaluationView) -> None:
        log.info(
            "item_claimed",
            item_id=item.item_id,
            evaluation_id=evaluation.id,
            task=item.state.task_ref,
            worker_id=self.worker_id,
            attempt=item.state.retry_count + 1,
        )
        try:
            job = await self._job(item, evaluation)
        except Exception as exc:
            log.error("job_setup_failed", item_id=item.item_id, exc_info=exc)
            with contextlib.suppress(ItemLost):  # cancelled meanwhile
                await item.execute(
                    self.items.infra_failure(
                        "worker could not prepare the item (agent, provider or secrets)"
                    )
                )
            return
        task = asyncio.create_task(self._run(job), name=f"item:{item.item_id}")
        self._running[item.item_id] = (task, item)

    async def _run(self, job: ItemJob) -> None:
        try:
            await self.runner.run(job)
        finally:
            # Only our own entry: the same item may already run again here (cancelled,
            # requeued and re-claimed while this run wound down).
            entry = self._running.get(job.item_id)
            if entry is not None and entry[0] is asyncio.current_task():
                del self._running[job.item_id]
            self.work.notify()

    async def _job(self, item: ClaimedItem, evaluation: EvaluationView) -> ItemJob:
        config = evaluation.config
        agent_name = ev.chosen_agent(config.agent_type, config.capability)
        extras: dict[str, Any] = {}
        secrets_env: dict[str, str] = {}
        api_key: str | None = None
        owner = evaluation.created_by.user_id if evaluation.created_by else ""
        # Create checked that every secret is the creator's; the worker uses them on their behalf.
        for secret in await self.identity.get_secrets(owner, config.secret_ids):
            value = await self.identity.reveal_secret(secret.id)
            secrets_env[_env_name(secret.name)] = value
            if api_key is None or secret.provider == "openai":
                api_key = value
        if agent_name == "openai":
            base_url = self.settings.openai_base_url
            if config.runtime_id is not None:
                runtime = await self.identity.get_runtime(
                    evaluation.workspace_id, config.runtime_id
                )
                if runtime is not None and runtime.base_url:
                    base_url = runtime.base_url
            extras = {"base_url": base_url, "api_key": api_key}
        provider: SandboxProvider = self.providers.get(config.sandbox_provider)
        return ItemJob(
            claimed=item,
            worker_id=self.worker_id,
            evaluation=evaluation,
            agent_name=agent_name,
            agent=create_agent(agent_name),
            provider=provider,
            context_extras=extras,
            secrets_env=secrets_env,
        )

    # ---- leases, heartbeats, recovery ----

    async def _maintenance_loop(self) -> None:
        renew_every = max(0.2, self.settings.lease_seconds / 3)
        next_heartbeat = 0.0
        while True:  # until stop() cancels it, after the grace period: leases stay renewed
            await asyncio.sleep(renew_every)
            # Each step on its own: a failing one must not cost the others their turn (a
            # skipped heartbeat would make this live worker look dead to the others).
            await self._step("renew_leases", self._renew_leases)
            await self._step("expire_leases", self._expire_leases)
            if time.monotonic() >= next_heartbeat:
                await self._step("heartbeat", self._heartbeat)
                await self._step("reap_orphans", self._reap_orphans)
                next_heartbeat = time.monotonic() + HEARTBEAT_SECONDS

    async def _step(self, name: str, step: Callable[[], Awaitable[None]]) -> None:
        try:
            await step()
        except Exception as exc:
            _log_failure("maintenance_failed", exc, step=name)

    async def _heartbeat(self) -> None:
        await self.queue.heartbeat(self.worker_id, iso(self.clock()))

    async def _renew_leases(self) -> None:
        """One statement for every item this worker holds; nothing goes into the log."""
        held = [i for i, (_, item) in self._running.items() if item.state.status in it.IN_FLIGHT]
        await self.items.renew(self.worker_id, held)

    async def _expire_leases(self) -> None:
        """Take back items whose worker stopped renewing (it died): retried or infra_error."""
        if await self.items.expire_leases(exclude=set(self._running)):
            self.work.notify()

    async def _reap_orphans(self) -> None:
        live = frozenset(
            w.id
            for w in await self.queue.live_workers()
            if w.hostname != self.hostname or _pid_alive(w.pid)
        ) | {self.worker_id}
        for name in self.providers.names():
            reaped = await self.providers.get(name).reap_orphans(live)
            if reaped:
                log.warning("orphan_sandboxes_destroyed", provider=name, sandboxes=reaped)

    # ---- graceful shutdown and metrics ----

    @property
    def busy_slots(self) -> int:
        return len(self._running)

    @property
    def free_slots(self) -> int:
        return 0 if self._stopping else max(0, self.slots - len(self._running))

    async def _finish_running(self, grace_seconds: float) -> None:
        """Wait up to `grace_seconds` for the running items to end on their own."""
        running = [task for task, _ in self._running.values()]
        if not running or grace_seconds <= 0:
            return
        log.info("worker_draining", worker_id=self.worker_id, items=len(running))
        await asyncio.wait(running, timeout=grace_seconds)

    async def _interrupt_running(self) -> int:
        """Stop what still runs after the grace period and hand each item back at once: an
        infra failure that will retry (as when a lease lapses, it counts one retry), so
        another worker claims it now instead of after the lease expires."""
        entries = list(self._running.values())
        for task, _ in entries:
            task.cancel()
        await asyncio.gather(*(task for task, _ in entries), return_exceptions=True)
        for _, item in entries:
            if item.state.status not in it.IN_FLIGHT:
                continue  # it ended while being stopped
            try:
                await item.execute(it.HandBack(at=self.clock()))
                log.info("item_handed_back", item_id=item.item_id)
            except (ItemLost, IllegalTransition):
                pass  # moved meanwhile (cancelled, or taken back): nothing of ours to return
            except Exception as exc:  # the database is away: the lease lapses as a fallback
                log.error("hand_back_failed", item_id=item.item_id, error=repr(exc))
        return len(entries)


def _log_failure(event: str, exc: Exception, **fields: str) -> None:
    """A database that is away (restarting) is a warning without a traceback: the loops retry
    on their own and would otherwise print one per poll; anything else is an error."""
    if is_database_unavailable(exc):
        log.warning(event, reason="database unavailable", error=repr(exc), **fields)
    else:
        log.error(event, exc_info=exc, **fields)


def _env_name(name: str) -> str:
    cleaned = "".join(c if c.isalnum() else "_" for c in name.upper())
    return cleaned if cleaned and not cleaned[0].isdigit() else f"SECRET_{cleaned}"
