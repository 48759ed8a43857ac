"""The per-command shim of a weak sandbox.

argv = cpu_seconds memory_bytes file_size_bytes nproc command (a negative limit is not
applied). It marks itself a child subreaper, so every descendant that detaches while the
command runs stays below it, forks, applies the limits and execs `bash -c command`; it exits
with bash's status, 128+N when a signal killed it.
"""

import os
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from infrastructure.sandbox.local.programs.prelude import (
        apply_limits,
        become_subreaper,
        exit_code,
    )


def main() -> None:
    cpu, mem, fsize, nproc = (int(a) for a in sys.argv[1:5])
    become_subreaper()
    pid = os.fork()
    if pid == 0:
        try:
            apply_limits(cpu, mem, fsize, nproc)
            os.execvp("bash", ["bash", "-c", sys.argv[5]])
        except BaseException as exc:
            os.write(2, f"sandbox: cannot start bash: {exc}\n".encode())
        os._exit(126)
    while True:
        try:
            child, status = os.wait()
        except InterruptedError:
            continue
        if child == pid:
            os._exit(exit_code(status))


if __name__ == "__main__":
    main()
