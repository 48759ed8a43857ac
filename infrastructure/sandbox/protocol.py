"""What the engine needs from a sandbox provider: provision, run, copy files, destroy.

A provider is found by name in `infrastructure.sandbox.registry`, so a docker or remote
provider can be added without touching the engine. Every call may raise `SandboxError`
(the provider or its host failed: the item ends in infra_error, retried with backoff).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Protocol

import msgspec


class SandboxError(Exception):
    """The sandbox or its provider failed; not the agent's fault."""


class SandboxSpec(msgspec.Struct, frozen=True, kw_only=True):
    item_id: str
    worker_id: str
    # Whether processes in the sandbox may reach the network (loopback only when False).
    network: bool = False
    cpu_seconds: int = 600
    memory_bytes: int = 2 * 1024**3
    file_size_bytes: int = 256 * 1024**2
    max_processes: int = 256
    env: Mapping[str, str] = {}


class ExecResult(msgspec.Struct, frozen=True, kw_only=True):
    exit_code: int | None  # None when killed at the deadline
    stdout: str
    stderr: str
    timed_out: bool
    duration_ms: float


class Sandbox(Protocol):
    @property
    def id(self) -> str: ...

    @property
    def location(self) -> str:
        """Where an operator finds it (a path for `local`), for items kept by cleanup policy."""
        ...

    async def run(
        self,
        command: str,
        *,
        timeout_sec: float,
        env: Mapping[str, str] | None = None,
        stdin: str | None = None,
    ) -> ExecResult:
        """Run `command` with bash in the sandbox's working directory; kill its whole process
        tree at the deadline (and report timed_out)."""
        ...

    async def put_file(self, relative_path: str, content: bytes, mode: int = 0o644) -> None: ...

    async def put_tree(self, source: Path, exclude: frozenset[str] = frozenset()) -> None:
        """Copy a folder's files (but the names in `exclude`) into the working directory."""
        ...

    async def get_file(self, relative_path: str) -> bytes: ...

    async def kill_all(self) -> None:
        """Kill every process still running in the sandbox (cancellation)."""
        ...

    async def keep(self) -> None:
        """Kill its processes but keep its files for inspection (orphan reaping spares it)."""
        ...

    async def destroy(self) -> None: ...


class SandboxProvider(Protocol):
    name: str

    def isolation_report(self) -> Mapping[str, bool]:
        """Which isolation features this host gives (namespaces, limits...), for start-up logs."""
        ...

    async def provision(self, spec: SandboxSpec) -> Sandbox: ...

    async def reap_orphans(self, live_worker_ids: frozenset[str]) -> list[str]:
        """Destroy sandboxes whose worker is gone; return their ids."""
        ...
