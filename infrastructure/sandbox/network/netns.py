"""Network namespaces bound to files, made and entered from the worker itself.

Creating a namespace, configuring its loopback and opening the DNS socket inside it are done
in a short-lived thread that enters the namespace with setns(2) and leaves again: the thread
dies afterwards, so a failure to leave can never leave one of the worker's threads in a
sandbox's namespace. This costs no process start (Python 3.11 has no os.setns, hence ctypes).
Commands that must run inside (nft) go through `nsenter --net=`.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import errno
import fcntl
import os
import socket
import struct
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

CLONE_NEWNET = 0x40000000
MS_BIND = 4096
MNT_DETACH = 2
SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
IFF_UP = 0x1

T = TypeVar("T")

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)


class NetnsError(OSError):
    pass


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise NetnsError(err, f"{what}: {os.strerror(err)}")


def _in_fresh_thread(fn: Callable[[], T]) -> T:
    """Run fn in a thread of its own (it may change that thread's namespace) and return its
    result or raise its exception."""
    box: list[T] = []
    failure: list[BaseException] = []

    def target() -> None:
        try:
            box.append(fn())
        except BaseException as exc:
            failure.append(exc)

    thread = threading.Thread(target=target, name="assay-netns", daemon=True)
    thread.start()
    thread.join()
    if failure:
        raise failure[0]
    return box[0]


def _set_loopback_up() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        ifreq = struct.pack("16sH14x", b"lo", 0)
        flags = struct.unpack("16sH14x", fcntl.ioctl(s, SIOCGIFFLAGS, ifreq))[1]
        fcntl.ioctl(s, SIOCSIFFLAGS, struct.pack("16sH14x", b"lo", flags | IFF_UP))


def _configure_current() -> None:
    _set_loopback_up()
    # Unprivileged services may listen on port 80 inside the item (this sysctl is per
    # namespace: opened from this thread, /proc/sys/net is the new namespace's).
    with open("/proc/sys/net/ipv4/ip_unprivileged_port_start", "w") as f:
        f.write("0")


def create_netns(path: Path, dns_address: tuple[str, int]) -> socket.socket:
    """Make a namespace bound at `path` (which must not exist), with lo up and unprivileged
    ports from 0, and return a non-blocking UDP socket bound to `dns_address` inside it. The
    socket is bound before any sandbox exists, so no sandbox can take the DNS port first."""
    path.touch(mode=0o600, exist_ok=False)

    def work() -> socket.socket:
        original = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            _check(_libc.unshare(CLONE_NEWNET), "unshare(CLONE_NEWNET)")
            try:
                _check(
                    _libc.mount(b"/proc/thread-self/ns/net", bytes(path), None, MS_BIND, None),
                    f"bind-mount the namespace at {path}",
                )
                _configure_current()
                sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                try:
                    sock.bind(dns_address)
                    sock.setblocking(False)
                except BaseException:
                    sock.close()
                    raise
                return sock
            finally:
                _check(_libc.setns(original, CLONE_NEWNET), "setns back to the host")
        finally:
            os.close(original)

    try:
        return _in_fresh_thread(work)
    except BaseException:
        remove_netns(path)
        raise


def remove_netns(path: Path) -> None:
    """Unmount and remove a namespace file; nothing to do if it is already gone. The namespace
    itself ends when its last process and socket are gone."""
    if _libc.umount2(bytes(path), MNT_DETACH) != 0:
        err = ctypes.get_errno()
        # EINVAL: not a mount point (never bound, or already unmounted); ENOENT: gone.
        if err not in (errno.EINVAL, errno.ENOENT):
            raise NetnsError(err, f"umount {path}: {os.strerror(err)}")
    path.unlink(missing_ok=True)


async def run(argv: Sequence[str], *, stdin: bytes | None = None, timeout: float = 10) -> bytes:
    """Run a command, return its stdout; raise NetnsError with its stderr if it fails."""
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(stdin), timeout)
    except BaseException:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        raise
    if proc.returncode != 0:
        message = err.decode(errors="replace").strip()
        raise NetnsError(errno.EIO, f"{' '.join(argv)} failed ({proc.returncode}): {message}")
    return out


async def run_in_netns(
    netns: str, argv: Sequence[str], *, stdin: bytes | None = None, timeout: float = 10
) -> bytes:
    return await run(["nsenter", f"--net={netns}", "--", *argv], stdin=stdin, timeout=timeout)
