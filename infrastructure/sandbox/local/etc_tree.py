"""The `/etc` every strict view shows, as one read-only folder instead of one bind per entry.

bwrap reads the whole `/proc/self/mountinfo` after every bind it makes (to remount it
read-only), and that table holds every mount of the host, the other items' tmpfs folders and
network files included: binding the allow-list of `/etc` entry by entry (24 binds) cost each
view start 3 ms of CPU with no other item running and 4.6 ms with 32 running (measured with
`setpriv ... bwrap ... -- /bin/true`). So the worker copies the allow-listed entries once per
process into a root-owned folder and every view binds that one folder at `/etc`.

The copy keeps links as links (they point into `/usr` or the copy itself, which the view
shows) and leaves out private key folders (`ssl/private`: the principals could never read it,
and nothing in a sandbox needs the host's keys). It also holds empty `passwd`, `group`,
`hosts` and `resolv.conf`, which each view covers with its own generated ones. A change to the
host's `/etc` is picked up by the next worker process: the folder's name is a fingerprint of
what it copied, so workers of one host share a copy while `/etc` is unchanged.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import secrets
import shutil
from collections.abc import Iterable
from pathlib import Path

HOST_ETC = Path("/etc")
# Files each view generates (`--ro-bind-data` over these placeholders).
GENERATED = ("passwd", "group", "hosts", "resolv.conf")
# Never copied, whatever the allow-list says: host secrets.
PRIVATE = frozenset({"private"})


def _fingerprint(names: Iterable[str], source: Path) -> str:
    digest = hashlib.sha256()
    for name in names:
        top = source / name
        paths = [top]
        if top.is_dir() and not top.is_symlink():
            paths += sorted(
                Path(folder) / entry
                for folder, dirs, files in os.walk(top)
                for entry in (*dirs, *files)
            )
        for path in paths:
            try:
                info = path.lstat()
            except OSError:
                continue
            digest.update(f"{path}\0{info.st_mode}\0{info.st_size}\0{info.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def _ignore_private(folder: str, entries: list[str]) -> set[str]:
    return {entry for entry in entries if entry in PRIVATE}


def _copy(names: Iterable[str], source: Path, target: Path) -> None:
    target.mkdir(mode=0o755)
    for name in names:
        path = source / name
        if path.is_symlink():
            os.symlink(os.readlink(path), target / name)
        elif path.is_dir():
            shutil.copytree(path, target / name, symlinks=True, ignore=_ignore_private)
        elif path.is_file():
            shutil.copy2(path, target / name)
    for name in GENERATED:
        (target / name).unlink(missing_ok=True)
        (target / name).touch(mode=0o644)
    target.chmod(0o755)


@functools.cache
def etc_tree(parent: Path, names: tuple[str, ...], source: Path = HOST_ETC) -> str:
    """The folder holding the copy of `names` from `source` (made on first call, once per
    process and parent). `parent` must be traversable by every principal's uid."""
    present = tuple(name for name in names if os.path.lexists(source / name))
    final = parent / f"etc-{_fingerprint(present, source)}"
    if final.is_dir():
        return str(final)
    parent.mkdir(parents=True, exist_ok=True, mode=0o711)
    building = parent / f".etc-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        _copy(present, source, building)
        try:
            building.rename(final)
        except OSError:
            if not final.is_dir():  # another worker won the race: its copy is the same
                raise
    finally:
        with contextlib.suppress(OSError):
            shutil.rmtree(building)
    return str(final)
