"""The `local` sandbox provider: a directory, Linux namespaces where the kernel allows, rlimits.

Design
------
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
import functools
import os
import re
import secrets
import select
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import NamedTuple

import msgspec

from infrastructure.sandbox.protocol import ExecResult, SandboxError, SandboxSpec

# What a command finds on PATH: the usual system directories, nothing of the worker's own PATH
# (virtualenvs, pyenv shims), so a task sees the same tools whoever started the worker.
SAFE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
OUTPUT_LIMIT = 1024 * 1024
# After a command exits, how long its output pipes may stay open (held by a background child it
# left running) before the worker stops reading: the command is done, its children are not.
DRAIN_GRACE_SEC = 0.5
# How long a kill may take before the worker gives up waiting (processes stuck in the kernel).
KILL_WAIT_SEC = 2.0
HOLDER_START_SEC = 10.0
META_SUFFIX = ".json"
# The unit of /proc/<pid>/stat starttime.
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")

# PID 1 of a sandbox's namespaces. argv[1] == "net": bring the loopback interface up (a new
# network namespace starts with `lo` down). Then say "ready", let go of the worker's pipes and
# reap orphans forever (SIGCHLD blocked + sigwait: no race between reaping and waiting).
# 0x8913/0x8914 are SIOCGIFFLAGS/SIOCSIFFLAGS, 0x1|0x40 IFF_UP|IFF_RUNNING: no `ip` needed.
_INIT = r"""
import fcntl, os, signal, socket, struct, sys
if sys.argv[1:] == ["net"]:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    req = struct.pack("16sH22x", b"lo", 0)
    flags = struct.unpack("16sH", fcntl.ioctl(s, 0x8913, req)[:18])[1]
    fcntl.ioctl(s, 0x8914, struct.pack("16sH22x", b"lo", flags | 0x1 | 0x40))
    s.close()
os.chdir("/")
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGCHLD})
os.write(1, b"ready\n")
null = os.open(os.devnull, os.O_RDWR)
for fd in (0, 1, 2):
    os.dup2(null, fd)
while True:
    try:
        while os.waitpid(-1, os.WNOHANG)[0] > 0:
            pass
    except ChildProcessError:
        pass
    signal.sigwait({signal.SIGCHLD})
"""

# The per-command shim: argv = cpu_seconds memory_bytes file_size_bytes nproc command
# (a negative limit is not applied). Exits with bash's status, 128+N when a signal killed it.
# prctl 36 is PR_SET_CHILD_SUBREAPER. SIGPIPE and SIGXFSZ are reset because Python ignores them
# and ignored dispositions survive exec: `yes | head` or a too-big write would misbehave.
_SHIM = r"""
import ctypes, os, resource, signal, sys
cpu, mem, fsize, nproc = (int(a) for a in sys.argv[1:5])
try:
    ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)
except Exception:
    pass
pid = os.fork()
if pid == 0:
    try:
        for sig in (signal.SIGPIPE, signal.SIGXFSZ):
            signal.signal(sig, signal.SIG_DFL)
        limits = [
            (resource.RLIMIT_CPU, cpu, cpu + 1),
            (resource.RLIMIT_AS, mem, mem),
            (resource.RLIMIT_FSIZE, fsize, fsize),
            (resource.RLIMIT_NPROC, nproc, nproc),
            (resource.RLIMIT_CORE, 0, 0),
        ]
        for res, soft, hard in limits:
            if soft < 0:
                continue
            old_hard = resource.getrlimit(res)[1]
            if old_hard != resource.RLIM_INFINITY:
                soft, hard = min(soft, old_hard), min(hard, old_hard)
            resource.setrlimit(res, (soft, hard))
        os.execvp("bash", ["bash", "-c", sys.argv[5]])
    except BaseException as exc:
        os.write(2, ("sandbox: cannot start bash: %s\n" % exc).encode())
    os._exit(126)
while True:
    try:
        child, status = os.wait()
    except InterruptedError:
        continue
    if child == pid:
        code = os.waitstatus_to_exitcode(status)
        os._exit(code if code >= 0 else 128 - code)
