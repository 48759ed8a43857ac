"""The item's network namespace: one per item, shared by its agent, services and checker.

Made by the (root) worker and kept alive by a bind mount on a file, so no holder process is
needed: `unshare --net=FILE true`. Inside it only `lo` exists (up), and unprivileged processes
may bind low ports (`ip_unprivileged_port_start=0`), so a service can listen on 80 without a
capability. Every view joins it with `nsenter --net=FILE` before dropping to its uid.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
from pathlib import Path

from infrastructure.sandbox.local.constants import SAFE_PATH
from infrastructure.sandbox.local.mounts import unmount
from infrastructure.sandbox.protocol import SandboxError

_SETUP = "ip link set lo up && echo 0 > /proc/sys/net/ipv4/ip_unprivileged_port_start"


async def _run(*argv: str) -> tuple[int, bytes]:
    process = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        env={"PATH": SAFE_PATH, "LANG": "C.UTF-8"},
    )
    _, err = await process.communicate()
    return process.returncode or 0, err


async def create_netns(path: Path) -> None:
    unshare, nsenter = (
        shutil.which("unshare", path=SAFE_PATH),
        shutil.which("nsenter", path=SAFE_PATH),
    )
    if unshare is None or nsenter is None:
        raise SandboxError("unshare and nsenter (util-linux) are needed for the item network")
    try:
        path.touch(mode=0o600, exist_ok=False)
    except OSError as exc:
        raise SandboxError(f"cannot create the item network file {path}: {exc}") from exc
    code, err = await _run(unshare, f"--net={path}", "true")
    if code == 0:
        code, err = await _run(nsenter, f"--net={path}", "sh", "-c", _SETUP)
    if code != 0:
        await destroy_netns(path)
        raise SandboxError("cannot set up the item network: " + err.decode(errors="replace"))


async def destroy_netns(path: Path) -> None:
    """Unmount and remove; idempotent. The namespace itself goes with its last process."""

    def remove() -> None:
        with contextlib.suppress(OSError):
            unmount(path)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()

    await asyncio.to_thread(remove)
