"""PID 1 of a weak sandbox's namespaces.

argv[1] == "net": bring the loopback interface up (a new network namespace starts with `lo`
down). argv[2], when not "-", is a folder bound over /tmp (in the holder's own mount
namespace), so the sandbox's /tmp is its own. Then say "ready", let go of the worker's pipes
and reap orphans forever (SIGCHLD blocked + sigwait: no race between reaping and waiting).
0x8913/0x8914 are
SIOCGIFFLAGS/SIOCSIFFLAGS, 0x1|0x40 IFF_UP|IFF_RUNNING: no `ip` needed.
"""

import fcntl
import os
import signal
import socket
import struct
import sys


def bring_loopback_up() -> None:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    req = struct.pack("16sH22x", b"lo", 0)
    flags = struct.unpack("16sH", fcntl.ioctl(s, 0x8913, req)[:18])[1]
    fcntl.ioctl(s, 0x8914, struct.pack("16sH22x", b"lo", flags | 0x1 | 0x40))
    s.close()


def bind_private_tmp(folder: str) -> None:
    import ctypes

    ms_bind = 4096
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.mount(folder.encode(), b"/tmp", None, ms_bind, None) != 0:
        raise OSError(ctypes.get_errno(), f"cannot bind {folder} over /tmp")


def main() -> None:
    if sys.argv[1:2] == ["net"]:
        bring_loopback_up()
    if len(sys.argv) > 2 and sys.argv[2] != "-":
        bind_private_tmp(sys.argv[2])
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


if __name__ == "__main__":
    main()
