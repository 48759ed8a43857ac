"""Programs that run inside a sandbox, not in the worker: each is a real module (linted and
type-checked like the rest) whose source the worker hands to `python3 -I -S -c`.

They use the standard library only, run under whichever Python 3 the sandbox's view offers
(the host's `/usr/bin/python3` for the strict view), and do nothing when imported: their work
is behind `if __name__ == "__main__"`.
"""

from __future__ import annotations

import functools
import subprocess
from pathlib import Path

# Compiles stdin with the Python that will run it, and writes the code object (marshal).
_COMPILE = (
    "import marshal, sys\n"
    "source = sys.stdin.buffer.read().decode()\n"
    "sys.stdout.buffer.write(marshal.dumps(compile(source, sys.argv[1], 'exec')))\n"
)


@functools.cache
def source(name: str) -> str:
    """The source text of the program module `name` (read once per process)."""
    return (Path(__file__).parent / f"{name}.py").read_text(encoding="utf-8")


# Programs that start commands need the prelude's helpers.
_NEEDS_PRELUDE = frozenset({"command_shim", "exec_server"})


@functools.cache
def program(name: str) -> str:
    """The text to hand to `python3 -I -S -c` for program `name`."""
    text = source(name)
    return source("prelude") + "\n" + text if name in _NEEDS_PRELUDE else text


@functools.cache
def compiled(name: str, python: str) -> bytes | None:
    """Program `name` compiled by `python` (once per process), as `marshal` data for that
    same interpreter (a code object only loads in the version that made it); None if that
    Python cannot compile it (then the caller hands over the source)."""
    try:
        result = subprocess.run(
            [python, "-I", "-S", "-c", _COMPILE, name],
            input=program(name).encode(),
            capture_output=True,
            timeout=30,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout or None
