"""What the engine needs from a sandbox provider: provision, run, copy files, end, destroy.

A provider is found by name in `infrastructure.sandbox.registry`, so a docker or remote
provider can be added without touching the engine. Every call may raise `SandboxError`
(the provider or its host failed: the item ends in infra_error, retried with backoff).

The agent under test is the adversary. One `Sandbox` is one item's *agent runtime*: a private
view (read-only system directories, its own writable workspace at `WORKSPACE`, a private
`/tmp`) run as an unprivileged principal. The task's services (`SandboxSpec.services`) run as
other principals on the item's own network, reachable from the agent by their names; a script
checker runs in a fresh view (`open_checker`) that sees the agent's workspace read-only.
Every sandbox says what isolation it really got (`isolation`), and the runner records that
with the verdict.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Literal, Protocol

import msgspec

# Where the agent's writable workspace is, inside every provider's view; the working directory
# of every command and $HOME.
WORKSPACE = "/workspace"

# What a command finds on PATH in any provider's sandbox: the usual system directories, nothing
# of the worker's own PATH (virtualenvs, pyenv shims), so a task sees the same tools whoever
# started the worker.
SAFE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# The most of a command's stdout (and of its stderr) a provider keeps by default.
OUTPUT_LIMIT = 1024 * 1024

IsolationLevel = Literal["strict", "weak"]


class SandboxError(Exception):
    """The sandbox or its provider failed; not the agent's fault."""


class SandboxFileNotFound(SandboxError, FileNotFoundError):
    """`get_file` of a path that does not exist in the sandbox (catchable as either)."""


class SandboxPathUnavailable(SandboxError):
    """`get_file` of a path this sandbox has no place of its own for (a weak sandbox without a
    private /tmp shares the host's): reading it could return another item's file. No retry
    changes that; the message says how to configure it."""


class IsolationUnavailable(SandboxError):
    """The host cannot give the isolation asked for (strict without bubblewrap, say). The
    message says what is missing and how to fix it."""


class ServiceSpec(msgspec.Struct, frozen=True, kw_only=True):
    """A target of the task's environment (one compose service): its own principal.

    Its files (`context`, a folder of the task bundle) are copied into a view of its own that
    the agent never sees, so a secret kept there can be stolen only through the service.
    """

    name: str  # the host name the agent reaches it by, on the item's network
    context: str | None = None  # host folder copied into the service's view (its workdir)
    command: str | None = None  # local provider: shell command run in that copy
    image: str | None = None  # docker provider: the image to run
    ports: tuple[int, ...] = ()  # the service is ready when every one accepts a connection
    environment: Mapping[str, str] = {}


class ServiceEndpoint(msgspec.Struct, frozen=True, kw_only=True):
    """Where the agent reaches a service: `{{NAME_host}}`, `{{NAME_port}}`, `{{NAME_url}}`."""

    name: str
    host: str
    port: int | None

    @property
    def url(self) -> str:
        return f"http://{self.host}" + ("" if self.port is None else f":{self.port}")


class EgressPolicy(msgspec.Struct, frozen=True):
    """Destinations outside the item the sandboxes may reach: FQDN, `*.suffix`, IP or CIDR
    (`*` alone: anywhere). Never the host itself. An empty tuple allows nothing (and still
    differs from no policy, which means the item's own network only)."""

    allow: tuple[str, ...] = ()


class SandboxSpec(msgspec.Struct, frozen=True, kw_only=True):
    item_id: str
    worker_id: str
    # None: the item's own network only (the agent reaches its services, nothing else).
    egress: EgressPolicy | None = None
    services: tuple[ServiceSpec, ...] = ()
    image: str | None = None  # docker provider: the agent runtime's image
    cpu_seconds: int = 600
    memory_bytes: int = 2 * 1024**3
    file_size_bytes: int = 256 * 1024**2
    disk_bytes: int = 1024**3  # the workspace and /tmp together
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

    @property
    def isolation(self) -> Mapping[str, object]:
        """What this sandbox really runs under, recorded with the item: at least `level`
        (strict | weak) and `provider`, plus each enforced feature by name."""
        ...

    def endpoints(self) -> Mapping[str, ServiceEndpoint]:
        """The task's services as the agent reaches them, by service name."""
        ...

    async def run(
        self,
        command: str,
        *,
        timeout_sec: float,
        env: Mapping[str, str] | None = None,
        stdin: str | None = None,
    ) -> ExecResult:
        """Run `command` with bash in the workspace; kill its whole process tree at the
        deadline (and report timed_out)."""
        ...

    async def put_file(self, relative_path: str, content: bytes, mode: int = 0o644) -> None:
        """Write a file into the workspace (a relative path, refused if it escapes)."""
        ...

    async def put_tree(self, source: Path, exclude: frozenset[str] = frozenset()) -> None:
        """Copy a folder's files (but the paths in `exclude`) into the workspace."""
        ...

    async def get_file(self, path: str) -> bytes:
        """Read a file of the agent's view: relative to the workspace, or absolute under
        `WORKSPACE` or `/tmp`. Read by the worker itself, never through the agent's
        processes, and never following a link out of the sandbox."""
        ...

    async def kill_all(self) -> None:
        """Kill every process the agent's side started, however it detached (end of the
        agent's turn, cancellation). The task's services keep running."""
        ...

    async def open_checker(self) -> Sandbox:
        """A fresh principal for a script checker: sees the agent's workspace read-only at
        `WORKSPACE`, has its own writable `/tmp`, shares the item's network. Destroyed with
        this sandbox."""
        ...

    async def run_in_service(self, service: str, command: str, *, timeout_sec: float) -> ExecResult:
        """Run a command inside a service's view, as that service (`where: environment`
        checkers)."""
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

    def unavailable_reason(self) -> str | None:
        """Why this provider cannot run items here as configured, with the fix (one line);
        None when it can. A worker that gets a reason claims nothing."""
        ...

    async def provision(self, spec: SandboxSpec) -> Sandbox: ...

    async def reap_orphans(self, live_worker_ids: frozenset[str]) -> list[str]:
        """Destroy sandboxes whose worker is gone; return their ids."""
        ...
