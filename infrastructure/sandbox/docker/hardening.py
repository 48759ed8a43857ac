"""What every container of a docker sandbox runs under: principals, limits, labels.

One place builds the `create_container`/`create_host_config` arguments, so no role (agent,
service, checker) can be started without the hardening: never privileged, every capability
dropped, no-new-privileges (no setuid escalation), a non-root uid, a read-only root file
system, pids/memory/CPU limits, and no mount but the volumes the sandbox owns (never a host
path, never the docker socket).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Literal

Role = Literal["agent", "service", "checker"]

# One principal per role, so the agent's processes cannot signal or ptrace a checker's even
# if they shared a kernel view, and files each writes carry its owner.
AGENT_USER = "1000:1000"
SERVICE_USER = "1001:1001"
CHECKER_USER = "1002:1002"
USERS: Mapping[Role, str] = {"agent": AGENT_USER, "service": SERVICE_USER, "checker": CHECKER_USER}

# Labels every object (container, network, volume) carries: reap_orphans finds a dead
# worker's leftovers by them, whatever the daemon restarted or renamed.
LABEL_SCOPE = "assay.scope"
LABEL_ITEM = "assay.item"
LABEL_WORKER = "assay.worker"
LABEL_SANDBOX = "assay.sandbox"
LABEL_ROLE = "assay.role"
# Labels cannot change after creation: keep() creates a small volume carrying this label.
LABEL_KEPT = "assay.kept"

# Where a context service's files go (its working directory) in its own container.
SERVICE_WORKDIR = "/srv"
# Services and checkers are the task's, not the agent's: fixed, generous-enough limits.
SERVICE_MEMORY_BYTES = 512 * 1024**2
SERVICE_PIDS = 256
TMP_BYTES = 256 * 1024**2

# PID 1 of the agent and checker containers. It never exits (its `sleep` is restarted when
# killed, and the kernel never delivers SIGKILL from inside the namespace to PID 1), bash reaps
# every orphan re-parented to it (killed trees leave no zombies), and SIGUSR1 from the daemon
# (`kill_all`) makes it `kill -KILL -1`: every process of the container but itself, in one
# system call, with no fork, so it works even when a fork bomb holds the whole pids limit.
KEEPALIVE = [
    "bash",
    "-c",
    "trap 'kill -KILL -1 2>/dev/null' USR1; while :; do sleep 86400 & wait $!; done",
]

_DNS_LABEL = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")


def safe_name(value: str, limit: int = 40) -> str:
    """A fragment usable in docker object names ([a-zA-Z0-9_.-])."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", value)[:limit].strip("._-") or "x"


def valid_service_name(name: str) -> bool:
    """Service names become DNS names on the item network: lower-case RFC 1123 labels."""
    return _DNS_LABEL.fullmatch(name) is not None


def labels(
    scope: str, item: str, worker: str, sandbox: str, role: Role | None = None
) -> dict[str, str]:
    """The labels of every object of a sandbox. `scope` names the installation (its sandbox
    root): orphan reaping only ever looks at its own scope, since worker liveness is known
    only within one installation's database, and a daemon may serve several."""
    found = {
        LABEL_SCOPE: scope,
        LABEL_ITEM: item,
        LABEL_WORKER: worker,
        LABEL_SANDBOX: sandbox,
    }
    if role is not None:
        found[LABEL_ROLE] = role
    return found


def tmpfs_volume_options(size_bytes: int, user: str, mode: str = "0755") -> dict[str, str]:
    """driver_opts of a `local` volume backed by tmpfs: size-limited (the disk limit), owned by
    the principal that writes it (no root helper needed to chown it), and shared between
    containers while one of them mounts it (the checker sees the agent's very workspace)."""
    uid, gid = user.split(":")
    return {
        "type": "tmpfs",
        "device": "tmpfs",
        "o": f"size={size_bytes},uid={uid},gid={gid},mode={mode},nosuid,nodev",
    }


def host_config_args(
    *,
    network: str,
    memory_bytes: int,
    pids: int,
    nano_cpus: int,
    file_size_bytes: int,
    cpu_seconds: int,
    binds: Mapping[str, Mapping[str, str]],
    init: bool = False,
    groups: tuple[str, ...] = (),
) -> dict[str, Any]:
    """Arguments of `APIClient.create_host_config` for any role; the hardening is not optional."""
    from docker.types import Ulimit  # type: ignore[import-untyped]

    return {
        "network_mode": network,
        "privileged": False,
        "cap_drop": ["ALL"],
        "security_opt": ["no-new-privileges"],
        "read_only": True,
        # /dev/shm is docker's own tmpfs; keep it tiny, it is writable by everyone.
        "shm_size": "16m",
        "mem_limit": memory_bytes,
        "memswap_limit": memory_bytes,  # no swap on top of the memory limit
        "pids_limit": pids,
        "nano_cpus": nano_cpus,
        "ulimits": [
            Ulimit(name="fsize", soft=file_size_bytes, hard=file_size_bytes),
            Ulimit(name="core", soft=0, hard=0),
            Ulimit(name="cpu", soft=cpu_seconds, hard=cpu_seconds + 1),
        ],
        "binds": {name: dict(bind) for name, bind in binds.items()},
        "init": init,
        "group_add": list(groups) or None,
        "ipc_mode": "private",
    }
