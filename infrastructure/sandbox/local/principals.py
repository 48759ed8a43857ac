"""Host uids for sandbox principals: each live view of a root worker gets one of its own.

Two sandboxes that share a uid could signal, trace or read each other; a view that shared the
worker's uid could touch the worker's files. So a root worker hands every principal (agent,
service, checker) a uid from a configured range that no other live principal on this host
holds, across worker processes too: a uid is held by an exclusive `flock` on a file named for
it, which the kernel releases when the holder closes it or dies, so a crashed worker's uids
come back by themselves. A worker that is not root can only give its own uid (bwrap maps it).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import random
from pathlib import Path

from infrastructure.sandbox.protocol import SandboxError

DEFAULT_UID_RANGE = (200_000, 299_999)


def parse_uid_range(text: str) -> tuple[int, int]:
    """`FIRST-LAST`, both inclusive, above the system's own uids."""
    try:
        first, last = (int(part) for part in text.split("-", 1))
    except ValueError:
        raise ValueError(f"sandbox uid range {text!r} is not FIRST-LAST") from None
    if not 1000 <= first <= last < 2**32 - 1:
        raise ValueError(f"sandbox uid range {text!r} must lie within 1000-4294967294")
    return first, last


class UidPool:
    def __init__(self, lock_dir: Path, uid_range: tuple[int, int] = DEFAULT_UID_RANGE) -> None:
        self._lock_dir = lock_dir
        self._first, self._last = uid_range
        self._held: dict[int, int] = {}  # uid -> lock file descriptor

    def acquire(self) -> int:
        if os.geteuid() != 0:
            return os.geteuid()
        self._lock_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        size = self._last - self._first + 1
        start = random.randrange(size)
        # Random start: several workers allocating at once rarely try the same uid first.
        for offset in range(min(size, 4096)):
            uid = self._first + (start + offset) % size
            if uid in self._held:
                continue
            fd = os.open(self._lock_dir / str(uid), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            self._held[uid] = fd
            return uid
        raise SandboxError(f"no free sandbox uid in {self._first}-{self._last}")

    def release(self, uid: int) -> None:
        fd = self._held.pop(uid, None)
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)
