"""The `docker` sandbox provider: each item gets an internal network, its services as
containers on it, and an agent container, all hardened (see `hardening`).

The daemon is never touched at construction (the registry builds providers at import): the
client is made on first use, and `daemon_answers` is the one cheap probe the registry calls.

Network. One bridge network per item, `internal=True` (no route out of it) and with
`com.docker.network.bridge.inhibit_ipv4` so the bridge has no address on the host: an internal
network alone still lets a container reach every host service listening on 0.0.0.0 through
the bridge's gateway address (traffic to the host goes through INPUT, not the FORWARD rules
docker adds for internal networks). Services join it under their names as network aliases.
Egress is not offered: an internal network cannot route out, so a spec asking for any
destination is refused (an empty allow-list, which asks for nothing, is accepted).

Storage. The workspace and each container's /tmp are `local` volumes backed by tmpfs: size
limited (the item's `disk_bytes`, three quarters to the workspace), owned by the principal that
writes them without a root helper, and shared by mount between the agent and its checkers.
They live while a container mounts them, which is why `kill_all` and `keep` never stop the
agent container, and why a kept workspace does not survive a daemon restart.

Images. The runtime image (`spec.image` or `default_image`) needs bash and `sleep` (PID 1 and
every command run through bash; the port probe uses bash's /dev/tcp). A service image runs as
uid 1001 on a read-only root with a private /tmp: an image that must write elsewhere or run as
root does not start, by design.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import structlog

from infrastructure.sandbox.docker import archive
from infrastructure.sandbox.docker.cleanup import remove_sandbox, sandboxes_by_worker
from infrastructure.sandbox.docker.execution import call
from infrastructure.sandbox.docker.hardening import (
    AGENT_USER,
    CHECKER_USER,
    KEEPALIVE,
    SERVICE_MEMORY_BYTES,
    SERVICE_PIDS,
    SERVICE_USER,
    SERVICE_WORKDIR,
    TMP_BYTES,
    Role,
    host_config_args,
    labels,
    safe_name,
    tmpfs_volume_options,
    valid_service_name,
)
from infrastructure.sandbox.docker.sandbox import DockerSandbox
from infrastructure.sandbox.protocol import (
    OUTPUT_LIMIT,
    SAFE_PATH,
    WORKSPACE,
    SandboxError,
    SandboxSpec,
    ServiceSpec,
)

log = structlog.get_logger(__name__)

# The image `scripts/docker_test_image.sh` builds; a deployment configures its own.
DEFAULT_IMAGE = "assay-runtime:test"
SERVICE_START_SEC = 30.0
_START_ATTEMPTS = 3
_READY_MARKER = ".assay-ready"
# A context service's PID 1 waits for its files (put after the container starts: a tmpfs
# volume holds data only while mounted), then becomes the service's command.
_SERVICE_BOOT = (
    f"until [ -e {_READY_MARKER} ]; do sleep 0.02; done; rm -f {_READY_MARKER}; "
    'exec bash -c "$ASSAY_SERVICE_COMMAND"'
)
# Run in the agent container: every `host port` pair on stdin must accept a connection.
_PORT_PROBE = r"""
while read -r host port; do
    until (exec 3<>"/dev/tcp/$host/$port") 2>/dev/null; do sleep 0.05; done