"""

# Run inside a probe holder's namespaces, argv = [pid flag, net flag]. ppid 0 means "forked
# into a child PID namespace" (the parent is outside it); with a network namespace only `lo`
# exists and loopback connects.
_PROBE_CHECK = r"""
import os, socket, sys
if sys.argv[1] == "pid":
    assert os.getppid() == 0, "not in a child pid namespace"
if sys.argv[2] == "net":
    assert [name for _, name in socket.if_nameindex()] == ["lo"], socket.if_nameindex()
    server = socket.create_server(("127.0.0.1", 0))
    socket.create_connection(server.getsockname(), timeout=2).close()
print("ok")
"""


class SandboxFileNotFound(SandboxError, FileNotFoundError):
    """`get_file` of a path that does not exist in the sandbox (catchable as either)."""


# ---------------------------------------------------------------------------------------------
# /proc helpers. The worker sees every process (host PID namespace), including the sandbox's.


class _Proc(NamedTuple):
    pid: int
    ppid: int
    pgid: int
    sid: int
    state: str
    starttime: int  # clock ticks after boot: with the pid, identifies a process across reuse


def _read_stat(pid: int) -> _Proc | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            raw = handle.read().decode("ascii", "replace")
    except OSError:
        return None
    # The command name may contain spaces and parentheses: split after the last ')'.
    fields = raw[raw.rfind(")") + 2 :].split()
    try:
        return _Proc(
            pid, int(fields[1]), int(fields[2]), int(fields[3]), fields[0], int(fields[19])
        )
    except (IndexError, ValueError):
        return None


def _process_table() -> dict[int, _Proc]:
    table: dict[int, _Proc] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            proc = _read_stat(int(entry.name))
            if proc is not None:
                table[proc.pid] = proc
    return table


def _alive(proc: _Proc | None) -> bool:
    # A zombie has released everything but its pid; for "is the tree gone" it is gone.
    return proc is not None and proc.state not in ("Z", "X")


def _same_process(pid: int, starttime: int) -> bool:
    proc = _read_stat(pid)
    return proc is not None and _alive(proc) and proc.starttime == starttime


@functools.cache
def _boot_id() -> str:
    # Read once: a process never outlives the boot it started in.
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def _now_ticks() -> int:
    """The current time in the unit of /proc/<pid>/stat starttime, rounded down a little.
    starttime counts from boot on the boot-time clock (as /proc/uptime does), read here without
    opening a file on every provision."""
    uptime = time.clock_gettime(time.CLOCK_BOOTTIME)
    return max(0, int(uptime * _CLOCK_TICKS) - 2)


def _cwd_inside(pid: int, directory: str) -> bool:
    try:
        cwd = os.readlink(f"/proc/{pid}/cwd")
    except OSError:
        return False
    # A removed directory shows as "<path> (deleted)".
    return cwd in (directory, directory + " (deleted)") or cwd.startswith(directory + "/")


def _signal(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)


def _stop_and_kill(
    roots: Iterable[int],
    pgids: Iterable[int] = (),
    match: Callable[[_Proc], bool] | None = None,
    spare: Iterable[int] = (),
) -> set[int]:
    """SIGKILL the trees below `roots`, the members of `pgids` and the processes `match` picks,
    but not the processes in `spare` (they exit by themselves once their child is gone).

    First SIGSTOP them, re-reading /proc until no new member appears: a stopped process cannot
    fork, so no child is born after the last look and escapes (which is also why no killpg is
    needed: every member of the groups is in the last look). Returns the pids killed.

    The children of `spare` (our shim below nsenter) are killed but never stopped: nsenter
    waits with WUNTRACED and stops itself when its child stops, and a stopped nsenter would not
    reap its child and exit. The shim does not fork after its start, so it needs no stopping.
    """
    roots, pgids, spare = set(roots), set(pgids), set(spare)
    never = {os.getpid(), 1, 0, *spare}
    marked: set[int] = set()
    for _ in range(50):
        table = _process_table()
        children: dict[int, list[int]] = {}
        for proc in table.values():
            children.setdefault(proc.ppid, []).append(proc.pid)
        members = {pid for pid in roots | marked if pid in table}
        members |= {p.pid for p in table.values() if p.pgid in pgids or (match and match(p))}
        queue = list(members)
        while queue:
            for child in children.get(queue.pop(), ()):
                if child not in members:
                    members.add(child)
                    queue.append(child)
        new = {pid for pid in members - marked - never if _alive(table[pid])}
        if not new:
            break
        for pid in new:
            if table[pid].ppid not in spare:
                _signal(pid, signal.SIGSTOP)
        marked |= new
    for pid in marked:
        _signal(pid, signal.SIGKILL)
    return marked


async def _wait_gone(pids: Iterable[int], timeout: float) -> bool:
    """Wait until none of `pids` is alive (zombies count as gone); False on timeout.

    A pidfd becomes readable the moment its process exits, so a killed sandbox is known gone
    at once rather than at the next poll (polling every 20 ms cost each item ~20 ms of
    teardown). Pids no pidfd can be had for (kernels before 5.3) are polled."""
    loop = asyncio.get_running_loop()
    deadline = time.monotonic() + timeout
    fds: list[int] = []
    exits: list[asyncio.Future[None]] = []
    polled: set[int] = set()
    try:
        for pid in pids:
            try:
                fd = os.pidfd_open(pid)
            except ProcessLookupError:
                continue  # gone and reaped already
            except OSError:
                polled.add(pid)
                continue
            fds.append(fd)
            exited: asyncio.Future[None] = loop.create_future()
            loop.add_reader(fd, _exited, loop, fd, exited)
            exits.append(exited)
        if exits:
            _, pending = await asyncio.wait(exits, timeout=timeout)
            if pending:
                return False
        while polled:
            polled = {pid for pid in polled if _alive(_read_stat(pid))}
            if not polled:
                break
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.02)
        return True
    finally:
        for fd in fds:
            loop.remove_reader(fd)
            os.close(fd)


def _exited(loop: asyncio.AbstractEventLoop, fd: int, exited: asyncio.Future[None]) -> None:
    loop.remove_reader(fd)  # a readable pidfd stays readable: one call is enough
    if not exited.done():
        exited.set_result(None)


# ---------------------------------------------------------------------------------------------
# Isolation probe


class Isolation(msgspec.Struct, frozen=True, kw_only=True):
    """What this host gives, found once by trying it (see `probe_isolation`)."""

    pid_namespace: bool
    net_namespace: bool
    mount_namespace: bool
    # Used (only) by a non-root worker, to be allowed the other namespaces.
    user_namespace: bool
    child_subreaper: bool
    rlimits: bool
    parent_death_signal: bool
    runs_as_root: bool
    unshare: str | None = None
    nsenter: str | None = None
    setpriv: str | None = None

    @property
    def namespaces(self) -> bool:
        return self.pid_namespace or self.net_namespace

    def for_sandbox(self, network: bool) -> _Namespaces:
        """The namespaces of a sandbox: a network namespace only when it has no network."""
        net = self.net_namespace and not network
        pid = self.pid_namespace
        return _Namespaces(pid=pid, net=net, user=self.user_namespace and (pid or net))

    def report(self) -> dict[str, bool]:
        return {
            "pid_namespace": self.pid_namespace,
            # Without it, `network: false` is not enforced: commands share the host's network.
            "net_namespace": self.net_namespace,
            # Own /proc (only the sandbox's processes visible); not a private file system.
            "mount_namespace": self.mount_namespace,
            "process_groups": True,
            "child_subreaper": self.child_subreaper,
            "rlimits": self.rlimits,
            # Root bypasses RLIMIT_NPROC, so it is only applied (and enforced) for other users.
            "rlimit_nproc": self.rlimits and not self.runs_as_root,
            # Whether sandbox processes die with the worker (holder tied to it) or wait for
            # reap_orphans.
            "parent_death_signal": self.parent_death_signal and self.namespaces,
            "user_namespace": self.user_namespace,
            "runs_as_root": self.runs_as_root,
        }


class _Namespaces(NamedTuple):
    pid: bool
    net: bool
    # A non-root worker needs a user namespace (where it is root) to create the others.
    user: bool


def _holder_argv(unshare: str, setpriv: str | None, python: str, ns: _Namespaces) -> list[str]:
    argv = [setpriv, "--pdeathsig", "KILL", "--"] if setpriv else []
    argv.append(unshare)
    if ns.user:
        argv += ["--user", "--map-root-user"]
    if ns.pid:
        argv += ["--pid", "--fork", "--kill-child", "--mount-proc"]
    if ns.net:
        argv.append("--net")
    return [*argv, "--", python, "-I", "-S", "-c", _INIT, "net" if ns.net else "-"]


def _nsenter_argv(nsenter: str, init_pid: int, workdir: str, ns: _Namespaces) -> list[str]:
    argv = [nsenter, f"--target={init_pid}", f"--wd={workdir}"]
    if ns.user:
        # --map-root-user denied setgroups(2) in that namespace, which nsenter would call
        # unless told to keep the credentials (the worker's uid, root in there).
        argv += ["--user", "--preserve-credentials"]
    if ns.pid:
        argv += ["--pid", "--mount"]
    if ns.net:
        argv.append("--net")
    return [*argv, "--"]


def _child_of(pid: int) -> int | None:
    """A child of `pid`: one read of /proc/<pid>/task/<pid>/children where the kernel has it
    (a scan of the whole process table costs ~8 ms on a busy worker), else that scan."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as listing:
            children = listing.read().split()
        return int(children[0]) if children else None
    except OSError:
        return next((p.pid for p in _process_table().values() if p.ppid == pid), None)


