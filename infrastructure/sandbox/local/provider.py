"""The `local` provider: sandboxes on this machine, strict (bubblewrap views) or weak.

`isolation="strict"` (the default, `ASSAY_SANDBOX_ISOLATION`) runs every principal of an item
in a view of its own (`strict.py`) and refuses to provision where the host cannot give one
(`IsolationUnavailable`, with the fix in its message). `weak` is the namespaces-and-rlimits
sandbox of `weak.py`, opted into. Either way each sandbox says what it ran under
(`Sandbox.isolation`), and the worker records that with the verdict.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import TypeVar

import msgspec

from infrastructure.sandbox.local.cgroups import Cgroup, available_controllers, remove_stale
from infrastructure.sandbox.local.constants import (
    KILL_WAIT_SEC,
    META_SUFFIX,
    OUTPUT_LIMIT,
    SAFE_PATH,
)
from infrastructure.sandbox.local.etc_tree import etc_tree
from infrastructure.sandbox.local.metadata import (
    SandboxMeta,
    remove_sandbox_files,
    safe_name,
    terminate_recorded,
    write_meta,
)
from infrastructure.sandbox.local.mounts import mount_tmpfs
from infrastructure.sandbox.local.principals import DEFAULT_UID_RANGE, UidPool
from infrastructure.sandbox.local.processes import boot_id, now_ticks, wait_gone
from infrastructure.sandbox.local.programs import compiled
from infrastructure.sandbox.local.strict import VIEW_CPUS, StrictSandbox, remove_item_files
from infrastructure.sandbox.local.strict_probe import FIX, StrictTools, probe_strict
from infrastructure.sandbox.local.view import ETC_ALLOWED, VIEW_PYTHON, Principal
from infrastructure.sandbox.local.weak import WeakSandbox
from infrastructure.sandbox.local.weak_probe import Isolation, probe_isolation
from infrastructure.sandbox.network import ItemNetwork
from infrastructure.sandbox.protocol import (
    IsolationLevel,
    IsolationUnavailable,
    SandboxError,
    SandboxSpec,
)

# Traversable by every uid (see LocalSandboxProvider.views_root); one per host, shared by its
# root workers, whose item ids never collide.
STRICT_VIEWS_ROOT = Path("/run/assay/sandboxes")


SandboxT = TypeVar("SandboxT", StrictSandbox, WeakSandbox)


class LocalSandboxProvider:
    """Sandboxes as folders under `root` on this machine (see the module docstring)."""

    name: str = "local"

    def __init__(
        self,
        root: Path,
        *,
        isolation: IsolationLevel = "strict",
        namespaces: bool = True,
        output_limit: int = OUTPUT_LIMIT,
        python: str = sys.executable,
        uid_range: tuple[int, int] = DEFAULT_UID_RANGE,
    ) -> None:
        self.root = Path(root)
        self.level: IsolationLevel = isolation
        self.output_limit = output_limit
        # Weak mode: any Python 3 runs its tiny shim and init; the worker's own is always there.
        self.python = python
        self._namespaces = namespaces
        self._isolation: Isolation | None = None
        # One lock folder per host, not per sandbox root: every root worker of the host must
        # see the same uids taken.
        self._uids = UidPool(STRICT_VIEWS_ROOT.parent / "uids", uid_range)
        self._views_prepared = False

    @property
    def networks_root(self) -> Path:
        """Item networks (namespace files, their metadata) of this installation: reaping them
        by worker liveness is only right within the installation that knows those workers."""
        return self.root.absolute() / ".networks"

    @property
    def views_root(self) -> Path:
        """Where a root worker puts strict items' folders: bwrap binds them by path as the
        principal's uid, which must be able to traverse every folder above (a sandbox root
        below a 0700 home or pytest's 0700 temp folder would refuse it). Their contents are
        tmpfs mounts, so nothing is lost by keeping them out of the sandbox root. Metadata
        stays in the sandbox root."""
        if os.geteuid() == 0:
            return STRICT_VIEWS_ROOT
        return self.root.absolute()

    # -- what this host gives ---------------------------------------------------------------

    @property
    def isolation(self) -> Isolation:
        """The weak mode's probe: on first use (a few hundred ms, once per process)."""
        if self._isolation is None:
            self._isolation = probe_isolation(self.python, self._namespaces)
        return self._isolation

    @property
    def tools(self) -> StrictTools:
        probe = probe_strict()
        if probe.tools is None:
            raise IsolationUnavailable(self.unavailable_reason() or "strict isolation failed")
        return probe.tools

    def unavailable_reason(self) -> str | None:
        """Why this provider cannot run items as configured, with the fix; None when it can."""
        if self.level != "strict":
            return None
        problem = probe_strict().problem
        return (
            None if problem is None else f"strict sandbox isolation unavailable: {problem}; {FIX}"
        )

    def strict_isolation(self, spec: SandboxSpec) -> dict[str, object]:
        root = os.geteuid() == 0
        controllers = available_controllers()
        return {
            "level": "strict",
            "provider": self.name,
            "view": "bubblewrap",
            "capabilities": "none",
            "no_new_privileges": True,
            "user_namespaces": "refused",
            "distinct_uids": root,
            "item_network": root,
            "egress": "none" if spec.egress is None else "filtered",
            "memory_limit": "cgroup" if "memory" in controllers else "rlimit",
            "process_limit": "cgroup" if "pids" in controllers else ("rlimit" if root else "none"),
            "cpu_limit": "cgroup" if "cpu" in controllers else "rlimit",
            "workspace_quota": root,
        }

    def isolation_report(self) -> Mapping[str, bool]:
        if self.level == "weak":
            return self.isolation.report()
        if probe_strict().tools is None:
            return {"bubblewrap_view": False}
        root = os.geteuid() == 0
        controllers = available_controllers()
        return {
            "bubblewrap_view": True,
            "capabilities_dropped": True,
            "no_new_privileges": True,
            "user_namespaces_refused": True,
            "distinct_uids": root,
            "item_network": root,
            "filtered_egress": root and egress_tools_present(),
            "cgroup_memory": "memory" in controllers,
            "cgroup_pids": "pids" in controllers,
            "cgroup_cpu": "cpu" in controllers,
            "workspace_quota": root,
        }

    # -- strict helpers (used by StrictSandbox) ----------------------------------------------

    @property
    def etc(self) -> str:
        """The views' shared /etc (see `etc_tree`), made on first use: beside the item
        folders, so every principal's uid can traverse to it."""
        self.views_root.mkdir(parents=True, exist_ok=True, mode=0o711)
        return etc_tree(self.views_root / ".etc", ETC_ALLOWED)

    def cgroup(self, name: str, spec: SandboxSpec) -> Cgroup:
        return Cgroup(
            name, memory_bytes=spec.memory_bytes, max_processes=spec.max_processes, cpus=VIEW_CPUS
        )

    async def new_principal(
        self, item_dir: Path, role: str, name: str, spec: SandboxSpec
    ) -> Principal:
        """A uid and a folder of its own (`workspace/` and `tmp/` on a bounded tmpfs)."""
        uid = await asyncio.to_thread(self._uids.acquire)
        folder = item_dir / name

        def make() -> None:
            # The workspace is 0750: a checker runs with the owner's group to read it (through
            # a read-only bind); no other principal has that group. /tmp stays private.
            folder.mkdir(mode=0o750)
            if os.geteuid() == 0:
                mount_tmpfs(folder, size_bytes=spec.disk_bytes, uid=uid, mode=0o750)
            for sub, mode in (("workspace", 0o750), ("tmp", 0o700)):
                (folder / sub).mkdir(mode=mode)
                os.chown(folder / sub, uid, uid)
                os.chmod(folder / sub, mode)
            os.chown(folder, uid, uid)

        try:
            await asyncio.to_thread(make)
        except OSError as exc:
            self._uids.release(uid)
            raise SandboxError(f"cannot make the {name} folder of {item_dir.name}: {exc}") from exc
        return Principal(
            role=role,
            name=name,
            uid=uid,
            workspace=str(folder / "workspace"),
            tmp=str(folder / "tmp"),
        )

    def release(self, uid: int) -> None:
        self._uids.release(uid)

    async def remove_item(self, meta: SandboxMeta, meta_path: Path) -> None:
        try:
            await remove_item_files(meta, meta_path)
        except OSError as exc:
            raise SandboxError(f"cannot remove sandbox {meta.id}: {exc}") from exc
        # Off the loop: it lists every live sandbox's group in each controller.
        await asyncio.to_thread(remove_stale, meta.id)

    # -- the protocol -----------------------------------------------------------------------

    async def provision(self, spec: SandboxSpec) -> StrictSandbox | WeakSandbox:
        if self.level == "strict":
            return await self._provision_strict(spec)
        if self._isolation is None:
            await asyncio.to_thread(lambda: self.isolation)
        meta, meta_path = self._new_meta(spec)
        try:
            Path(meta.path).mkdir()
        except OSError as exc:
            raise SandboxError(f"cannot create sandbox under {self.root}: {exc}") from exc
        return await _with_services(WeakSandbox(self, spec, meta, meta_path), spec)

    def _new_meta(self, spec: SandboxSpec, *, strict: bool = False) -> tuple[SandboxMeta, Path]:
        sandbox_id = "--".join(
            (safe_name(spec.item_id), safe_name(spec.worker_id), secrets.token_hex(4))
        )
        root = self.root.absolute()
        meta = SandboxMeta(
            id=sandbox_id,
            item_id=spec.item_id,
            worker_id=spec.worker_id,
            path=str((self.views_root if strict else root) / sandbox_id),
            boot_id=boot_id(),
            created_ticks=now_ticks(),
            pid_namespace=strict or self.isolation.pid_namespace,
            strict=strict,
        )
        meta_path = root / (sandbox_id + META_SUFFIX)
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            # Metadata first: a crash right after mkdir still leaves the folder findable.
            write_meta(meta_path, meta)
        except OSError as exc:
            raise SandboxError(f"cannot create sandbox under {self.root}: {exc}") from exc
        return meta, meta_path

    async def _provision_strict(self, spec: SandboxSpec) -> StrictSandbox:
        probe = await asyncio.to_thread(probe_strict)
        if probe.tools is None:
            raise IsolationUnavailable(self.unavailable_reason() or "strict isolation failed")
        if not self._views_prepared:
            # Once per process, off the event loop: the /etc copy and the compiled server
            # (both cached) take tens of ms the first time.
            await asyncio.to_thread(lambda: (self.etc, compiled("exec_server", VIEW_PYTHON)))
            self._views_prepared = True
        root = os.geteuid() == 0
        if not root and (spec.services or spec.egress is not None):
            raise IsolationUnavailable(
                "a strict sandbox with services or egress needs a root worker (the item's "
                "network is made by root); run the worker as root, or set "
                "ASSAY_SANDBOX_ISOLATION=weak"
            )
        meta, meta_path = self._new_meta(spec, strict=True)
        item_dir = Path(meta.path)
        network: ItemNetwork | None = None
        try:
            # On the loop: three small syscalls cost less than a thread hop and its GIL wait.
            _make_item_dir(item_dir)
            if root:
                network = await ItemNetwork.create(
                    self.networks_root, meta.id, spec.egress, worker_id=spec.worker_id
                )
            agent = await self.new_principal(item_dir, "agent", "agent", spec)
        except BaseException:
            if network is not None:
                await network.destroy()
            await self.remove_item(meta, meta_path)
            raise
        return await _with_services(
            StrictSandbox(self, spec, meta, meta_path, network=network, agent=agent), spec
        )

    def sandboxes(self) -> list[SandboxMeta]:
        """Every sandbox under root that has metadata (live, kept or orphaned)."""
        found: list[SandboxMeta] = []
        if not self.root.is_dir():
            return found
        for path in sorted(self.root.glob("*" + META_SUFFIX)):
            with contextlib.suppress(OSError, msgspec.DecodeError):
                found.append(msgspec.json.decode(path.read_bytes(), type=SandboxMeta))
        return found

    async def reap_orphans(self, live_worker_ids: frozenset[str]) -> list[str]:
        """Kill and remove the sandboxes of workers not in `live_worker_ids`; kept ones stay."""
        orphans = [
            meta
            for meta in await asyncio.to_thread(self.sandboxes)
            if meta.worker_id not in live_worker_ids and not meta.kept
        ]
        reaped: list[str] = []
        if os.geteuid() == 0:
            await asyncio.to_thread(ItemNetwork.reap_orphans, self.networks_root, live_worker_ids)
        for meta in orphans:
            await self._remove_recorded(meta)
            reaped.append(meta.id)
        return reaped

    async def discard(self, sandbox_id: str) -> None:
        """Remove a sandbox by id whatever its state: an operator done with a kept one."""
        for meta in await asyncio.to_thread(self.sandboxes):
            if meta.id == sandbox_id:
                await self._remove_recorded(meta)
                return
        raise SandboxError(f"no sandbox {sandbox_id!r} under {self.root}")

    async def _remove_recorded(self, meta: SandboxMeta) -> None:
        """End what a sandbox's metadata says runs and remove everything it made."""
        killed = await asyncio.to_thread(terminate_recorded, meta)
        await wait_gone(killed, KILL_WAIT_SEC)
        meta_path = self.root.absolute() / (meta.id + META_SUFFIX)
        try:
            if meta.strict:
                await self.remove_item(meta, meta_path)
            else:
                await asyncio.to_thread(remove_sandbox_files, Path(meta.path), meta_path)
        except OSError as exc:
            raise SandboxError(f"cannot remove sandbox {meta.id}: {exc}") from exc


async def _with_services(sandbox: SandboxT, spec: SandboxSpec) -> SandboxT:
    """The sandbox once the task's services serve; destroyed if one does not start."""
    try:
        await sandbox.start_services(spec.services)
    except BaseException:
        await sandbox.destroy()
        raise
    return sandbox


def egress_tools_present() -> bool:
    """Whether the item network can give an uplink here (slirp4netns and nft)."""
    return all(shutil.which(tool, path=SAFE_PATH) for tool in ("slirp4netns", "nft"))


def _make_item_dir(item_dir: Path) -> None:
    # 0711: each principal's uid must traverse it to reach its own folder (bwrap binds by
    # path, as that uid), and none may list it to find the others.
    item_dir.parent.mkdir(parents=True, exist_ok=True, mode=0o711)
    item_dir.mkdir(mode=0o711)
    item_dir.chmod(0o711)
