"""Processes as the worker sees them in /proc (the host PID namespace): finding a sandbox's
trees, stopping and killing them without letting a child escape, and waiting for them to go.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import signal
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import NamedTuple

# The unit of /proc/<pid>/stat starttime.
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


class Proc(NamedTuple):
    pid: int
    ppid: int
    pgid: int
    sid: int
    state: str
    starttime: int  # clock ticks after boot: with the pid, identifies a process across reuse


def read_stat(pid: int) -> Proc | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            raw = handle.read().decode("ascii", "replace")
    except OSError:
        return None
    # The command name may contain spaces and parentheses: split after the last ')'.
    fields = raw[raw.rfind(")") + 2 :].split()
    try:
        return Proc(pid, int(fields[1]), int(fields[2]), int(fields[3]), fields[0], int(fields[19]))
    except (IndexError, ValueError):
        return None


def process_table() -> dict[int, Proc]:
    table: dict[int, Proc] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            proc = read_stat(int(entry.name))
            if proc is not None:
                table[proc.pid] = proc
    return table


def alive(proc: Proc | None) -> bool:
    # A zombie has released everything but its pid; for "is the tree gone" it is gone.
    return proc is not None and proc.state not in ("Z", "X")


def same_process(pid: int, starttime: int) -> bool:
    proc = read_stat(pid)
    return proc is not None and alive(proc) and proc.starttime == starttime


@functools.cache
def boot_id() -> str:
    # Read once: a process never outlives the boot it started in.
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def now_ticks() -> int:
    """The current time in the unit of /proc/<pid>/stat starttime, rounded down a little.
    starttime counts from boot on the boot-time clock (as /proc/uptime does), read here without
    opening a file on every provision."""
    uptime = time.clock_gettime(time.CLOCK_BOOTTIME)
    return max(0, int(uptime * _CLOCK_TICKS) - 2)


def cwd_inside(pid: int, directory: str) -> bool:
    try:
        cwd = os.readlink(f"/proc/{pid}/cwd")
    except OSError:
        return False
    # A removed directory shows as "<path> (deleted)".
    return cwd in (directory, directory + " (deleted)") or cwd.startswith(directory + "/")


def send_signal(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)


def stop_and_kill(
    roots: Iterable[int],
    pgids: Iterable[int] = (),
    match: Callable[[Proc], bool] | None = None,
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
        table = process_table()
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
        new = {pid for pid in members - marked - never if alive(table[pid])}
        if not new:
            break
        for pid in new:
            if table[pid].ppid not in spare:
                send_signal(pid, signal.SIGSTOP)
        marked |= new
    for pid in marked:
        send_signal(pid, signal.SIGKILL)
    return marked


async def wait_gone(pids: Iterable[int], timeout: float) -> bool:
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
            polled = {pid for pid in polled if alive(read_stat(pid))}
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


def child_of(pid: int) -> int | None:
    """A child of `pid`: one read of /proc/<pid>/task/<pid>/children where the kernel has it
    (a scan of the whole process table costs ~8 ms on a busy worker), else that scan."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as listing:
            children = listing.read().split()
        return int(children[0]) if children else None
    except OSError:
        return next((p.pid for p in process_table().values() if p.ppid == pid), None)


def host_pid_of(parent: int, ns_pid: int) -> int | None:
    """The host pid of the child of `parent` whose pid in its own (innermost) PID namespace is
    `ns_pid`: the last field of the `NSpid:` line of /proc/<pid>/status."""
    try:
        with open(f"/proc/{parent}/task/{parent}/children") as listing:
            children = [int(pid) for pid in listing.read().split()]
    except OSError:
        children = [p.pid for p in process_table().values() if p.ppid == parent]
    for child in children:
        try:
            with open(f"/proc/{child}/status") as status:
                for line in status:
                    if line.startswith("NSpid:"):
                        if int(line.split()[-1]) == ns_pid:
                            return child
                        break
        except (OSError, ValueError):
            continue
    return None
