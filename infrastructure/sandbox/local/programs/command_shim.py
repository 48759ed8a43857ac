"""The per-command shim of a weak sandbox.

argv = cpu_seconds memory_bytes file_size_bytes nproc command (a negative limit is not
applied). It marks itself a child subreaper, so every descendant that detaches while the
command runs stays below it, forks, applies the limits and execs `bash -c command`; it exits
with bash's status, 128+N when a signal killed it.
"""

import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from infrastructure.sandbox.local.programs.prelude import lead_bash


def main() -> None:
    cpu, mem, fsize, nproc = (int(a) for a in sys.argv[1:5])
    lead_bash(sys.argv[5], (cpu, mem, fsize, nproc))


if __name__ == "__main__":
    main()