def _probe_holder(
    unshare: str, nsenter: str, setpriv: str | None, python: str, ns: _Namespaces
) -> bool:
    """Start a holder with these namespaces, enter it once, check what we got, tear it down."""
    argv = _holder_argv(unshare, setpriv, python, ns)
    try:
        holder = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
    except OSError:
        return False
    init: int | None = None
    try:
        assert holder.stdout is not None
        # A holder the kernel refuses exits at once, closing stdout: readline returns b"".
        ready, _, _ = select.select([holder.stdout], [], [], HOLDER_START_SEC)
        if not ready or holder.stdout.readline() != b"ready\n":
            return False
        init = _child_of(holder.pid) if ns.pid else holder.pid
        if init is None:
            return False
        flags = ["pid" if ns.pid else "-", "net" if ns.net else "-"]
        check = [python, "-I", "-S", "-c", _PROBE_CHECK, *flags]
        result = subprocess.run(
            [*_nsenter_argv(nsenter, init, "/", ns), *check],
            capture_output=True,
            timeout=10,
            check=False,
        )
        return result.returncode == 0 and result.stdout.strip() == b"ok"
    except (OSError, subprocess.SubprocessError):
        return False
    finally:
        if init is None and ns.pid:
            init = _child_of(holder.pid)
        if init is not None:
            _signal(init, signal.SIGKILL)
        holder.kill()
        holder.wait()