done
"""


def _client_args(base_url: str | None, timeout: float) -> dict[str, Any]:
    import docker  # type: ignore[import-untyped]

    args: dict[str, Any] = dict(docker.utils.kwargs_from_env())
    if base_url is not None:
        args["base_url"] = base_url
    # A fixed API version: "auto" would ask the daemon at construction. 1.41 is Engine 20.10.
    args.update(version="1.41", timeout=timeout)
    return args


@functools.cache
def daemon_answers(base_url: str | None = None, timeout: float = 2.0) -> bool:
    """Whether a Docker daemon answers a ping (cached: asked once per process)."""
    import docker

    try:
        client = docker.APIClient(**_client_args(base_url, timeout))
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:
        return False


def _transient(exc: SandboxError) -> bool:
    """A start failure seen on a loaded host (dockerd 20.10, kernel 6.18): runc briefly finds
    an empty root file system (`exec: "bash": executable file not found`, `failed to stat
    .../merged/...`). The same container starts on a second try; other failures are final."""
    message = str(exc)
    return "executable file not found" in message or (
        "no such file or directory" in message and ("merged" in message or "runc" in message)
    )


def _context_folder(context: str) -> Path:
    source = Path(context)
    if not source.is_dir():
        raise SandboxError(f"service context {context} is not a directory")
    return source


class DockerSandboxProvider:
    """Sandboxes as hardened containers on a per-item internal network (module docstring)."""

    name: str = "docker"

    def __init__(
        self,
        *,
        default_image: str = DEFAULT_IMAGE,
        scope: str = "default",
        base_url: str | None = None,
        output_limit: int = OUTPUT_LIMIT,
        cpus: float = 1.0,
        service_start_sec: float = SERVICE_START_SEC,
        api_timeout_sec: float = 60.0,
    ) -> None:
        self.default_image = default_image
        self.scope = scope
        self.base_url = base_url
        self.output_limit = output_limit
        self.nano_cpus = int(cpus * 1e9)
        self.service_start_sec = service_start_sec
        self._api_timeout = api_timeout_sec
        self._api: Any = None
        self._seccomp: bool | None = None

    async def _runs_from_context(self, service: ServiceSpec) -> bool:
        """Whether a service that names an image this daemon lacks runs from its build
        context instead: no registry may be reachable, and a task that gives the local
        command (`x-assay.command`) need not have its image built to be run."""
        if service.context is None or service.command is None or service.image is None:
            return False
        try:
            await asyncio.to_thread(self.api.inspect_image, service.image)
            return False
        except Exception:
            log.info("docker.service_from_context", service=service.name, image=service.image)
            return True

    @property
    def api(self) -> Any:
        """The low-level docker-py client, made on first use (no daemon contact before)."""
        if self._api is None:
            import docker

            self._api = docker.APIClient(**_client_args(self.base_url, self._api_timeout))
        return self._api

    def _security_options(self) -> list[str]:
        return [str(option) for option in self.api.info().get("SecurityOptions") or []]

    def unavailable_reason(self) -> str | None:
        """The provider is registered only where a daemon answered; one that stopped since
        is a reason to claim nothing rather than fail every item."""
        if daemon_answers(self.base_url):
            return None
        return "the Docker daemon does not answer: start dockerd (scripts/docker_up.sh)"

    def isolation_report(self) -> Mapping[str, bool]:
        try:
            options = self._security_options()
        except Exception:
            return {"daemon": False}
        return {
            "daemon": True,
            "seccomp": any("seccomp" in option for option in options),
            "apparmor": any("apparmor" in option for option in options),
            "userns_remap": any("userns" in option for option in options),
            "capabilities_dropped": True,
            "no_new_privileges": True,
            "non_root": True,
            "internal_network": True,
            "host_unreachable": True,
            "read_only_rootfs": True,
            "memory_limit": True,
            "pids_limit": True,
            "cpu_limit": True,
            "egress": False,
        }

    # -- provisioning ---------------------------------------------------------------------

    def _validate(self, spec: SandboxSpec) -> None:
        if spec.egress is not None and spec.egress.allow:
            raise SandboxError(
                "the docker provider gives no egress (the item network is internal); "
                f"this item asks for {', '.join(spec.egress.allow)}: use the local provider"
            )
        names = [service.name for service in spec.services]
        if len(set(names)) != len(names):
            raise SandboxError(f"service names repeat: {names}")
        for service in spec.services:
            if not valid_service_name(service.name):
                raise SandboxError(f"service name {service.name!r} is not a DNS label")
            if service.image is None and (service.context is None or service.command is None):
                raise SandboxError(
                    f"service {service.name!r} needs an image, or a context and a command"
                )

    async def provision(self, spec: SandboxSpec) -> DockerSandbox:
        self._validate(spec)
        api = self.api
        if self._seccomp is None:
            options = await call("docker daemon does not answer", self._security_options)
            self._seccomp = any("seccomp" in option for option in options)
        sandbox_id = f"assay-{safe_name(spec.item_id)}-{secrets.token_hex(4)}"
        try:
            return await self._provision(api, spec, sandbox_id)
        except BaseException:
            # Nothing half-made is left behind, even when cancelled mid-way.
            await asyncio.shield(remove_sandbox(api, sandbox_id))
            raise

    async def _provision(self, api: Any, spec: SandboxSpec, sandbox_id: str) -> DockerSandbox:
        what = f"cannot provision docker sandbox {sandbox_id}"
        tag = labels(self.scope, spec.item_id, spec.worker_id, sandbox_id)
        await call(
            what,
            api.create_network,
            sandbox_id,
            driver="bridge",
            internal=True,
            labels=tag,
            options={"com.docker.network.bridge.inhibit_ipv4": "true"},
        )
        workspace = f"{sandbox_id}-workspace"
        # The workspace and /tmp share the item's disk budget, the workspace getting most.
        await self._volume(workspace, spec.disk_bytes * 3 // 4, AGENT_USER, tag)
        services = await asyncio.gather(
            *(self._start_service(spec, sandbox_id, service) for service in spec.services)
        )
        container = await self._start_runtime(
            spec, sandbox_id, "agent", f"{sandbox_id}-agent", workspace, read_only=False
        )
        sandbox = DockerSandbox(
            self,
            spec,
            sandbox_id=sandbox_id,
            container=container,
            network=sandbox_id,
            workspace_volume=workspace,
            tmp_volume=f"{sandbox_id}-agent-tmp",
            services=dict(zip([s.name for s in spec.services], services, strict=True)),
            service_specs=spec.services,
            seccomp=bool(self._seccomp),
        )
        await self._wait_for_ports(sandbox, spec.services)
        return sandbox

    async def _volume(self, name: str, size: int, user: str, tag: Mapping[str, str]) -> None:
        mode = "1777" if name.endswith("-tmp") else "0755"
        await call(
            f"cannot create volume {name}",
            self.api.create_volume,
            name,
            driver="local",
            driver_opts=tmpfs_volume_options(max(size, 1024**2), user, mode),
            labels=dict(tag),
        )

    async def _create_and_start(
        self,
        name: str,
        image: str,
        command: list[str] | None,
        *,
        spec: SandboxSpec,
        sandbox_id: str,
        role: Role,
        user: str,
        workdir: str | None,
        environment: Mapping[str, str],
        binds: Mapping[str, Mapping[str, str]],
        memory_bytes: int,
        pids: int,
        alias: str | None = None,
        init: bool = False,
        groups: tuple[str, ...] = (),
    ) -> str:
        api = self.api
        host_config = api.create_host_config(
            **host_config_args(
                network=sandbox_id,
                memory_bytes=memory_bytes,
                pids=pids,
                nano_cpus=self.nano_cpus,
                file_size_bytes=spec.file_size_bytes,
                cpu_seconds=spec.cpu_seconds,
                binds=binds,
                init=init,
                groups=groups,
            ),
            # Services of an image get a private, size-limited /tmp (the rest is read-only).
            tmpfs=None
            if "/tmp" in {b["bind"] for b in binds.values()}
            else {"/tmp": f"size={TMP_BYTES},mode=1777,nosuid,nodev"},
        )
        endpoint = api.create_endpoint_config(aliases=[alias] if alias else None)
        what = f"cannot start {role} container {name}"
        for attempt in range(1, _START_ATTEMPTS + 1):
            try:
                created = await call(
                    what,
                    api.create_container,
                    image,
                    command,
                    name=name,
                    user=user,
                    working_dir=workdir,
                    environment=dict(environment),
                    labels=labels(self.scope, spec.item_id, spec.worker_id, sandbox_id, role),
                    host_config=host_config,
                    networking_config=api.create_networking_config({sandbox_id: endpoint}),
                    volumes=[bind["bind"] for bind in binds.values()],
                )
                container: str = created["Id"]
                await call(what, api.start, container)
                return container
            except SandboxError as exc:
                if attempt == _START_ATTEMPTS or not _transient(exc):
                    raise
                log.warning("docker.start_retry", container=name, attempt=attempt, error=str(exc))
                with contextlib.suppress(SandboxError):
                    await call(what, api.remove_container, name, force=True, v=True)
                await asyncio.sleep(0.1 * attempt)
        raise AssertionError("unreachable")

    async def _start_runtime(
        self,
        spec: SandboxSpec,
        sandbox_id: str,
        role: Role,
        name: str,
        workspace: str,
        *,
        read_only: bool,
    ) -> str:
        """An agent or checker container: the runtime image, PID 1 the keep-alive, the
        workspace volume at WORKSPACE (read-only for a checker), its own /tmp volume."""
        user = AGENT_USER if role == "agent" else CHECKER_USER
        tmp = f"{name}-tmp"
        tag = labels(self.scope, spec.item_id, spec.worker_id, sandbox_id, role)
        await self._volume(tmp, spec.disk_bytes // 4, user, tag)
        return await self._create_and_start(
            name,
            spec.image or self.default_image,
            KEEPALIVE,
            spec=spec,
            sandbox_id=sandbox_id,
            role=role,
            user=user,
            workdir=WORKSPACE,
            environment={"PATH": SAFE_PATH, "HOME": WORKSPACE, "LANG": "C.UTF-8"},
            binds={
                workspace: {"bind": WORKSPACE, "mode": "ro" if read_only else "rw"},
                tmp: {"bind": "/tmp", "mode": "rw"},
            },
            memory_bytes=spec.memory_bytes,
            pids=spec.max_processes,
            # A checker is in the agent's group: it reads what the agent left group-readable
            # (the default umask), never writes it (the mount is read-only).
            groups=(AGENT_USER.split(":")[1],) if role == "checker" else (),
        )

    async def start_checker(self, sandbox: DockerSandbox) -> DockerSandbox:
        spec = sandbox.spec
        name = f"{sandbox.id}-checker-{secrets.token_hex(3)}"
        container = await self._start_runtime(
            spec, sandbox.id, "checker", name, sandbox.workspace_volume, read_only=True
        )
        return DockerSandbox(
            self,
            spec,
            sandbox_id=sandbox.id,
            container=container,
            network=sandbox.network,
            workspace_volume=sandbox.workspace_volume,
            tmp_volume=f"{name}-tmp",
            role="checker",
            service_specs=tuple(spec.services),
            seccomp=bool(self._seccomp),
            parent=sandbox,
        )

    async def _start_service(self, spec: SandboxSpec, sandbox_id: str, service: ServiceSpec) -> str:
        name = f"{sandbox_id}-svc-{service.name}"
        common: dict[str, Any] = {
            "spec": spec,
            "sandbox_id": sandbox_id,
            "role": "service",
            "user": SERVICE_USER,
            "memory_bytes": SERVICE_MEMORY_BYTES,
            "pids": SERVICE_PIDS,
            "alias": service.name,
            "init": True,  # the service's command is not written to reap orphans
        }
        if service.image is not None and not await self._runs_from_context(service):
            # The image's own command, or `command` through the image's sh (compose's
            # `command:`); its files are the image's, `context` is not copied.
            command = None if service.command is None else ["sh", "-c", service.command]
            return await self._create_and_start(
                name,
                service.image,
                command,
                workdir=None,
                environment=service.environment,
                binds={},
                **common,
            )
        assert service.context is not None and service.command is not None
        volume = f"{name}-files"
        tag = labels(self.scope, spec.item_id, spec.worker_id, sandbox_id, "service")
        await self._volume(volume, spec.disk_bytes // 4, SERVICE_USER, tag)
        environment = {
            "PATH": SAFE_PATH,
            "HOME": SERVICE_WORKDIR,
            "LANG": "C.UTF-8",
            **service.environment,
            "ASSAY_SERVICE_COMMAND": service.command,
        }
        container = await self._create_and_start(
            name,
            spec.image or self.default_image,
            ["bash", "-c", _SERVICE_BOOT],
            workdir=SERVICE_WORKDIR,
            environment=environment,
            binds={volume: {"bind": SERVICE_WORKDIR, "mode": "rw"}},
            **common,
        )
        uid, gid = (int(part) for part in SERVICE_USER.split(":"))
        what = f"cannot copy the files of service {service.name!r}"
        try:
            data = await asyncio.to_thread(
                archive.tree_tar, _context_folder(service.context), (), uid, gid, [_READY_MARKER]
            )
        except OSError as exc:
            raise SandboxError(f"{what}: {exc}") from exc
        await call(what, self.api.put_archive, container, SERVICE_WORKDIR, data)
        return container

    async def _wait_for_ports(
        self, sandbox: DockerSandbox, services: tuple[ServiceSpec, ...]
    ) -> None:
        """Until every service port accepts a connection, tried from the agent's container
        (what the agent will reach, through the item network's DNS)."""
        pairs = [f"{service.name} {port}" for service in services for port in service.ports]
        if not pairs:
            return
        result = await sandbox.run(
            _PORT_PROBE, timeout_sec=self.service_start_sec, stdin="\n".join(pairs) + "\n"
        )
        if result.exit_code != 0:
            raise SandboxError(
                f"services of {sandbox.id} not ready within {self.service_start_sec:g}s: "
                + ", ".join(pairs)
                + ("" if not result.stderr else f" ({result.stderr.strip()[-500:]})")
            )

    # -- orphans --------------------------------------------------------------------------

    async def reap_orphans(self, live_worker_ids: frozenset[str]) -> list[str]:
        """Remove every sandbox (by its labels) whose worker is not live, but kept ones."""
        found = await sandboxes_by_worker(self.api, self.scope)
        reaped: list[str] = []
        for sandbox_id, (worker, kept) in sorted(found.items()):
            if worker in live_worker_ids or kept:
                continue
            await remove_sandbox(self.api, sandbox_id)
            reaped.append(sandbox_id)
        return reaped
