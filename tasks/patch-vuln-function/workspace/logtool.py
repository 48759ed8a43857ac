"""Helpers behind the log viewer's search box."""

from __future__ import annotations

import subprocess


def count_matches(pattern: str, path: str) -> int:
    """How many lines of the file at `path` contain `pattern` (a fixed string, not a regex)."""
    command = f"grep -c -F -e '{pattern}' {path}"
    result = subprocess.run(command, shell=True, capture_output=True, text=True)
    return int(result.stdout.strip() or 0)


def tail(path: str, lines: int = 10) -> list[str]:
    """The last `lines` lines of the file at `path`."""
    with open(path, encoding="utf-8") as handle:
        return handle.read().splitlines()[-lines:]
