"""The strict local sandbox: every principal of an item in a bubblewrap view of its own.

An item gets a folder `<root>/<id>/` (0711: traversable, not listable) holding one folder per
principal, each a size-bounded tmpfs owned by that principal's uid with `workspace/` and `tmp/`
inside, plus one item network (`infrastructure.sandbox.network.ItemNetwork`: a namespace with
deny-all egress and the allow-list) that all its principals join. The agent's view is started
on first use and ended by `kill_all` (the end of its turn): killing its PID 1 kills everything
it started, however it detached; the next `run` starts a fresh view over the same workspace.
Services are started at provision, each as its own uid from a copy of its build context, and
are ready when their ports accept. A checker is a fresh view as yet another uid that sees the
agent's workspace read-only.

The worker reads files the agent left (`get_file`) itself, following no link, once the
agent's processes are gone; it places files through the view's own server, as the view's uid,
so a link the agent planted can only lead where the agent could write anyway.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

import msgspec

from infrastructure.sandbox.local.cgroups import Cgroup
from infrastructure.sandbox.local.constants import META_SUFFIX, SAFE_PATH
from infrastructure.sandbox.local.exec_client import ExecServer
from infrastructure.sandbox.local.files import (
    SandboxFileNotFound,
    read_beneath,
    relative_parts,
    tree_files,
)
from infrastructure.sandbox.local.metadata import (
    SandboxMeta,
    remove_sandbox_files,
    safe_name,
    write_meta,
)
from infrastructure.sandbox.local.mounts import mounts_below, unmount
from infrastructure.sandbox.local.programs import compiled
from infrastructure.sandbox.local.view import VIEW_PYTHON, Principal, ViewFds, bwrap_argv
from infrastructure.sandbox.network import ItemNetwork
from infrastructure.sandbox.protocol import (
    WORKSPACE,
    ExecResult,
    SandboxError,
    SandboxSpec,
    ServiceEndpoint,
    ServiceSpec,
)

if TYPE_CHECKING:
    from infrastructure.sandbox.local.provider import LocalSandboxProvider

# The most a worker reads back of one file the agent wrote (a flag, a result).
GET_FILE_LIMIT = 16 * 1024 * 1024
SERVICE_READY_SEC = 30.0
# A CPU share per view: a busy loop in one item cannot starve the worker or other items.
VIEW_CPUS = 1.0


class _View:
    """A principal and, while it runs, its exec server and cgroup."""

    def __init__(self, principal: Principal, *, read_only_extra: tuple[tuple[str, str], ...] = ()):
        self.principal = principal
        self.extra = read_only_extra
        self.server: ExecServer | None = None
        self.cgroup: Cgroup | None = None
        self.lock = asyncio.Lock()


class StrictSandbox:
    def __init__(
        self,
        provider: LocalSandboxProvider,
        spec: SandboxSpec,
        meta: SandboxMeta,
        meta_path: Path,
        *,
        network: ItemNetwork | None,
        agent: Principal,
        checker_of: StrictSandbox | None = None,
    ) -> None:
        self._provider = provider
        self.spec = spec
        self._meta = meta
        self._meta_path = meta_path
        self._dir = Path(meta.path)
        self._network = network
        self._netns = Path(network.netns_path) if network is not None else None
        self._agent = _View(agent)
        self._services: dict[str, _View] = {}
        self._endpoints: dict[str, ServiceEndpoint] = {}
        self._checkers: list[StrictSandbox] = []
        self._checker_of = checker_of
        self._destroyed = False
        self._adopted = False

    # -- identity ---------------------------------------------------------------------------

    @property
    def id(self) -> str:
        return self._meta.id

    @property
    def location(self) -> str:
        return str(self._dir)

    @property
    def workspace(self) -> Path:
        """The agent's workspace on the host."""
        return Path(self._agent.principal.workspace)

    @property
    def isolation(self) -> Mapping[str, object]:
        return self._provider.strict_isolation(self.spec)

    def endpoints(self) -> Mapping[str, ServiceEndpoint]:
        return dict(self._endpoints)

    # -- pre-started (warm_pool.py) ---------------------------------------------------------

    async def start_agent_view(self) -> None:
        """Start the agent's view now rather than at its first command."""
        await self._server(self._agent)

    @property
    def ready(self) -> bool:
        """Not destroyed and its agent view still running (a pre-started sandbox to hand out)."""
        server = self._agent.server
        return not self._destroyed and server is not None and server.alive

    async def adopt(self, spec: SandboxSpec) -> None:
        """Become `spec`'s item's sandbox: a pre-started one is handed out once, to one item,
        whose spec (environment) its commands then use. It takes the id and folder name a
        fresh one would have (`<item>--<worker>--<token>`), so operators and orphan reaping
        find it by the item; the running view keeps its binds (they follow the folder)."""
        if self._adopted:
            raise SandboxError(f"sandbox {self.id} was already handed out")
        self._adopted = True
        self.spec = spec
        token = self._meta.id.rsplit("--", 1)[-1]
        new_id = "--".join((safe_name(spec.item_id), safe_name(spec.worker_id), token))
        old_dir, old_meta_path = self._dir, self._meta_path
        new_dir = old_dir.with_name(new_id)
        new_meta_path = old_meta_path.with_name(new_id + META_SUFFIX)

        def move() -> None:
            # Metadata under the new name first: a crash in between leaves both findable.
            meta = msgspec.structs.replace(
                self._meta, id=new_id, item_id=spec.item_id, path=str(new_dir)
            )
            write_meta(new_meta_path, meta)
            old_dir.rename(new_dir)
            old_meta_path.unlink(missing_ok=True)
            self._meta, self._meta_path, self._dir = meta, new_meta_path, new_dir
            principal = self._agent.principal
            self._agent.principal = msgspec.structs.replace(
                principal,
                workspace=str(new_dir / principal.name / "workspace"),
                tmp=str(new_dir / principal.name / "tmp"),
            )

        try:
            await asyncio.to_thread(move)
        except OSError as exc:
            raise SandboxError(f"cannot hand out sandbox {self.id}: {exc}") from exc

    # -- views ------------------------------------------------------------------------------

    async def _server(self, view: _View) -> ExecServer:
        """The view's running server, started (as a fresh view) if it is not running."""
        async with view.lock:
            if view.server is not None and view.server.alive:
                return view.server
            if self._destroyed:
                raise SandboxError(f"sandbox {self.id} was destroyed")
            provider = self._provider
            principal = view.principal
            fds = ViewFds()
            argv = bwrap_argv(
                provider.tools.bwrap,
                principal,
                fds,
                hosts=self._hosts(),
                own_network=self._netns is None,
                extra_folders=view.extra,
                resolv_conf=self._resolv_conf(),
                etc=provider.etc,
                server_code=compiled("exec_server", VIEW_PYTHON),
            )
            argv = provider.tools.enter(self._netns, principal.uid, principal.group) + argv
            server = ExecServer(f"{principal.role} {principal.name}", provider.output_limit)
            # Off the loop: a cgroup's mkdir and knob writes, three controllers' worth.
            cgroup = view.cgroup
            if cgroup is None:
                cgroup = await asyncio.to_thread(
                    provider.cgroup, f"{self.id}--{principal.name}", self.spec
                )
            view.cgroup = cgroup
            try:
                init = await server.start(argv, {"PATH": SAFE_PATH, "LANG": "C.UTF-8"}, fds.fds)
            finally:
                fds.close()
            try:
                await cgroup.add(init)
            except SandboxError:
                await server.stop()
                raise
            view.server = server
            return server

    def _resolv_conf(self) -> bytes | None:
        root = self._checker_of or self
        return root._network.resolv_conf if root._network is not None else None

    def _hosts(self) -> list[str]:
        root = self._checker_of or self
        return [spec.name for spec in root.spec.services]

    def _environment(self, principal: Principal, env: Mapping[str, str] | None) -> dict[str, str]:
        base = {
            "PATH": SAFE_PATH,
            "HOME": WORKSPACE,
            "LANG": "C.UTF-8",
            "USER": principal.role,
            "TMPDIR": "/tmp",
        }
        return {**base, **self.spec.env, **(env or {})}

    def _limits(self) -> list[int]:
        spec = self.spec
        # RLIMIT_NPROC counts the uid's processes: exact when the view has a uid of its own.
        nproc = spec.max_processes if os.geteuid() == 0 else -1
        return [spec.cpu_seconds, spec.memory_bytes, spec.file_size_bytes, nproc]

    async def _run_in(
        self,
        view: _View,
        command: str,
        timeout_sec: float,
        env: Mapping[str, str] | None = None,
        stdin: str | None = None,
    ) -> ExecResult:
        server = await self._server(view)
        return await server.run(
            command,
            timeout_sec=timeout_sec,
            env=self._environment(view.principal, env),
            cwd=WORKSPACE,
            limits=self._limits(),
            stdin=stdin,
        )

    # -- the protocol -----------------------------------------------------------------------

    async def run(
        self,
        command: str,
        *,
        timeout_sec: float,
        env: Mapping[str, str] | None = None,
        stdin: str | None = None,
    ) -> ExecResult:
        return await self._run_in(self._agent, command, timeout_sec, env, stdin)

    async def put_file(self, relative_path: str, content: bytes, mode: int = 0o644) -> None:
        relative_parts(relative_path)
        server = await self._server(self._agent)
        await server.write([(relative_path, mode, content)])

    async def put_tree(self, source: Path, exclude: frozenset[str] = frozenset()) -> None:
        source = Path(source)
        if not source.is_dir():
            raise SandboxError(f"cannot copy {source}: not a directory")
        try:
            files = await asyncio.to_thread(tree_files, source, exclude)
        except OSError as exc:
            raise SandboxError(f"cannot copy {source} into sandbox {self.id}: {exc}") from exc
        server = await self._server(self._agent)
        await server.write(files)

    async def get_file(self, path: str) -> bytes:
        principal = self._agent.principal
        pure = PurePosixPath(path)
        root, relative = Path(principal.workspace), path
        if pure.is_absolute():
            for view_root, host_root in ((WORKSPACE, principal.workspace), ("/tmp", principal.tmp)):
                if pure.is_relative_to(view_root) and pure != PurePosixPath(view_root):
                    root, relative = Path(host_root), str(pure.relative_to(view_root))
                    break
            else:
                raise SandboxError(f"path {path!r} is outside the workspace and /tmp")
        parts = relative_parts(relative)
        try:
            return await asyncio.to_thread(read_beneath, root, parts, GET_FILE_LIMIT)
        except FileNotFoundError as exc:
            raise SandboxFileNotFound(f"{path!r} not found in sandbox {self.id}") from exc

    async def kill_all(self) -> None:
        view = self._agent
        async with view.lock:
            if view.server is not None:
                await view.server.stop()
                view.server = None

    async def open_checker(self) -> StrictSandbox:
        provider = self._provider
        # A folder per checker: an item may open several (provision, then the verifier).
        name = "checker" if not self._checkers else f"checker-{len(self._checkers) + 1}"
        principal = await provider.new_principal(self._dir, "checker", name, self.spec)
        checker_principal = Principal(
            role="checker",
            name=name,
            uid=principal.uid,
            workspace=self._agent.principal.workspace,
            tmp=principal.tmp,
            workspace_read_only=True,
            group=self._agent.principal.uid,
        )
        checker = StrictSandbox(
            provider,
            self.spec,
            self._meta,
            self._meta_path,
            network=self._network,
            agent=checker_principal,
            checker_of=self,
        )
        self._checkers.append(checker)
        return checker

    async def start_services(self, services: tuple[ServiceSpec, ...]) -> None:
        """Start every service in a view of its own and wait until its ports accept."""
        for service in services:
            if service.command is None:
                raise SandboxError(
                    f"service {service.name!r} has no local command (x-assay command): the "
                    "local provider runs services from their build context"
                )
            principal = await self._provider.new_principal(
                self._dir, "service", f"svc-{service.name}", self.spec
            )
            if service.context is not None:
                await asyncio.to_thread(_copy_owned, Path(service.context), principal)
            view = _View(principal)
            self._services[service.name] = view
            server = await self._server(view)
            log = os.open(
                self._dir / f"{service.name}.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600
            )
            try:
                pid = await server.spawn(
                    service.command,
                    env=self._environment(principal, service.environment),
                    cwd=WORKSPACE,
                    limits=self._limits(),
                    output=log,
                )
            finally:
                os.close(log)
            for port in service.ports:
                if not await server.wait_port(port, SERVICE_READY_SEC, watch=pid):
                    tail = _tail(self._dir / f"{service.name}.log")
                    raise SandboxError(
                        f"service {service.name!r} did not listen on port {port} within "
                        f"{SERVICE_READY_SEC:.0f}s: {tail}"
                    )
            first_port = service.ports[0] if service.ports else None
            self._endpoints[service.name] = ServiceEndpoint(
                name=service.name, host=service.name, port=first_port
            )

    async def run_in_service(self, service: str, command: str, *, timeout_sec: float) -> ExecResult:
        view = self._services.get(service)
        if view is None:
            raise SandboxError(f"no service {service!r} in sandbox {self.id}")
        return await self._run_in(view, command, timeout_sec)

    async def _stop_all(self) -> None:
        for checker in self._checkers:
            await checker._stop_all()
        for view in [self._agent, *self._services.values()]:
            async with view.lock:
                if view.server is not None:
                    await view.server.stop()
                    view.server = None
                if view.cgroup is not None:
                    view.cgroup.remove()

    async def keep(self) -> None:
        await self._stop_all()
        # Nothing runs any more, so nothing needs the network (nor its slirp4netns).
        if self._network is not None:
            await self._network.destroy()
            self._network = None
        self._meta.kept = True
        self._save_meta()

    async def destroy(self) -> None:
        if self._checker_of is not None:
            # A checker is part of its item: ending it ends its processes and gives back its
            # uid; its files go with the item.
            await self._stop_all()
            self._provider.release(self._agent.principal.uid)
            return
        already = self._destroyed
        self._destroyed = True
        if not already:
            await self._stop_all()
        if self._network is not None:
            await self._network.destroy()
        await self._provider.remove_item(self._meta, self._meta_path)
        for view in [self._agent, *self._services.values()]:
            self._provider.release(view.principal.uid)
        for checker in self._checkers:
            self._provider.release(checker._agent.principal.uid)

    def _save_meta(self) -> None:
        try:
            write_meta(self._meta_path, self._meta)
        except OSError as exc:
            raise SandboxError(f"cannot write sandbox metadata {self._meta_path}: {exc}") from exc


def _copy_owned(source: Path, principal: Principal) -> None:
    """Copy a service's build context into its workspace, owned by its uid (before any of its
    processes runs, so nothing there can redirect the copy)."""
    target = Path(principal.workspace)
    shutil.copytree(source, target, symlinks=True, dirs_exist_ok=True)
    for folder, dirs, files in os.walk(target):
        for name in [*dirs, *files]:
            os.lchown(os.path.join(folder, name), principal.uid, principal.uid)


def _tail(path: Path) -> str:
    with contextlib.suppress(OSError):
        return path.read_text(errors="replace")[-500:].strip()
    return ""


async def remove_item_files(meta: SandboxMeta, meta_path: Path) -> None:
    """Unmount what the item mounted, remove its folder and metadata (its network is the
    ItemNetwork's to remove)."""

    def remove() -> None:
        for mount in mounts_below(Path(meta.path)):
            with contextlib.suppress(OSError):
                unmount(mount)
        remove_sandbox_files(Path(meta.path), meta_path)

    await asyncio.to_thread(remove)
