"""Mounting and unmounting from the (root) worker: a size-bounded tmpfs per principal, so an
agent that fills its workspace meets ENOSPC instead of the host's disk, and the unmount of
item network files. Through libc directly: two system calls do not deserve a process each.
"""

from __future__ import annotations

import ctypes
import functools
import os
import re
from pathlib import Path

MNT_DETACH = 2


@functools.cache
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str, path: Path) -> None:
    if result != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{what}: {os.strerror(errno)}", str(path))


def mount_tmpfs(path: Path, *, size_bytes: int, uid: int, mode: int = 0o700) -> None:
    options = f"size={size_bytes},mode={mode:o},uid={uid},gid={uid},nr_inodes=65536"
    # MS_NOSUID | MS_NODEV. Not noexec: agents run programs they write (compiled exploits,
    # scripts), and honest work must not break.
    flags = 0x2 | 0x4
    result = _libc().mount(b"tmpfs", os.fsencode(path), b"tmpfs", flags, options.encode())
    _check(result, "mount tmpfs", path)


def unmount(path: Path) -> None:
    """Detach a mount (lazily: a process still holding it cannot keep the worker waiting)."""
    _check(_libc().umount2(os.fsencode(path), MNT_DETACH), "umount", path)


def mounts_below(folder: Path) -> list[Path]:
    """The mount points at or below `folder` in this process's mount namespace, deepest
    first (the order to unmount them in). /proc/self/mountinfo escapes spaces and the like
    as octal (`\\040`)."""
    root = str(folder)
    found = []
    try:
        with open("/proc/self/mountinfo") as mountinfo:
            for line in mountinfo:
                point = _unescape(line.split()[4])
                if point == root or point.startswith(root + "/"):
                    found.append(Path(point))
    except OSError:
        return []
    return sorted(found, key=lambda path: len(path.parts), reverse=True)


def _unescape(field: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda match: chr(int(match.group(1), 8)), field)