def _probe_shim(python: str) -> tuple[bool, bool]:
    """(rlimits applied, subreaper available), by running the shim with known limits."""
    argv = [python, "-I", "-S", "-c", _SHIM, "7", str(512 * 1024**2), str(1024**2), "-1"]
    try:
        result = subprocess.run(
            [*argv, "ulimit -t; ulimit -v; ulimit -f; ulimit -c"],
            capture_output=True,
            timeout=10,
            check=False,
            env={"PATH": SAFE_PATH, "LANG": "C.UTF-8"},
        )
        subreaper = subprocess.run(
            [
                python,
                "-I",
                "-S",
                "-c",
                "import ctypes, sys; sys.exit(ctypes.CDLL(None).prctl(36, 1, 0, 0, 0))",
            ],
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return False, False
    # bash reports -v and -f in KiB and 1024-byte blocks.
    expected = ["7", str(512 * 1024), "1024", "0"]
    return result.stdout.decode().split() == expected, subreaper.returncode == 0


@functools.cache
def probe_isolation(python: str = sys.executable, namespaces: bool = True) -> Isolation:
    """Find out, by trying, which isolation this host gives. Cached: the host does not change."""
    unshare, nsenter, setpriv = (shutil.which(tool) for tool in ("unshare", "nsenter", "setpriv"))
    rlimits, subreaper = _probe_shim(python)
    if setpriv is not None:
        try:
            pdeath = (
                subprocess.run(
                    [setpriv, "--pdeathsig", "KILL", "--", "true"], timeout=10, check=False
                ).returncode
                == 0
            )
        except (OSError, subprocess.SubprocessError):
            pdeath = False
        setpriv = setpriv if pdeath else None
    got = _Namespaces(pid=False, net=False, user=False)
    if namespaces and unshare and nsenter:
        # Root creates namespaces directly; another user only inside a user namespace of its
        # own (where it is root), if the kernel allows unprivileged ones.
        user = os.geteuid() != 0
        # Best first: both namespaces; then each alone (a container may allow one only).
        for pid, net in ((True, True), (True, False), (False, True)):
            if _probe_holder(unshare, nsenter, setpriv, python, _Namespaces(pid, net, user)):
                got = _Namespaces(pid, net, user)
                break
    used = got.pid or got.net
    return Isolation(
        pid_namespace=got.pid,
        net_namespace=got.net,
        mount_namespace=got.pid,  # --mount-proc comes with the PID namespace
        user_namespace=got.user,
        child_subreaper=subreaper,
        rlimits=rlimits,
        parent_death_signal=setpriv is not None,
        runs_as_root=os.geteuid() == 0,
        unshare=unshare if used else None,
        nsenter=nsenter if used else None,
        setpriv=setpriv,
    )


# ---------------------------------------------------------------------------------------------
# Metadata, beside each sandbox directory


class SandboxMeta(msgspec.Struct, kw_only=True):
    id: str
    item_id: str
    worker_id: str
    path: str
    boot_id: str
    # Processes started before this (clock ticks after boot) are never the sandbox's.
    created_ticks: int
    # Whether its commands ran in a PID namespace (then killing init kills them all).
    pid_namespace: bool = False
    init_pid: int | None = None
    init_starttime: int | None = None
    # Every process group a command of this sandbox started (the no-PID-namespace fallback).
    pgids: list[int] = []
    # Kept by cleanup policy: reap_orphans leaves its files for the operator.
    kept: bool = False


def _write_meta(path: Path, meta: SandboxMeta) -> None:
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    tmp.write_bytes(msgspec.json.encode(meta))
    os.replace(tmp, path)


def _live_init(meta: SandboxMeta) -> int | None:
    """The sandbox's namespace init if it still runs (the very process recorded, not a reuse)."""
    if meta.init_pid is None or meta.init_starttime is None:
        return None
    return meta.init_pid if _same_process(meta.init_pid, meta.init_starttime) else None


def _terminate_recorded(meta: SandboxMeta) -> set[int]:
    """Kill what a sandbox's metadata says it runs, checking each pid is still the one recorded
    (pids are reused; pid_max may be as small as 32768). Returns the pids signalled."""
    if meta.boot_id != _boot_id():
        return set()  # Rebooted since: none of its processes can be running.
    killed: set[int] = set()
    init = _live_init(meta)
    if init is not None:
        # The kernel kills every process of the PID namespace with its init.
        _signal(init, signal.SIGKILL)
        killed.add(init)
    if not meta.pid_namespace and meta.pgids:  # no pgid recorded: nothing ever ran
        directory = meta.path
        pgids = set(meta.pgids)
        created = meta.created_ticks

        def belongs(proc: _Proc) -> bool:
            # Each command started a session whose id is its pgid; a later, unrelated group
            # that reused the number would also have to be a session of that id, and younger
            # than the sandbox. Not airtight (pids are reused), which is why namespaces are
            # preferred; the report says which mode runs.
            in_group = proc.pgid in pgids and proc.sid == proc.pgid
            return proc.starttime >= created and (in_group or _cwd_inside(proc.pid, directory))

        killed |= _stop_and_kill((), (), belongs)
    return killed


def _safe_name(value: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", value)[:64] or "_"


# ---------------------------------------------------------------------------------------------
# Output capture


class _Capture(asyncio.Protocol):
    """Reads one output pipe, keeping the first `limit` bytes and counting the rest."""

    def __init__(self, limit: int, done: asyncio.Future[None]) -> None:
        self._limit = limit
        self._chunks: list[bytes] = []
        self._kept = 0
        self.dropped = 0
        self.done = done

    def data_received(self, data: bytes) -> None:
        room = self._limit - self._kept
        if room > 0:
            self._chunks.append(data[:room])
            self._kept += min(room, len(data))
        self.dropped += max(0, len(data) - max(room, 0))

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_result(None)

    def text(self) -> str:
        text = b"".join(self._chunks).decode("utf-8", "replace")
        if self.dropped:
            text += f"\n[assay: output truncated, {self.dropped} more bytes not kept]\n"
        return text


# ---------------------------------------------------------------------------------------------


class LocalSandbox:
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
            init = _live_init(meta)
            if init is not None:
                return init
            assert self._iso.unshare is not None
            argv = _holder_argv(
                self._iso.unshare, self._iso.setpriv, self._provider.python, self._ns
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
            init = _child_of(holder.pid) if self._pid_ns else holder.pid
            proc = None if init is None else _read_stat(init)
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
            _write_meta(self._meta_path, self._meta)
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
        argv = [python, "-I", "-S", "-c", _SHIM, *self._limits(), command]
        if self.uses_namespaces:
            assert self._iso.nsenter is not None
            init = await self._ensure_holder()
            prefix = _nsenter_argv(self._iso.nsenter, init, str(self._dir), self._ns)
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
        out = _Capture(self._provider.output_limit, loop.create_future())
        err = _Capture(self._provider.output_limit, loop.create_future())
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
                feeder = asyncio.create_task(_feed(proc, stdin.encode()))
            try:
                await asyncio.wait_for(proc.wait(), max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                timed_out = True
                killed = _stop_and_kill([proc.pid], [pgid], spare=spare)
                try:
                    await asyncio.wait_for(proc.wait(), KILL_WAIT_SEC / 2)
                except TimeoutError:
                    proc.kill()
                    await proc.wait()
                await _wait_gone(killed, KILL_WAIT_SEC)
            # Output still in the pipes is read; a pipe a background child keeps open is not
            # waited for beyond the grace.
            grace = DRAIN_GRACE_SEC if timed_out else deadline - time.monotonic()
            await asyncio.wait([out.done, err.done], timeout=min(DRAIN_GRACE_SEC, max(0.05, grace)))
        except BaseException:
            # Cancelled (the item was cancelled or timed out above us) or failed: the command
            # must not outlive the call that started it.
            _stop_and_kill([proc.pid], [pgid], spare=spare)
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
        """The host path of `relative_path`, refused unless it stays inside the sandbox
        (no absolute paths, no `..`, no symlink pointing out)."""
        parts = Path(relative_path).parts
        if not relative_path or Path(relative_path).is_absolute() or ".." in parts:
            raise SandboxError(f"path {relative_path!r} escapes the sandbox")
        root = self._dir.resolve()
        target = (root / relative_path).resolve()
        if target != root and not target.is_relative_to(root):
            raise SandboxError(f"path {relative_path!r} escapes the sandbox")
        return target

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
        target = self._resolve(relative_path)
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
        init = _live_init(self._meta)
        if init is not None:
            _signal(init, signal.SIGKILL)
            await _wait_gone([init], KILL_WAIT_SEC)
        # Scanning /proc costs ~1.5 ms: only when a command of ours may still be running.
        killed = _stop_and_kill(self._running, self._running) if self._running else set()
        killed |= _terminate_recorded(self._meta)
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
        await _wait_gone(killed, KILL_WAIT_SEC)

    async def keep(self) -> None:
        """Stop every process but leave the files for an operator (cleanup policy), marked so
        that `reap_orphans` does not remove them. Not in the Sandbox protocol (yet)."""
        await self.kill_all()
        self._meta.kept = True
        self._save_meta()

    async def destroy(self) -> None:
        if not self._destroyed:
            await self.kill_all()
        self._destroyed = True
        try:
            await asyncio.to_thread(_remove, self._dir, self._meta_path)
        except OSError as exc:
            raise SandboxError(f"cannot remove sandbox {self.id}: {exc}") from exc


async def _feed(proc: asyncio.subprocess.Process, data: bytes) -> None:
    assert proc.stdin is not None
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        proc.stdin.write(data)
        await proc.stdin.drain()
    proc.stdin.close()


def _remove(directory: Path, meta_path: Path) -> None:
    """Remove a sandbox directory, then its metadata (so a crash in between leaves it findable
    by reap_orphans). Read-only folders a command left are made writable first; what another
    worker reaping at the same time already removed is not an error."""

    def retry(func: Callable[..., object], path: str, exc_info: tuple[object, ...]) -> None:
        if isinstance(exc_info[1], FileNotFoundError):
            return
        with contextlib.suppress(OSError):
            os.chmod(os.path.dirname(path), 0o700)
        func(path)

    shutil.rmtree(directory, onerror=retry)
    meta_path.unlink(missing_ok=True)


class LocalSandboxProvider:
    """Sandboxes as directories under `root` on this machine (see the module docstring)."""

    name: str = "local"

    def __init__(
        self,
        root: Path,
        *,
        namespaces: bool = True,
        output_limit: int = OUTPUT_LIMIT,
        python: str = sys.executable,
    ) -> None:
        self.root = Path(root)
        self.output_limit = output_limit
        # Any Python 3 works for the tiny shim and init; the worker's own is always there.
        self.python = python
        self._namespaces = namespaces
        self._isolation: Isolation | None = None

    @property
    def isolation(self) -> Isolation:
        """Probed on first use (a few hundred ms, once per process), not at import time."""
        if self._isolation is None:
            self._isolation = probe_isolation(self.python, self._namespaces)
        return self._isolation

    def isolation_report(self) -> Mapping[str, bool]:
        return self.isolation.report()

    async def provision(self, spec: SandboxSpec) -> LocalSandbox:
        if self._isolation is None:
            await asyncio.to_thread(lambda: self.isolation)
        sandbox_id = "--".join(
            (_safe_name(spec.item_id), _safe_name(spec.worker_id), secrets.token_hex(4))
        )
        directory = (self.root / sandbox_id).absolute()
        meta_path = self.root.absolute() / (sandbox_id + META_SUFFIX)
        meta = SandboxMeta(
            id=sandbox_id,
            item_id=spec.item_id,
            worker_id=spec.worker_id,
            path=str(directory),
            boot_id=_boot_id(),
            created_ticks=_now_ticks(),
            pid_namespace=self.isolation.pid_namespace,
        )
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            # Metadata first: a crash right after mkdir still leaves the folder findable.
            _write_meta(meta_path, meta)
            directory.mkdir()
        except OSError as exc:
            raise SandboxError(f"cannot create sandbox under {self.root}: {exc}") from exc
        return LocalSandbox(self, spec, meta, meta_path)

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
        for meta in orphans:
            killed = await asyncio.to_thread(_terminate_recorded, meta)
            await _wait_gone(killed, KILL_WAIT_SEC)
            meta_path = self.root.absolute() / (meta.id + META_SUFFIX)
            try:
                await asyncio.to_thread(_remove, Path(meta.path), meta_path)
            except OSError as exc:
                raise SandboxError(f"cannot remove orphaned sandbox {meta.id}: {exc}") from exc
            reaped.append(meta.id)
        return reaped
