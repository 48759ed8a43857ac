"""What isolation the weak mode can have on this host, found once by trying it.

The weak mode is the namespaces-and-rlimits sandbox Assay ran before the strict bubblewrap view
(see `weak.py`): a PID and network namespace where the kernel allows, the host's file system.
"""

from __future__ import annotations

import functools
import os
import select
import shutil
import signal
import subprocess
import sys
from typing import NamedTuple

import msgspec

from infrastructure.sandbox.local.constants import HOLDER_START_SEC, SAFE_PATH
from infrastructure.sandbox.local.processes import child_of, send_signal
from infrastructure.sandbox.local.programs import program


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

    def for_sandbox(self, network: bool) -> Namespaces:
        """The namespaces of a sandbox: a network namespace only when it has no network."""
        net = self.net_namespace and not network
        pid = self.pid_namespace
        return Namespaces(pid=pid, net=net, user=self.user_namespace and (pid or net))

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


class Namespaces(NamedTuple):
    pid: bool
    net: bool
    # A non-root worker needs a user namespace (where it is root) to create the others.
    user: bool


def holder_argv(
    unshare: str, setpriv: str | None, python: str, ns: Namespaces, tmp: str | None = None
) -> list[str]:
    """The holder command; `tmp` (with a PID namespace, which brings a mount namespace) is
    bound over /tmp for every command of the sandbox."""
    argv = [setpriv, "--pdeathsig", "KILL", "--"] if setpriv else []
    argv.append(unshare)
    if ns.user:
        argv += ["--user", "--map-root-user"]
    if ns.pid:
        argv += ["--pid", "--fork", "--kill-child", "--mount-proc"]
    if ns.net:
        argv.append("--net")
    return [
        *argv,
        "--",
        python,
        "-I",
        "-S",
        "-c",
        program("namespace_init"),
        "net" if ns.net else "-",
        tmp if tmp is not None and ns.pid else "-",
    ]


def nsenter_argv(nsenter: str, init_pid: int, workdir: str, ns: Namespaces) -> list[str]:
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


def _probe_holder(
    unshare: str, nsenter: str, setpriv: str | None, python: str, ns: Namespaces
) -> bool:
    """Start a holder with these namespaces, enter it once, check what we got, tear it down."""
    argv = holder_argv(unshare, setpriv, python, ns)
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
        init = child_of(holder.pid) if ns.pid else holder.pid
        if init is None:
            return False
        flags = ["pid" if ns.pid else "-", "net" if ns.net else "-"]
        check = [python, "-I", "-S", "-c", program("probe_check"), *flags]
        result = subprocess.run(
            [*nsenter_argv(nsenter, init, "/", ns), *check],
            capture_output=True,
            timeout=10,
            check=False,
        )
        return result.returncode == 0 and result.stdout.strip() == b"ok"
    except (OSError, subprocess.SubprocessError):
        return False
    finally:
        if init is None and ns.pid:
            init = child_of(holder.pid)
        if init is not None:
            send_signal(init, signal.SIGKILL)
        holder.kill()
        holder.wait()


def _probe_shim(python: str) -> tuple[bool, bool]:
    """(rlimits applied, subreaper available), by running the shim with known limits."""
    argv = [
        python,
        "-I",
        "-S",
        "-c",
        program("command_shim"),
        "7",
        str(512 * 1024**2),
        str(1024**2),
        "-1",
    ]
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
    got = Namespaces(pid=False, net=False, user=False)
    if namespaces and unshare and nsenter:
        # Root creates namespaces directly; another user only inside a user namespace of its
        # own (where it is root), if the kernel allows unprivileged ones.
        user = os.geteuid() != 0
        # Best first: both namespaces; then each alone (a container may allow one only).
        for pid, net in ((True, True), (True, False), (False, True)):
            if _probe_holder(unshare, nsenter, setpriv, python, Namespaces(pid, net, user)):
                got = Namespaces(pid, net, user)
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
