"""Removing a sandbox's objects by label: `destroy`, and `reap_orphans` after a worker died.

Everything a docker sandbox creates (containers, its network, its volumes) carries
`assay.sandbox=<id>` and `assay.worker=<worker>`, so removal never needs in-memory state: a
new worker finds what a dead one left. Containers go first (a network or volume in use cannot
be removed), then the network, then the volumes.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from typing import Any

from infrastructure.sandbox.docker.execution import call
from infrastructure.sandbox.docker.hardening import (
    LABEL_KEPT,
    LABEL_SANDBOX,
    LABEL_SCOPE,
    LABEL_WORKER,
)


def _ignore_missing(exc: BaseException) -> bool:
    import docker.errors  # type: ignore[import-untyped]

    return isinstance(exc, docker.errors.NotFound)


def remove_container(api: Any, container: str) -> None:
    try:
        api.remove_container(container, force=True, v=True)
    except Exception as exc:
        # Already gone (another worker reaping at the same time), or being removed already.
        if not _ignore_missing(exc) and "already in progress" not in str(exc):
            raise


def _remove_network(api: Any, network: str) -> None:
    try:
        api.remove_network(network)
    except Exception as exc:
        if not _ignore_missing(exc):
            raise


def remove_volume(api: Any, volume: str) -> None:
    try:
        api.remove_volume(volume, force=True)
    except Exception as exc:
        if not _ignore_missing(exc):
            raise


async def remove_sandbox(api: Any, sandbox_id: str) -> None:
    """Remove every container, network and volume labelled with `sandbox_id`."""
    label = {"label": f"{LABEL_SANDBOX}={sandbox_id}"}
    what = f"cannot remove docker sandbox {sandbox_id}"
    containers = await call(what, api.containers, all=True, filters=label)
    await asyncio.gather(*(call(what, remove_container, api, found["Id"]) for found in containers))
    for network in await call(what, api.networks, filters=label):
        await call(what, _remove_network, api, network["Id"])
    volumes = (await call(what, api.volumes, filters=label)).get("Volumes") or []
    for volume in volumes:
        await call(what, remove_volume, api, volume["Name"])


async def sandboxes_by_worker(api: Any, scope: str) -> dict[str, tuple[str, bool]]:
    """sandbox id -> (worker id, kept) of every labelled object of `scope` this daemon holds."""
    label = {"label": [LABEL_WORKER, f"{LABEL_SCOPE}={scope}"]}
    what = "cannot list docker sandboxes"
    found: dict[str, str] = {}
    kept: defaultdict[str, bool] = defaultdict(bool)
    objects: list[dict[str, Any]] = []
    objects += await call(what, api.containers, all=True, filters=label)
    objects += await call(what, api.networks, filters=label)
    objects += (await call(what, api.volumes, filters=label)).get("Volumes") or []
    for obj in objects:
        labels = obj.get("Labels") or {}
        sandbox = labels.get(LABEL_SANDBOX)
        if sandbox:
            found[sandbox] = labels.get(LABEL_WORKER, "")
            kept[sandbox] |= labels.get(LABEL_KEPT) == "true"
    return {sandbox: (worker, kept[sandbox]) for sandbox, worker in found.items()}
