"""One item's docker sandbox: the agent's container (or a checker's), its item network, the
task's service containers, and the workspace volume they share.

Kill model (`kill_all`): the daemon sends SIGUSR1 to the container's PID 1, which answers with
`kill -KILL -1`, killing every other process of the container at once, however it detached,
without forking (so a fork bomb at the pids limit cannot stop it). The container, its
workspace and /tmp stay; services are other containers and keep running. Chosen over
`docker kill` + start because the workspace and /tmp are tmpfs volumes that live only while a
container mounts them, and a restart would also lose what the agent left in /tmp.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from infrastructure.sandbox.docker import archive
from infrastructure.sandbox.docker.cleanup import remove_container, remove_sandbox, remove_volume
from infrastructure.sandbox.docker.execution import call, execute
from infrastructure.sandbox.docker.hardening import (
    LABEL_KEPT,
    SERVICE_USER,
    USERS,
    Role,
    labels,
)
from infrastructure.sandbox.protocol import (
    SAFE_PATH,
    WORKSPACE,
    ExecResult,
    SandboxError,
    SandboxFileNotFound,
    SandboxSpec,
    ServiceEndpoint,
    ServiceSpec,
)

if TYPE_CHECKING:
    from infrastructure.sandbox.docker.provider import DockerSandboxProvider

# Go's os.FileMode bits in the daemon's path stat.
_MODE_DIR = 1 << 31
_MODE_SYMLINK = 1 << 27
KILL_WAIT_SEC = 5.0

# Waits until no process but PID 1, its `sleep` (child of PID 1 in PID 1's process group: no
# process the agent starts can be both), this script and its own children is left
# (zombies count as gone); exits 1 if that takes more than ~5 s.
_WAIT_QUIET = r"""
for ((i = 0; i < 250; i++)); do
    busy=0
    for dir in /proc/[0-9]*; do
        pid=${dir#/proc/}
        [[ $pid == 1 || $pid == "$$" ]] && continue
        stat=
        read -r stat 2>/dev/null <"$dir/stat" || continue
        fields=(${stat##*) })
        [[ ${fields[0]} == Z || ${fields[1]} == "$$" ]] && continue
        comm=${stat#*(}; comm=${comm%)*}
        [[ ${fields[1]} == 1 && ${fields[2]} == 1 && $comm == sleep ]] && continue  # PID 1's own
        busy=1
        break
    done
    ((busy)) || exit 0
    sleep 0.02
done
exit 1
"""


class DockerSandbox:
    def __init__(
        self,
        provider: DockerSandboxProvider,
        spec: SandboxSpec,
        *,
        sandbox_id: str,
        container: str,
        network: str,
        workspace_volume: str,
        tmp_volume: str,
        role: Role = "agent",
        services: Mapping[str, str] | None = None,
        service_specs: tuple[ServiceSpec, ...] = (),
        seccomp: bool = False,
        parent: DockerSandbox | None = None,
    ) -> None:
        self._provider = provider
        self.spec = spec
        self._id = sandbox_id
        self.container = container
        self.network = network
        self.workspace_volume = workspace_volume
        self.tmp_volume = tmp_volume
        self.role = role
        self.user = USERS[role]
        self.services = dict(services or {})  # service name -> container id
        self._service_specs = {service.name: service for service in service_specs}
        self._seccomp = seccomp
        self._parent = parent
        self._checkers: list[DockerSandbox] = []
        self._destroyed = False

    @property
    def _api(self) -> Any:
        return self._provider.api

    @property
    def id(self) -> str:
        return self._id

    @property
    def location(self) -> str:
        return f"docker://{self.container}"

    @property
    def isolation(self) -> Mapping[str, object]:
        return {
            "level": "strict",
            "provider": "docker",
            "role": self.role,
            "privileged": False,
            "capabilities_dropped": True,
            "no_new_privileges": True,
            "non_root": True,
            "user": self.user,
            "seccomp": self._seccomp,
            "internal_network": True,
            "host_unreachable": True,  # the item bridge has no IPv4 address on the host
            "egress": False,
            "read_only_rootfs": True,
            "private_tmp": True,
            "memory_limit": True,
            "pids_limit": True,
            "cpu_limit": True,
            "file_size_limit": True,
            "disk_limit": True,  # the workspace and /tmp are size-limited tmpfs volumes
            "pid_namespace": True,
            "docker_socket": False,
            "host_mounts": False,
        }

    def endpoints(self) -> Mapping[str, ServiceEndpoint]:
        return {
            name: ServiceEndpoint(
                name=name, host=name, port=service.ports[0] if service.ports else None
            )
            for name, service in self._service_specs.items()
        }

    # -- commands -----------------------------------------------------------------------

    def _environment(self, env: Mapping[str, str] | None) -> dict[str, str]:
        base = {"PATH": SAFE_PATH, "HOME": WORKSPACE, "LANG": "C.UTF-8"}
        return {**base, **self.spec.env, **(env or {})}

    def _check_usable(self) -> None:
        if self._destroyed:
            raise SandboxError(f"sandbox {self.id} was destroyed")

    async def run(
        self,
        command: str,
        *,
        timeout_sec: float,
        env: Mapping[str, str] | None = None,
        stdin: str | None = None,
    ) -> ExecResult:
        self._check_usable()
        return await execute(
            self._api,
            self.container,
            command,
            user=self.user,
            env=self._environment(env),
            timeout_sec=timeout_sec,
            stdin=stdin,
            output_limit=self._provider.output_limit,
            # At the pids limit no exec, not even the tree killer, can start: the deadline
            # still holds, so every process of this container dies instead.
            fallback_kill=self.kill_all,
        )

    async def run_in_service(self, service: str, command: str, *, timeout_sec: float) -> ExecResult:
        self._check_usable()
        root = self._parent or self
        if service not in root.services:
            raise SandboxError(f"no service {service!r} in sandbox {self.id}")
        return await execute(
            self._api,
            root.services[service],
            command,
            user=SERVICE_USER,
            env={"PATH": SAFE_PATH, "LANG": "C.UTF-8"},
            timeout_sec=timeout_sec,
            stdin=None,
            output_limit=self._provider.output_limit,
            workdir="",  # the service's own working directory
        )

    # -- files --------------------------------------------------------------------------

    async def put_file(self, relative_path: str, content: bytes, mode: int = 0o644) -> None:
        self._check_writable()
        relative = archive.workspace_relative(relative_path)
        uid, gid = (int(part) for part in self.user.split(":"))
        data = archive.file_tar(relative, content, mode, uid, gid)
        await self._put(data, f"cannot write {relative_path!r} in sandbox {self.id}")

    async def put_tree(self, source: Path, exclude: frozenset[str] = frozenset()) -> None:
        self._check_writable()
        source = Path(source)
        if not source.is_dir():
            raise SandboxError(f"cannot copy {source}: not a directory")
        uid, gid = (int(part) for part in self.user.split(":"))
        try:
            data = await asyncio.to_thread(archive.tree_tar, source, exclude, uid, gid)
        except OSError as exc:
            raise SandboxError(f"cannot copy {source} into sandbox {self.id}: {exc}") from exc
        await self._put(data, f"cannot copy {source} into sandbox {self.id}")

    def _check_writable(self) -> None:
        self._check_usable()
        if self.role == "checker":
            raise SandboxError("a checker sees the agent's workspace read-only")

    async def _put(self, data: bytes, what: str) -> None:
        if not await call(what, self._api.put_archive, self.container, WORKSPACE, data):
            raise SandboxError(what)

    def _stat(self, path: str) -> dict[str, Any] | None:
        """The daemon's stat of a container path (last component not followed), or None."""
        api = self._api
        response = api.head(
            api._url("/containers/{0}/archive", self.container), params={"path": path}
        )
        if response.status_code == 404:
            return None
        api._raise_for_status(response)
        header = response.headers.get("X-Docker-Container-Path-Stat", "")
        stat: dict[str, Any] = json.loads(base64.b64decode(header))
        return stat

    async def get_file(self, path: str) -> bytes:
        self._check_usable()
        root, parts = archive.readable_path(path)
        what = f"cannot read {path!r} in sandbox {self.id}"
        # Every folder on the way must be a real folder: a link the agent planted there would
        # make the daemon read somewhere else.
        for depth in range(1, len(parts)):
            folder = "/".join([root, *parts[:depth]])
            stat = await call(what, self._stat, folder)
            if stat is None:
                raise SandboxFileNotFound(f"{path!r} not found in sandbox {self.id}")
            if stat["mode"] & _MODE_SYMLINK or not stat["mode"] & _MODE_DIR:
                raise SandboxError(f"{path!r} goes through {folder}, which is not a folder")
        full = "/".join([root, *parts])
        try:
            stream, _ = await asyncio.to_thread(self._api.get_archive, self.container, full)
            data = await asyncio.to_thread(b"".join, stream)
        except Exception as exc:
            import docker.errors  # type: ignore[import-untyped]

            if isinstance(exc, docker.errors.NotFound):
                raise SandboxFileNotFound(f"{path!r} not found in sandbox {self.id}") from exc
            raise SandboxError(f"{what}: {exc}") from exc
        return archive.single_file(data, path)

    # -- ending -------------------------------------------------------------------------

    async def kill_all(self) -> None:
        """Kill every process of this container but PID 1 (see the module docstring); returns
        once they are gone, or raises SandboxError after ~5 s of waiting."""
        if self._destroyed:
            return
        what = f"cannot kill the processes of sandbox {self.id}"
        for _ in range(3):
            await call(what, self._api.kill, self.container, "SIGUSR1")
            # Freed pids now: the wait below is an exec, which needs one.
            result = await execute(
                self._api,
                self.container,
                _WAIT_QUIET,
                user=self.user,
                env={"PATH": SAFE_PATH},
                timeout_sec=KILL_WAIT_SEC + 2,
                stdin=None,
                output_limit=4096,
                workdir="/",
            )
            if result.exit_code == 0:
                return
        raise SandboxError(f"{what}: still running after SIGKILL")

    async def open_checker(self) -> DockerSandbox:
        self._check_usable()
        root = self._parent or self
        checker = await self._provider.start_checker(root)
        root._checkers.append(checker)
        return checker

    async def keep(self) -> None:
        """Stop the agent's and checkers' processes and the services, keep the workspace (it
        lives while the agent container, now only its PID 1, runs) and mark the sandbox kept:
        a volume labelled `assay.kept=true` (labels of existing objects cannot change), which
        `reap_orphans` honours. An operator reads it with `docker exec`/`docker cp`."""
        root = self._parent or self
        await root.kill_all()
        for checker in root._checkers:
            await checker.kill_all()
        what = f"cannot keep sandbox {root.id}"
        for container in root.services.values():
            await call(what, self._api.stop, container, timeout=1)
        spec = root.spec
        await call(
            what,
            self._api.create_volume,
            f"{root.id}-kept",
            labels={
                **labels(self._provider.scope, spec.item_id, spec.worker_id, root.id),
                LABEL_KEPT: "true",
            },
        )

    async def destroy(self) -> None:
        if self._destroyed:
            return
        self._destroyed = True
        if self._parent is not None:
            # A checker: only its own container and /tmp volume (gone already if the sandbox
            # was destroyed first: that is not an error).
            what = f"cannot remove checker {self.container}"
            await call(what, remove_container, self._api, self.container)
            await call(what, remove_volume, self._api, self.tmp_volume)
            return
        for checker in self._checkers:
            checker._destroyed = True
        await remove_sandbox(self._api, self.id)
