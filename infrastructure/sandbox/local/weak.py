"""The weak local sandbox: a directory, Linux namespaces where the kernel allows, rlimits.

Opted into with `ASSAY_SANDBOX_ISOLATION=weak` (and recorded as `weak` with every verdict):
commands run as the worker's own user on the host's file system. It is what Assay ran before
the strict bubblewrap view, kept for hosts that cannot give that view.

Every sandbox is a directory `<root>/<item>--<worker>--<random>/` with a metadata file beside it
(`<root>/<id>.json`, outside the directory so the commands cannot trivially rewrite it). The
metadata names the worker, the item, the namespace holder and the process groups started, so a
later worker can find and reap the sandboxes of a worker that died (`reap_orphans`).

Shared namespaces per sandbox. A sandbox that gets namespaces starts one long-lived *holder*:
`unshare --pid --fork --kill-child --mount-proc [--net] -- python -c INIT`. INIT is PID 1 of
the sandbox's PID namespace; in a new network namespace it brings `lo` up, then it only reaps
orphans. Every `run` enters those namespaces with `nsenter --target <INIT> --pid --mount
[--net]`, so setup, agent and checker of one item share one loopback (a server that setup starts
on 127.0.0.1 is reachable by the agent) and one process tree. Killing INIT makes the kernel kill
every process of the namespace, however it detached itself: that is how `kill_all`, `destroy` and
`reap_orphans` end a sandbox. The holder is started lazily by the first `run` and again after a
`kill_all`, so a sandbox stays usable after its processes were killed. `setpriv --pdeathsig KILL`
(when present) ties the holder to the worker: if the worker dies, the kernel kills the holder,
`--kill-child` kills INIT, and the namespace with it; `reap_orphans` then only removes files.
A non-root worker adds `--user --map-root-user` (and enters with `--user
--preserve-credentials`): the kernel then lets it create the other namespaces, if unprivileged
user namespaces are allowed. Root does not use one.

One command, one tree. Each `run` execs a small Python *shim* (in the namespaces) that marks
itself a child subreaper (prctl PR_SET_CHILD_SUBREAPER), forks, applies the rlimits, resets the
signal dispositions Python ignores, and execs `bash -c command`. As a subreaper it inherits
every descendant that detaches (double fork, `setsid`, `nohup`) while the command runs, so the
command's whole tree stays below the process the worker started. At the deadline the worker
walks that tree (and the command's process group) in /proc, SIGSTOPs it until no new member
appears (a stopped process cannot fork an escapee), then SIGKILLs every member; nsenter itself
is left to reap the shim and exit (see `_stop_and_kill`). Only this command's tree dies: a
server that setup left running in the background keeps serving the agent. When the command ends
normally its background children are left running (that is how setup starts servers), and are
reparented to INIT.

Without namespaces (kernel or container refuses, or `namespaces=False`) the same shim runs
directly, as its own session; per-command tree kills are identical, and `kill_all` kills every
process group this sandbox started plus every process whose working directory is inside the
sandbox directory (both restricted to processes started after the sandbox was created). That
fallback can miss a process that left both its group and the directory after its command ended
(`isolation_report()["pid_namespace"]` is False then).

Limits: the shim sets RLIMIT_CPU, RLIMIT_AS, RLIMIT_FSIZE, RLIMIT_CORE=0 and, when not root,
RLIMIT_NPROC (which counts every process of the uid, so the sandbox gets `max_processes` on top
of what the uid already runs; root bypasses it, so it is skipped and reported as not enforced).

Not a security boundary: commands run as the worker's user, and the file system is the host's
(the mount namespace only gives them their own /proc). In a PID namespace they cannot see host
processes by pid, but as root they can still read and write any file of the host. Run
workers as an unprivileged user where that matters (then RLIMIT_NPROC applies too).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import shutil
import signal
import time
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from infrastructure.sandbox.local.capture import OutputCapture, feed_stdin
from infrastructure.sandbox.local.constants import (
    DRAIN_GRACE_SEC,
    HOLDER_START_SEC,
    KILL_WAIT_SEC,
    SAFE_PATH,
)
from infrastructure.sandbox.local.files import SandboxFileNotFound, resolve_inside
from infrastructure.sandbox.local.metadata import (
    SandboxMeta,
    live_init,
    remove_sandbox_files,
    safe_name,
    terminate_recorded,
    write_meta,
)
from infrastructure.sandbox.local.processes import (
    child_of,
    read_stat,
    send_signal,
    stop_and_kill,
    wait_gone,
)
from infrastructure.sandbox.local.programs import program
from infrastructure.sandbox.local.weak_probe import holder_argv, nsenter_argv
from infrastructure.sandbox.protocol import (
    WORKSPACE,
    ExecResult,
    SandboxError,
    SandboxPathUnavailable,
    SandboxSpec,
    ServiceEndpoint,
    ServiceSpec,
)

if TYPE_CHECKING:
    from infrastructure.sandbox.local.provider import LocalSandboxProvider


class WeakSandbox:
    def __init__(
        self, provider: LocalSandboxProvider, spec: SandboxSpec, meta: SandboxMeta, meta_path: Path
    ) -> None:
        self._provider = provider
        self._iso = provider.isolation
        self.spec = spec
        self._meta = meta
        self._meta_path = meta_path
        self._dir = Path(meta.path)
        self._ns = self._iso.for_sandbox(spec.egress is not None)
        self._pid_ns = self._ns.pid
        self._holder: asyncio.subprocess.Process | None = None
        self._holder_lock = asyncio.Lock()
        # Process groups (= pid of the process the worker started) of commands still running.
        self._running: set[int] = set()
        self._destroyed = False
        self._endpoints: dict[str, ServiceEndpoint] = {}
        self._service_dirs: dict[str, Path] = {}

    @property
    def id(self) -> str:
        return self._meta.id

    @property
    def location(self) -> str:
        return str(self._dir)

    @property
    def path(self) -> Path:
        return self._dir

    @property
    def private_tmp(self) -> Path | None:
        """The folder its commands see as /tmp: with a PID namespace (which brings a mount
        namespace) one of its own beside the sandbox directory; without, the host's /tmp.
        Not when the sandbox itself lies below /tmp either: binding over /tmp would hide it."""
        if not self._pid_ns or self._dir.is_relative_to("/tmp"):
            return None
        return self._dir.with_name(self._dir.name + ".tmp")

    @property
    def uses_namespaces(self) -> bool:
        return self._ns.pid or self._ns.net

    # -- commands -------------------------------------------------------------------------

    def _environment(self, env: Mapping[str, str] | None) -> dict[str, str]:
        base = {"PATH": SAFE_PATH, "HOME": str(self._dir), "LANG": "C.UTF-8"}
        return {**base, **self.spec.env, **(env or {})}

    def _limits(self) -> list[str]:
        nproc = -1
        if self._iso.rlimits and os.geteuid() != 0:
            # NPROC counts every process of the uid, not of the sandbox: allow max_processes
            # more than the uid runs now, so a busy worker user does not starve the sandbox.
            uid = os.geteuid()
            mine = 0
            for entry in os.scandir("/proc"):
                with contextlib.suppress(OSError):
                    if entry.name.isdigit() and entry.stat().st_uid == uid:
                        mine += 1
            nproc = mine + self.spec.max_processes
        return [
            str(self.spec.cpu_seconds),
            str(self.spec.memory_bytes),
            str(self.spec.file_size_bytes),
            str(nproc),
        ]

    async def _ensure_holder(self) -> int:
        """The pid (host view) to nsenter: INIT of the sandbox's namespaces, started if needed."""
        async with self._holder_lock:
            meta = self._meta
            init = live_init(meta)
            if init is not None:
                return init
            assert self._iso.unshare is not None
            tmp = self.private_tmp
            if tmp is not None:
                tmp.mkdir(mode=0o700, exist_ok=True)
            argv = holder_argv(
                self._iso.unshare,
                self._iso.setpriv,
                self._provider.python,
                self._ns,
                None if tmp is None else str(tmp),
            )
            try:
                holder = await asyncio.create_subprocess_exec(
                    *argv,
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.PIPE,
                    cwd="/",
                    env={"PATH": SAFE_PATH, "LANG": "C.UTF-8"},
                    start_new_session=True,
                )
            except OSError as exc:
                raise SandboxError(f"cannot start the namespace holder: {exc}") from exc
            assert holder.stdout is not None and holder.stderr is not None
            try:
                line = await asyncio.wait_for(holder.stdout.readline(), HOLDER_START_SEC)
            except TimeoutError:
                line = b""
            init = child_of(holder.pid) if self._pid_ns else holder.pid
            proc = None if init is None else read_stat(init)
            if line != b"ready\n" or proc is None:
                with contextlib.suppress(ProcessLookupError):
                    holder.kill()
                await holder.wait()
                try:
                    err = await asyncio.wait_for(holder.stderr.read(), KILL_WAIT_SEC)
                except TimeoutError:
                    err = b""
                raise SandboxError(
                    "namespace holder did not start: " + err.decode("utf-8", "replace").strip()
                )
            self._holder = holder
            meta.init_pid, meta.init_starttime = proc.pid, proc.starttime
            self._save_meta()
            return proc.pid

    def _save_meta(self) -> None:
        try:
            write_meta(self._meta_path, self._meta)
        except OSError as exc:
            raise SandboxError(f"cannot write sandbox metadata {self._meta_path}: {exc}") from exc

    async def run(
        self,
        command: str,
        *,
        timeout_sec: float,
        env: Mapping[str, str] | None = None,
        stdin: str | None = None,
    ) -> ExecResult:
        if self._destroyed:
            raise SandboxError(f"sandbox {self.id} was destroyed")
        python = self._provider.python
        argv = [python, "-I", "-S", "-c", program("command_shim"), *self._limits(), command]
        if self.uses_namespaces:
            assert self._iso.nsenter is not None
            init = await self._ensure_holder()
            prefix = nsenter_argv(self._iso.nsenter, init, str(self._dir), self._ns)
            argv = prefix + argv
        loop = asyncio.get_running_loop()
        started = time.monotonic()
        deadline = started + timeout_sec
        # Our own pipes rather than asyncio's PIPE: a background child may hold them open
        # forever, and these can be closed (and stop being read) whenever the command is done.
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        readers = [os.fdopen(out_r, "rb", buffering=0), os.fdopen(err_r, "rb", buffering=0)]
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
                stdout=out_w,
                stderr=err_w,
                cwd=self._dir,
                env=self._environment(env),
                # Its own session and process group, so it can be killed as a group and a
                # terminal's Ctrl-C on the worker does not reach it.
                start_new_session=True,
            )
        except OSError as exc:
            for reader in readers:
                reader.close()
            raise SandboxError(f"cannot start a command in sandbox {self.id}: {exc}") from exc
        finally:
            os.close(out_w)
            os.close(err_w)
        pgid = proc.pid
        # nsenter (the process the worker started, outside the namespace) is left to exit by
        # itself once its child is killed: killed first, it would orphan that child to the
        # host's init, and the PID namespace could not end before the host init reaped it
        # (lazy on some hosts: seconds).
        spare = {proc.pid} if self._pid_ns else set()
        self._running.add(pgid)
        out = OutputCapture(self._provider.output_limit, loop.create_future())
        err = OutputCapture(self._provider.output_limit, loop.create_future())
        transports: list[asyncio.BaseTransport] = []
        feeder: asyncio.Task[None] | None = None
        timed_out = False
        try:
            if pgid not in self._meta.pgids:
                self._meta.pgids.append(pgid)
                self._save_meta()
            out_transport, _ = await loop.connect_read_pipe(lambda: out, readers[0])
            transports.append(out_transport)
            err_transport, _ = await loop.connect_read_pipe(lambda: err, readers[1])
            transports.append(err_transport)
            if stdin is not None:
                feeder = asyncio.create_task(feed_stdin(proc, stdin.encode()))
            try:
                await asyncio.wait_for(proc.wait(), max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                timed_out = True
                killed = stop_and_kill([proc.pid], [pgid], spare=spare)
                try:
                    await asyncio.wait_for(proc.wait(), KILL_WAIT_SEC / 2)
                except TimeoutError:
                    proc.kill()
                    await proc.wait()
                await wait_gone(killed, KILL_WAIT_SEC)
            # Output still in the pipes is read; a pipe a background child keeps open is not
            # waited for beyond the grace.
            grace = DRAIN_GRACE_SEC if timed_out else deadline - time.monotonic()
            await asyncio.wait([out.done, err.done], timeout=min(DRAIN_GRACE_SEC, max(0.05, grace)))
        except BaseException:
            # Cancelled (the item was cancelled or timed out above us) or failed: the command
            # must not outlive the call that started it.
            stop_and_kill([proc.pid], [pgid], spare=spare)
            raise
        finally:
            self._running.discard(pgid)
            if feeder is not None:
                feeder.cancel()
            for transport in transports:
                transport.close()
            for reader in readers:
                reader.close()  # idempotent; the transports close theirs
        code = proc.returncode
        if code is not None and code < 0:
            code = 128 - code  # nsenter re-raises the signal that killed its child
        return ExecResult(
            exit_code=None if timed_out else code,
            stdout=out.text(),
            stderr=err.text(),
            timed_out=timed_out,
            duration_ms=(time.monotonic() - started) * 1000,
        )

    # -- files ----------------------------------------------------------------------------

    def _resolve(self, relative_path: str) -> Path:
        return resolve_inside(self._dir, relative_path)

    async def put_file(self, relative_path: str, content: bytes, mode: int = 0o644) -> None:
        target = self._resolve(relative_path)

        def write() -> None:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(content)
            target.chmod(mode)

        try:
            await asyncio.to_thread(write)
        except OSError as exc:
            raise SandboxError(
                f"cannot write {relative_path!r} in sandbox {self.id}: {exc}"
            ) from exc

    async def put_tree(self, source: Path, exclude: frozenset[str] = frozenset()) -> None:
        """Copy `source`'s files, keeping modes. `exclude` holds paths relative to `source`
        (`task.yaml`, `solution.sh`, `checks/verify.py`); excluding a folder excludes its
        contents."""
        source = Path(source)
        if not source.is_dir():
            raise SandboxError(f"cannot copy {source}: not a directory")
        skip = {entry.strip("/") for entry in exclude}

        def ignore(folder: str, names: list[str]) -> set[str]:
            relative = Path(folder).relative_to(source)
            return {name for name in names if (relative / name).as_posix() in skip}

        def copy() -> None:
            shutil.copytree(source, self._dir, symlinks=True, ignore=ignore, dirs_exist_ok=True)

        try:
            await asyncio.to_thread(copy)
        except (OSError, shutil.Error) as exc:
            raise SandboxError(f"cannot copy {source} into sandbox {self.id}: {exc}") from exc

    async def get_file(self, relative_path: str) -> bytes:
        pure = PurePosixPath(relative_path)
        root = self._dir  # the workspace is this directory
        if pure.is_absolute() and pure.is_relative_to("/tmp") and self.private_tmp is None:
            raise SandboxPathUnavailable(
                f"{relative_path!r}: weak sandbox {self.id} has no /tmp of its own (its root "
                f"{self._dir.parent} lies below /tmp, or the host gives no PID namespace), so "
                "its commands share the host's /tmp and the file may be another item's; set "
                "ASSAY_SANDBOX_ROOT outside /tmp"
            )
        for view_root, host_root in ((WORKSPACE, self._dir), ("/tmp", self.private_tmp)):
            inside = pure.is_absolute() and pure.is_relative_to(view_root)
            if host_root is not None and inside and pure != PurePosixPath(view_root):
                root, relative_path = host_root, str(pure.relative_to(view_root))
        target = resolve_inside(root, relative_path)
        try:
            return await asyncio.to_thread(target.read_bytes)
        except FileNotFoundError as exc:
            raise SandboxFileNotFound(f"{relative_path!r} not found in sandbox {self.id}") from exc
        except OSError as exc:
            raise SandboxError(
                f"cannot read {relative_path!r} in sandbox {self.id}: {exc}"
            ) from exc

    # -- ending -----------------------------------------------------------------------------

    async def kill_all(self) -> None:
        """Kill every process of the sandbox; returns once they are gone (or after ~2 s of
        waiting for ones stuck in the kernel). The sandbox stays usable: the next `run` gets
        fresh namespaces."""
        # Namespace init first: the kernel kills the namespace, and each nsenter of a running
        # command reaps its child and exits (see `run` on why nsenter is not killed first).
        init = live_init(self._meta)
        if init is not None:
            send_signal(init, signal.SIGKILL)
            await wait_gone([init], KILL_WAIT_SEC)
        # Scanning /proc costs ~1.5 ms: only when a command of ours may still be running.
        killed = stop_and_kill(self._running, self._running) if self._running else set()
        killed |= terminate_recorded(self._meta)
        if self._holder is not None:
            holder, self._holder = self._holder, None
            # With its init dead the holder exits by itself. It is signalled only if it does
            # not: Popen.kill() first polls, and a poll that reaps the exited holder under
            # asyncio's child watcher makes it log "Unknown child process".
            try:
                await asyncio.wait_for(asyncio.shield(holder.wait()), KILL_WAIT_SEC / 2)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    holder.kill()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(holder.wait(), KILL_WAIT_SEC / 2)
        await wait_gone(killed, KILL_WAIT_SEC)

    # -- what the strict mode does with other principals, done the weak way -----------------

    @property
    def isolation(self) -> Mapping[str, object]:
        return {"level": "weak", "provider": "local", **self._iso.report()}

    def endpoints(self) -> Mapping[str, ServiceEndpoint]:
        return dict(self._endpoints)

    async def start_services(self, services: tuple[ServiceSpec, ...]) -> None:
        """Services run as background commands of this sandbox, from a copy of their build
        context beside (not inside) its directory, on its loopback: one principal, no secret
        kept from the agent. That is what weak means."""
        for service in services:
            if service.command is None:
                raise SandboxError(f"service {service.name!r} has no local command")
            folder = self._dir.with_name(f"{self._dir.name}.svc-{safe_name(service.name)}")
            if service.context is not None:
                await asyncio.to_thread(
                    shutil.copytree, service.context, folder, symlinks=True, dirs_exist_ok=True
                )
            else:
                folder.mkdir(exist_ok=True)
            self._service_dirs[service.name] = folder
            quoted = shlex.quote(str(folder))
            start = f"cd {quoted} && ({service.command}) > service.log 2>&1 < /dev/null &"
            result = await self.run(start, timeout_sec=10, env=dict(service.environment))
            if result.exit_code != 0:
                raise SandboxError(f"service {service.name!r} did not start: {result.stderr}")
            for port in service.ports:
                probe = (
                    f"for _ in $(seq 300); do (exec 3<>/dev/tcp/127.0.0.1/{port}) 2>/dev/null"
                    " && exit 0; sleep 0.1; done; exit 1"
                )
                if (await self.run(probe, timeout_sec=40)).exit_code != 0:
                    log = folder / "service.log"
                    tail = log.read_text(errors="replace")[-500:] if log.exists() else ""
                    raise SandboxError(
                        f"service {service.name!r} did not listen on {port}: {tail.strip()}"
                    )
            first_port = service.ports[0] if service.ports else None
            self._endpoints[service.name] = ServiceEndpoint(
                name=service.name, host="127.0.0.1", port=first_port
            )

    async def run_in_service(self, service: str, command: str, *, timeout_sec: float) -> ExecResult:
        folder = self._service_dirs.get(service)
        if folder is None:
            raise SandboxError(f"no service {service!r} in sandbox {self.id}")
        return await self.run(
            f"cd {shlex.quote(str(folder))} && {command}", timeout_sec=timeout_sec
        )

    async def open_checker(self) -> WeakSandbox:
        """The weak checker runs in this very sandbox, as before: same user, same files."""
        return self

    async def keep(self) -> None:
        """Stop every process but leave the files for an operator (cleanup policy), marked so
        that `reap_orphans` does not remove them."""
        await self.kill_all()
        self._meta.kept = True
        self._save_meta()

    async def destroy(self) -> None:
        if not self._destroyed:
            await self.kill_all()
        self._destroyed = True
        try:
            for folder in [*self._service_dirs.values(), self.private_tmp]:
                if folder is not None:
                    await asyncio.to_thread(shutil.rmtree, folder, True)
            await asyncio.to_thread(remove_sandbox_files, self._dir, self._meta_path)
        except OSError as exc:
            raise SandboxError(f"cannot remove sandbox {self.id}: {exc}") from exc
