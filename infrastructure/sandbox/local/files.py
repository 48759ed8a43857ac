"""Reading and placing files of a sandbox from the worker's side, without being led out of it.

The worker runs as root; the agent controls what its workspace holds. A path the agent could
have turned into a symlink (`flag.txt -> /etc/shadow`, a folder swapped for a link to `/`) must
never make the worker read or write a host file. `read_beneath` opens each component with
O_NOFOLLOW relative to the folder before it, so no link is followed anywhere along the path.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path, PurePosixPath

from infrastructure.sandbox.protocol import SandboxError, SandboxFileNotFound

__all__ = [
    "SandboxFileNotFound",
    "read_beneath",
    "relative_parts",
    "resolve_inside",
    "tree_files",
]


def relative_parts(path: str) -> tuple[str, ...]:
    """The components of a relative path that stays below its root, else SandboxError."""
    pure = PurePosixPath(path)
    if not path or pure.is_absolute() or ".." in pure.parts or not pure.parts:
        raise SandboxError(f"path {path!r} escapes the sandbox")
    return tuple(part for part in pure.parts if part != ".")


def resolve_inside(root: Path, relative_path: str) -> Path:
    """The host path of `relative_path` below `root`, refused unless it stays inside after
    resolving links. For a sandbox whose processes run as the worker (the weak mode)."""
    relative_parts(relative_path)
    base = root.resolve()
    target = (base / relative_path).resolve()
    if target != base and not target.is_relative_to(base):
        raise SandboxError(f"path {relative_path!r} escapes the sandbox")
    return target


def read_beneath(root: Path, parts: tuple[str, ...], limit: int) -> bytes:
    """Read the regular file `root/parts...` following no symlink on the way, at most `limit`
    bytes (a larger file is refused: the agent chose its size)."""
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(root, flags | os.O_DIRECTORY)
    try:
        for part in parts[:-1]:
            next_fd = os.open(part, flags | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = next_fd
        # O_NONBLOCK: a FIFO planted under the name must not hang the worker on open.
        leaf = os.open(parts[-1], flags | os.O_NONBLOCK, dir_fd=fd)
    except FileNotFoundError:
        os.close(fd)
        raise
    except OSError as exc:
        os.close(fd)
        raise SandboxError(f"cannot read {'/'.join(parts)!r}: {exc.strerror}") from exc
    os.close(fd)
    try:
        info = os.fstat(leaf)
        if not stat.S_ISREG(info.st_mode):
            raise SandboxError(f"{'/'.join(parts)!r} is not a regular file")
        if info.st_size > limit:
            raise SandboxError(f"{'/'.join(parts)!r} is larger than {limit} bytes")
        chunks = []
        while chunk := os.read(leaf, 1 << 20):
            chunks.append(chunk)
        return b"".join(chunks)[:limit]
    finally:
        os.close(leaf)


def tree_files(source: Path, exclude: frozenset[str]) -> list[tuple[str, int, bytes]]:
    """The regular files below `source` as (relative path, mode, content), in path order,
    without links and without `exclude` (paths relative to `source`; excluding a folder
    excludes its contents). Runs off the loop: a task tree is read whole."""
    skip = {entry.strip("/") for entry in exclude}
    files: list[tuple[str, int, bytes]] = []
    for folder, folders, names in os.walk(source):
        relative = PurePosixPath(Path(folder).relative_to(source).as_posix())
        folders[:] = sorted(f for f in folders if (relative / f).as_posix() not in skip)
        for name in sorted(names):
            path = (relative / name).as_posix()
            if path in skip:
                continue
            info = os.lstat(os.path.join(folder, name))
            if stat.S_ISREG(info.st_mode):
                with open(os.path.join(folder, name), "rb") as handle:
                    files.append((path, info.st_mode, handle.read()))
    return files
