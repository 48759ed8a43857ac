"""A worker process's pool of item slots: claim, run, renew leases, recover lost items.

Claiming is fair across evaluations: each round offers a slot to the active evaluation with
the fewest items in flight first (ties to the one served least recently), so a big evaluation
cannot starve a small one created after it. A claim is an append at the item's version, so two
workers never both claim an item, and the capacity invariant inside the append transaction
keeps every evaluation within its `concurrency`, whichever worker claims.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import structlog

from app.services.items import ItemHandle, ItemLost, state_of
from app.worker.runner import ItemJob, ItemRunner
from domain import evaluation as ev
from domain import item as it
from domain.errors import IllegalTransition
from domain.projections import EvaluationView, ItemView
from infrastructure.agents.registry import create_agent
from infrastructure.clock import iso, utc_now
from infrastructure.eventstore import EventStore
from infrastructure.identity.store import IdentityStore
from infrastructure.registry.bundles import BundleSource
from infrastructure.sandbox.local.principals import parse_uid_range
from infrastructure.sandbox.protocol import SandboxProvider
from infrastructure.sandbox.registry import default_registry
from infrastructure.settings import Settings
from infrastructure.tasks import TaskCatalog
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
    def __init__(
        self,
        *,
        settings: Settings,
        store: EventStore,
        queue: WorkQueue,
        identity: IdentityStore,
        catalog: TaskCatalog,
        slots: int,
        bundles: BundleSource | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.queue = queue
        self.identity = identity
        self.catalog = catalog
        self.slots = slots
        self.hostname = socket.gethostname()
        self.worker_id = f"{self.hostname}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.runner = ItemRunner(
            catalog=catalog,
            bundles=bundles,
            queue=queue,
            clock=utc_now,
            retry_backoff_seconds=settings.retry_backoff_seconds,
            default_max_steps=settings.default_max_steps,
        )
        self.providers = default_registry(
            Path(settings.sandbox_root),
            isolation="weak" if settings.sandbox_isolation == "weak" else "strict",
            uid_range=parse_uid_range(settings.sandbox_uids),
            warm=slots if settings.sandbox_warm < 0 else settings.sandbox_warm,
        )
        self._running: dict[str, tuple[asyncio.Task[None], ItemHandle]] = {}
        self._last_served: dict[str, float] = {}
        self._wake = asyncio.Event()
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
        now = utc_now()
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
        log.info("worker_started", worker_id=self.worker_id, slots=self.slots)

    async def stop(self) -> None:
        """Stop claiming, let running items end, and leave the registry."""
        self._stopping = True
        self._wake.set()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        running = [task for task, _ in self._running.values()]
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)
        await self.providers.close()
        await self.queue.unregister_worker(self.worker_id)
        log.info("worker_stopped", worker_id=self.worker_id, interrupted_items=len(running))

    def wake(self) -> None:
        """New work may be claimable (an evaluation was created or reopened in this process)."""
        self._wake.set()

    # ---- claiming ----

    async def _claim_loop(self) -> None:
        while not self._stopping:
            claimed = 0
            if len(self._running) < self.slots:
                try:
                    claimed = await self._claim_round()
                except Exception as exc:
                    log.error("claim_failed", exc_info=exc)
            if claimed == 0:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.settings.poll_seconds)

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
        now = iso(datetime.now(UTC))
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
        claimed = await asyncio.gather(*(self._claim(e, v) for e, v in picks))
        for (evaluation, _), ok in zip(picks, claimed, strict=True):
            if ok:
                self._last_served[evaluation.id] = time.monotonic()
        return sum(claimed)

    async def _claim(self, evaluation: EvaluationView, view: ItemView) -> bool:
        handle = ItemHandle(self.store, state_of(view), utc_now, self.worker_id)
        lease = iso(datetime.now(UTC) + timedelta(seconds=self.settings.lease_seconds))
        try:
            # Provisioning starts the moment the claim lands: both in one append.
            await handle.apply(
                it.ItemClaimed(
                    item_id=view.id,
                    evaluation_id=view.evaluation_id,
                    worker_id=self.worker_id,
                    lease_expires_at=lease,
                ),
                it.ItemProvisioning(item_id=view.id, evaluation_id=view.evaluation_id),
            )
        except ItemLost:
            return False  # another worker took it, or the evaluation is at its concurrency
        log.info(
            "item_claimed",
            item_id=view.id,
            evaluation_id=view.evaluation_id,
            task=view.task_ref,
            worker_id=self.worker_id,
            attempt=view.retry_count + 1,
        )
        try:
            job = await self._job(handle, view, evaluation)
        except Exception as exc:
            log.error("job_setup_failed", item_id=view.id, exc_info=exc)
            job = None
        if job is None:
            await handle.apply(
                it.ItemInfraFailed(
                    item_id=view.id,
                    evaluation_id=view.evaluation_id,
                    error="worker could not prepare the item (agent, provider or secrets)",
                    will_retry=True,
                    retry_not_before=iso(
                        datetime.now(UTC) + timedelta(seconds=self.settings.retry_backoff_seconds)
                    ),
                )
            )
            return True
        task = asyncio.create_task(self._run(job), name=f"item:{view.id}")
        self._running[view.id] = (task, handle)
        return True

    async def _run(self, job: ItemJob) -> None:
        try:
            await self.runner.run(job)
        finally:
            # Only our own entry: the same item may already run again here (cancelled,
            # requeued and re-claimed while this run wound down).
            entry = self._running.get(job.item.id)
            if entry is not None and entry[0] is asyncio.current_task():
                del self._running[job.item.id]
            self._wake.set()

    async def _job(
        self, handle: ItemHandle, view: ItemView, evaluation: EvaluationView
    ) -> ItemJob | None:
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
            handle=handle,
            item=view,
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
        while not self._stopping:
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
            log.error("maintenance_failed", step=name, exc_info=exc)

    async def _heartbeat(self) -> None:
        await self.queue.heartbeat(self.worker_id, utc_now())

    async def _renew_leases(self) -> None:
        lease = iso(datetime.now(UTC) + timedelta(seconds=self.settings.lease_seconds))
        for item_id, (_task, handle) in list(self._running.items()):
            if handle.status not in it.IN_FLIGHT:
                continue
            # ItemLost: the runner finds out at its next step. IllegalTransition: the item ended
            # while this renewal waited for the handle.
            with contextlib.suppress(ItemLost, IllegalTransition):
                await handle.apply(
                    it.ItemLeaseRenewed(
                        item_id=item_id,
                        evaluation_id=handle.state.evaluation_id,
                        worker_id=self.worker_id,
                        lease_expires_at=lease,
                    )
                )

    async def _expire_leases(self) -> None:
        """Take back items whose worker stopped renewing (it died): retried or infra_error."""
        now = iso(datetime.now(UTC))
        for view in await self.queue.in_flight_items():
            if view.id in self._running or view.lease_expires_at is None:
                continue
            if view.lease_expires_at >= now:
                continue
            handle = ItemHandle(self.store, state_of(view), utc_now, self.worker_id)
            try:
                await handle.apply(
                    it.ItemInfraFailed(
                        item_id=view.id,
                        evaluation_id=view.evaluation_id,
                        error=f"worker {view.worker_id} lost its lease",
                        will_retry=True,
                        retry_not_before=now,
                    )
                )
                log.warning("lease_expired", item_id=view.id, worker_id=view.worker_id)
                self._wake.set()
            except ItemLost:
                pass  # renewed or taken meanwhile

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


def _env_name(name: str) -> str:
    cleaned = "".join(c if c.isalnum() else "_" for c in name.upper())
    return cleaned if cleaned and not cleaned[0].isdigit() else f"SECRET_{cleaned}"
