"""Files in and out of containers as tar streams (`put_archive` / `get_archive`).

Paths are checked here, before the daemon sees them: writes only below the workspace, reads
only below the workspace or /tmp, never through a symbolic link. The daemon resolves a path
inside the container's own root (it cannot leave the container), but a link the agent planted
could still make the worker read a file of the image instead of the agent's output; so every
directory on the way is checked to be a real directory and the file itself a regular file.
"""

from __future__ import annotations

import io
import posixpath
import tarfile
import time
from collections.abc import Iterable
from pathlib import Path

from infrastructure.sandbox.protocol import WORKSPACE, SandboxError

READABLE_ROOTS = (WORKSPACE, "/tmp")


def workspace_relative(path: str) -> str:
    """A relative path inside the workspace, normalised; refused if empty, absolute or `..`."""
    if not path or path.startswith("/") or "\x00" in path:
        raise SandboxError(f"path {path!r} escapes the sandbox")
    parts = [part for part in path.split("/") if part not in ("", ".")]
    if not parts or ".." in parts:
        raise SandboxError(f"path {path!r} escapes the sandbox")
    return "/".join(parts)


def readable_path(path: str) -> tuple[str, list[str]]:
    """(root, components below it) of a path `get_file` may read: relative to the workspace,
    or absolute under the workspace or /tmp."""
    if "\x00" in path:
        raise SandboxError(f"path {path!r} escapes the sandbox")
    if not path.startswith("/"):
        return WORKSPACE, workspace_relative(path).split("/")
    normal = posixpath.normpath(path)
    if ".." in path.split("/"):
        raise SandboxError(f"path {path!r} escapes the sandbox")
    for root in READABLE_ROOTS:
        if normal.startswith(root + "/"):
            return root, normal[len(root) + 1 :].split("/")
    raise SandboxError(f"path {path!r} is outside {' and '.join(READABLE_ROOTS)}")


def _owned(info: tarfile.TarInfo, uid: int, gid: int) -> tarfile.TarInfo:
    info.uid, info.gid = uid, gid
    if not info.mtime:
        info.mtime = int(time.time())  # a fresh TarInfo says 1970
    info.uname = info.gname = ""
    return info


def _parents(relative: str) -> list[str]:
    parts = relative.split("/")[:-1]
    return ["/".join(parts[: i + 1]) for i in range(len(parts))]


def file_tar(relative: str, content: bytes, mode: int, uid: int, gid: int) -> bytes:
    """A tar of one file and its parent folders, owned by uid:gid (the daemon keeps the
    owners in the headers, so the agent owns what the worker put in its workspace)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for folder in _parents(relative):
            info = tarfile.TarInfo(folder)
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(_owned(info, uid, gid))
        info = tarfile.TarInfo(relative)
        info.size, info.mode = len(content), mode & 0o7777
        tar.addfile(_owned(info, uid, gid), io.BytesIO(content))
    return buffer.getvalue()


def tree_tar(
    source: Path, exclude: Iterable[str], uid: int, gid: int, extra: Iterable[str] = ()
) -> bytes:
    """A tar of `source`'s contents (modes and links kept, owners set to uid:gid) without the
    paths in `exclude` (relative to `source`; a folder excludes its contents). `extra` names
    empty files appended last (a context service's "files are complete" marker)."""
    skip = {entry.strip("/") for entry in exclude}

    def keep(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
        name = info.name.removeprefix("./")
        if any(name == s or name.startswith(s + "/") for s in skip):
            return None
        return _owned(info, uid, gid)

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for child in sorted(source.iterdir()):
            tar.add(child, arcname=child.name, recursive=True, filter=keep)
        for name in extra:
            tar.addfile(_owned(tarfile.TarInfo(name), uid, gid), io.BytesIO(b""))
    return buffer.getvalue()


def single_file(stream: bytes, path: str) -> bytes:
    """The content of the one regular file a `get_archive` of `path` returned; a link, a
    folder or anything else is refused."""
    with tarfile.open(fileobj=io.BytesIO(stream), mode="r:") as tar:
        members = tar.getmembers()
        if len(members) != 1:
            raise SandboxError(f"{path!r} is not a regular file")
        member = members[0]
        if member.issym() or member.islnk():
            raise SandboxError(f"{path!r} is a link; links are not followed out of the sandbox")
        if not member.isfile():
            raise SandboxError(f"{path!r} is not a regular file")
        handle = tar.extractfile(member)
        if handle is None:
            raise SandboxError(f"{path!r} is not a regular file")
        return handle.read()
