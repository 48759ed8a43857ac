"""Pre-started strict sandboxes: an item's sandbox is ready before the item asks for it.

Starting a strict sandbox (item network, a uid, a tmpfs workspace, then bwrap and the view's
exec server) takes 15-25 ms of CPU and, on a busy host, tens of ms of wall time that the item
would otherwise spend waiting at `provision`. A `WarmPool` wraps the `local` provider and keeps
up to `size` sandboxes started ahead (a worker sizes it by its slots), made one at a time in the
background and refilled after each hand-out, so a burst of claims finds its sandboxes waiting.

A warm sandbox is exactly a fresh one, started earlier: its own item network, its own uid
(held from the start), an empty workspace and `/tmp`, and a view whose exec server has run
nothing. Nothing of an item runs in it before it is handed out, it is handed out once, and it is
destroyed with its item like any other: the pool never takes one back. Only what is fixed at
start must match, so the pool serves a spec only when its network and limits are the pool's
(no services, no egress policy, the default limits); anything else is provisioned fresh, as
without a pool. At hand-out the sandbox takes the item's spec (its environment goes with every
command) and its metadata is rewritten with the item's id, so operators and orphan reaping see
it as the item's. Sandboxes still in the pool are the worker's (its id is in their metadata):
reaped with it if it dies, destroyed by `close` when it stops, and by the pool itself when no
item has asked for one for `idle_seconds`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Mapping

import structlog

from infrastructure.sandbox.local.provider import LocalSandboxProvider
from infrastructure.sandbox.local.strict import StrictSandbox
from infrastructure.sandbox.local.weak import WeakSandbox
from infrastructure.sandbox.protocol import SandboxSpec

log = structlog.get_logger(__name__)

WARM_ITEM = "warm"
IDLE_SECONDS = 60.0
# How long `close` lets a sandbox being started finish before cancelling it (a host problem).
CLOSE_WAIT_SECONDS = 30.0


class WarmPool:
    """A `SandboxProvider` (the wrapped provider's name and behaviour) that hands out
    pre-started strict sandboxes where a spec allows (see the module docstring)."""

    def __init__(
        self, provider: LocalSandboxProvider, size: int, *, idle_seconds: float = IDLE_SECONDS
    ) -> None:
        self.provider = provider
        self.name = provider.name
        self.size = max(0, size)
        self.idle_seconds = idle_seconds
        self._ready: list[StrictSandbox] = []
        self._filler: asyncio.Task[None] | None = None
        self._worker_id: str | None = None
        self._last_demand = time.monotonic()
        self._taken = asyncio.Event()  # set at each hand-out: a filler waiting refills at once
        self._closed = False
        self.handed_out = 0  # sandboxes served from the pool (for benchmarks and logs)

    # -- the provider protocol --------------------------------------------------------------

    def isolation_report(self) -> Mapping[str, bool]:
        return self.provider.isolation_report()

    def unavailable_reason(self) -> str | None:
        return self.provider.unavailable_reason()

    async def reap_orphans(self, live_worker_ids: frozenset[str]) -> list[str]:
        return await self.provider.reap_orphans(live_worker_ids)

    async def provision(self, spec: SandboxSpec) -> StrictSandbox | WeakSandbox:
        if not self._fits(spec):
            return await self.provider.provision(spec)
        self._last_demand = time.monotonic()
        self._worker_id = spec.worker_id
        sandbox = self._take()
        self._fill()
        if sandbox is None:
            return await self.provider.provision(spec)
        await sandbox.adopt(spec)
        self.handed_out += 1
        return sandbox

    # -- the pool ---------------------------------------------------------------------------

    def _warm_spec(self, worker_id: str) -> SandboxSpec:
        return SandboxSpec(item_id=WARM_ITEM, worker_id=worker_id)

    def _fits(self, spec: SandboxSpec) -> bool:
        """Whether a warm sandbox is what `provision(spec)` would make: strict, the item's
        network without uplink or services, and the default limits."""
        if self.size == 0 or self._closed or self.provider.level != "strict":
            return False
        if spec.services or spec.egress is not None or spec.image is not None:
            return False
        warm = self._warm_spec(spec.worker_id)
        fixed = ("cpu_seconds", "memory_bytes", "file_size_bytes", "disk_bytes", "max_processes")
        return all(getattr(spec, name) == getattr(warm, name) for name in fixed)

    def _take(self) -> StrictSandbox | None:
        while self._ready:
            sandbox = self._ready.pop(0)  # oldest first: none waits long
            if sandbox.ready:
                return sandbox
            asyncio.get_running_loop().create_task(sandbox.destroy())
        return None

    def _fill(self) -> None:
        self._taken.set()
        if self._filler is None or self._filler.done():
            self._filler = asyncio.get_running_loop().create_task(self._fill_loop(), name="warm")

    async def _fill_loop(self) -> None:
        """Start sandboxes one at a time until the pool is full; then, once nobody has asked
        for one for `idle_seconds`, give them all back."""
        while not self._closed and self._worker_id is not None:
            if len(self._ready) < self.size:
                try:
                    sandbox = await self.provider.provision(self._warm_spec(self._worker_id))
                    assert isinstance(sandbox, StrictSandbox)
                    try:
                        await sandbox.start_agent_view()
                    except BaseException:
                        await sandbox.destroy()
                        raise
                except Exception as exc:
                    log.warning("warm_sandbox_failed", error=str(exc))
                    await asyncio.sleep(1.0)  # a host problem: items still provision fresh
                    continue
                if self._closed:
                    await sandbox.destroy()
                    return
                self._ready.append(sandbox)
                continue
            idle_for = time.monotonic() - self._last_demand
            if idle_for >= self.idle_seconds:
                await self._drain()
                return
            self._taken.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._taken.wait(), self.idle_seconds - idle_for)

    async def _drain(self) -> None:
        ready, self._ready = self._ready, []
        for sandbox in ready:
            with contextlib.suppress(Exception):
                await sandbox.destroy()

    async def close(self) -> None:
        """Destroy the sandboxes not handed out; the pool serves nothing more.

        A sandbox being started is let finish and then destroyed by the filler itself:
        cancelling a start half-way left what it had made so far (a namespace's mount)."""
        self._closed = True
        self._taken.set()  # wakes a filler waiting for demand: it sees the pool closed
        filler, self._filler = self._filler, None
        if filler is not None:
            _, still_starting = await asyncio.wait({filler}, timeout=CLOSE_WAIT_SECONDS)
            if still_starting:
                filler.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await filler
        await self._drain()

    def warm_ids(self) -> list[str]:
        """Ids of the sandboxes waiting in the pool (tests and operators)."""
        return [sandbox.id for sandbox in self._ready]
