"""Mounting and unmounting from the (root) worker: a size-bounded tmpfs per principal, so an
agent that fills its workspace meets ENOSPC instead of the host's disk, and the unmount of
item network files. Through libc directly: two system calls do not deserve a process each.
"""

from __future__ import annotations

import ctypes
import functools
import os
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


def is_mount_point(path: Path) -> bool:
    try:
        return os.path.ismount(path)
    except OSError:
        return False
