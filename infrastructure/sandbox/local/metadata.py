"""A sandbox's metadata file, beside its directory: what a later worker needs to find and end
the sandbox of a worker that died (`reap_orphans`), and to leave kept ones alone.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import signal
from collections.abc import Callable
from pathlib import Path

import msgspec

from infrastructure.sandbox.local.processes import (
    Proc,
    boot_id,
    cwd_inside,
    same_process,
    send_signal,
    stop_and_kill,
)


class SandboxMeta(msgspec.Struct, kw_only=True):
    id: str
    item_id: str
    worker_id: str
    path: str
    boot_id: str
    # Processes started before this (clock ticks after boot) are never the sandbox's.
    created_ticks: int
    # Whether its commands ran in a PID namespace (then killing init kills them all).
    pid_namespace: bool = False
    init_pid: int | None = None
    init_starttime: int | None = None
    # Every process group a command of this sandbox started (the no-PID-namespace fallback).
    pgids: list[int] = []
    # Kept by cleanup policy: reap_orphans leaves its files for the operator.
    kept: bool = False
    # Strict mode. Nothing more is recorded: its views end by themselves when their worker
    # goes (their exec server sees its control channel close), its mounts are found under
    # `path`, and its item network keeps metadata of its own (ItemNetwork.reap_orphans).
    strict: bool = False


def write_meta(path: Path, meta: SandboxMeta) -> None:
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    tmp.write_bytes(msgspec.json.encode(meta))
    os.replace(tmp, path)


def live_init(meta: SandboxMeta) -> int | None:
    """The sandbox's namespace init if it still runs (the very process recorded, not a reuse)."""
    if meta.init_pid is None or meta.init_starttime is None:
        return None
    return meta.init_pid if same_process(meta.init_pid, meta.init_starttime) else None


def terminate_recorded(meta: SandboxMeta) -> set[int]:
    """Kill what a sandbox's metadata says it runs, checking each pid is still the one recorded
    (pids are reused; pid_max may be as small as 32768). Returns the pids signalled."""
    if meta.boot_id != boot_id():
        return set()  # Rebooted since: none of its processes can be running.
    killed: set[int] = set()
    init = live_init(meta)
    if init is not None:
        # The kernel kills every process of the PID namespace with its init.
        send_signal(init, signal.SIGKILL)
        killed.add(init)
    if not meta.pid_namespace and meta.pgids:  # no pgid recorded: nothing ever ran
        directory = meta.path
        pgids = set(meta.pgids)
        created = meta.created_ticks

        def belongs(proc: Proc) -> bool:
            # Each command started a session whose id is its pgid; a later, unrelated group
            # that reused the number would also have to be a session of that id, and younger
            # than the sandbox. Not airtight (pids are reused), which is why namespaces are
            # preferred; the report says which mode runs.
            in_group = proc.pgid in pgids and proc.sid == proc.pgid
            return proc.starttime >= created and (in_group or cwd_inside(proc.pid, directory))

        killed |= stop_and_kill((), (), belongs)
    return killed


def safe_name(value: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", value)[:64] or "_"


def remove_sandbox_files(directory: Path, meta_path: Path) -> None:
    """Remove a sandbox directory, then its metadata (so a crash in between leaves it findable
    by reap_orphans). Read-only folders a command left are made writable first; what another
    worker reaping at the same time already removed is not an error."""

    def retry(func: Callable[..., object], path: str, exc_info: tuple[object, ...]) -> None:
        if isinstance(exc_info[1], FileNotFoundError):
            return
        with contextlib.suppress(OSError):
            os.chmod(os.path.dirname(path), 0o700)
        func(path)

    shutil.rmtree(directory, onerror=retry)
    meta_path.unlink(missing_ok=True)
