"""Shared by the strict-sandbox suites: a provider that gives the strict view, or a skip with the
reason (a failure under CI=true, where the host must give it: .ci/run installs bubblewrap)."""

from __future__ import annotations

import os
from pathlib import Path

from infrastructure.sandbox.local import LocalSandboxProvider, StrictSandbox
from infrastructure.sandbox.local.strict_probe import probe_strict
from infrastructure.sandbox.protocol import SandboxSpec
from tests.ci import unavailable


def require_strict() -> None:
    problem = probe_strict().problem
    if problem is not None:
        unavailable("the strict sandbox", problem)


def require_root() -> None:
    if os.geteuid() != 0:
        unavailable("a root worker", "distinct uids, item network, cgroups, tmpfs quota")


def strict_provider(root: Path, **options: object) -> LocalSandboxProvider:
    require_strict()
    return LocalSandboxProvider(root, isolation="strict", **options)  # type: ignore[arg-type]


def spec(**fields: object) -> SandboxSpec:
    values: dict[str, object] = {"item_id": "item-1", "worker_id": "worker-1"} | fields
    return SandboxSpec(**values)  # type: ignore[arg-type]


async def provision(root: Path, **fields: object) -> StrictSandbox:
    box = await strict_provider(root).provision(spec(**fields))
    assert isinstance(box, StrictSandbox)
    return box


def live_pids_of_uid(uid: int) -> list[int]:
    """Host processes (not zombies) whose real uid is `uid`."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/status") as status:
                fields = dict(line.split(":", 1) for line in status if ":" in line)
        except OSError:
            continue
        if int(fields["Uid"].split()[0]) == uid and fields["State"].split()[0] not in "ZX":
            found.append(int(entry))
    return found


def commands_of_uid(uid: int) -> list[str]:
    """The command names of `uid`'s live processes, sorted."""
    names = []
    for pid in live_pids_of_uid(uid):
        try:
            names.append(Path(f"/proc/{pid}/comm").read_text().strip())
        except OSError:
            continue
    return sorted(names)


# What a running view leaves of its uid when none of its commands runs: bwrap (outside the
# view, waiting for it) and the exec server (its PID 1).
IDLE_VIEW = ["bwrap", "python3"]
