"""Memory, process-count and CPU limits per sandbox view through cgroups (v1 here).

A cgroup bounds a whole view whatever its processes do: a fork bomb meets `pids.max`, a memory
hog `memory.limit_in_bytes` (the view's tmpfs pages count too), a busy loop gets at most the
CPU share of `cpu.cfs_quota_us`. Where the host offers no writable cgroup hierarchy (not root,
cgroup v2 without delegation) the views fall back to rlimits alone, and the isolation report
says which limits are enforced.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
from pathlib import Path

from infrastructure.sandbox.protocol import SandboxError

V1_ROOT = Path("/sys/fs/cgroup")
PARENT = "assay"
CFS_PERIOD_US = 100_000


@functools.cache
def available_controllers() -> frozenset[str]:
    """The v1 controllers this process can make child groups in (tried once, for real)."""
    found = set()
    if os.geteuid() != 0:
        return frozenset()
    for controller in ("memory", "pids", "cpu"):
        base = V1_ROOT / controller
        if not (base / "cgroup.procs").is_file():
            continue
        probe = base / PARENT / f"probe-{os.getpid()}"
        try:
            probe.mkdir(parents=True, exist_ok=True)
            probe.rmdir()
            found.add(controller)
        except OSError:
            continue
    return frozenset(found)


class Cgroup:
    """One view's group in each available controller."""

    def __init__(self, name: str, *, memory_bytes: int, max_processes: int, cpus: float) -> None:
        self.paths: list[Path] = []
        settings = {
            "memory": {"memory.limit_in_bytes": str(memory_bytes)},
            "pids": {"pids.max": str(max_processes)},
            "cpu": {
                "cpu.cfs_period_us": str(CFS_PERIOD_US),
                "cpu.cfs_quota_us": str(int(cpus * CFS_PERIOD_US)),
            },
        }
        try:
            for controller in sorted(available_controllers()):
                path = V1_ROOT / controller / PARENT / name
                path.mkdir(parents=True, exist_ok=True)
                self.paths.append(path)
                for knob, value in settings[controller].items():
                    (path / knob).write_text(value)
        except OSError as exc:
            self.remove()
            raise SandboxError(f"cannot set up the sandbox's cgroup {name}: {exc}") from exc

    async def add(self, pid: int) -> None:
        """Move a process (and so everything it forks later) into the group.

        Each write to a v1 `cgroup.procs` waits for an RCU grace period in the kernel: about
        4 ms here, asleep rather than busy. Written from the event loop, the three controllers
        stalled the worker's every item ~13 ms per view start; from threads, side by side,
        nothing else waits and the three waits overlap."""

        def move(path: Path) -> None:
            (path / "cgroup.procs").write_text(str(pid))

        try:
            await asyncio.gather(*(asyncio.to_thread(move, path) for path in self.paths))
        except OSError as exc:
            raise SandboxError(f"cannot move pid {pid} into its cgroup: {exc}") from exc

    def remove(self) -> None:
        """Remove the groups; only empty ones can go (call once the view's processes are
        gone). A group still busy is left for `remove_stale`."""
        for path in self.paths:
            with contextlib.suppress(OSError):
                path.rmdir()
        self.paths = []


def remove_stale(prefix: str) -> None:
    """Remove the (empty) groups whose name starts with `prefix` (orphan reaping)."""
    for controller in available_controllers():
        parent = V1_ROOT / controller / PARENT
        with contextlib.suppress(OSError):
            for child in parent.iterdir():
                if child.name.startswith(prefix):
                    with contextlib.suppress(OSError):
                        child.rmdir()
