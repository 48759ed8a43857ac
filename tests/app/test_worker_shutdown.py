"""Graceful shutdown of a real `assay worker` process receiving SIGTERM (SQLite and PostgreSQL).

1. Within the grace period (ASSAY_SHUTDOWN_GRACE_SECONDS) the running item finishes and is
   recorded, nothing new is claimed, and the process exits 0.
2. Past it, the worker stops the item and hands it back at once (item.infra_failed "shut down;
   item handed back", will_retry), so another worker claims it long before the first worker's
   lease would have lapsed, and the item ends exactly once.
3. `assay serve` does the same with the worker it runs in-process.
"""

from __future__ import annotations

import json
import signal
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from infrastructure.settings import Settings
from tests.app import test_worker_processes as processes
from tests.app.conftest import Api
from tests.app.dn_client import free_port
from tests.app.http_helpers import items_of
from tests.app.test_worker_processes import (
    ASSAY,
    TRIVIAL_FLAG,
    Workers,
    _write_bundle,
    create,
    history,
    is_terminal,
    wait_for,
    worker_of,
)

# The engine suite's fixtures: its API (no in-process worker) on its settings.
api = processes.api
engine_settings = processes.engine_settings

SHORT_FLAG = "FLAG{short}"
ONCE_FLAG = "FLAG{second-time-lucky}"
# Long enough that only a hand-back (not a lapsed lease) explains a quick second claim.
LONG_LEASE_SECONDS = 60.0


class GracefulWorkers(Workers):
    def __init__(self, root: Path, settings: Settings, grace_seconds: float) -> None:
        super().__init__(root, settings)
        self.grace_seconds = grace_seconds

    def env(self) -> dict[str, str]:
        return {
            **super().env(),
            "ASSAY_SHUTDOWN_GRACE_SECONDS": str(self.grace_seconds),
            "ASSAY_LEASE_SECONDS": str(LONG_LEASE_SECONDS),
        }


@pytest.fixture
def task_root(tmp_path: Path) -> Path:
    root = tmp_path / "tasks"
    _write_bundle(root / "short", "short", SHORT_FLAG, f"sleep 3\necho '{SHORT_FLAG}'\n")
    _write_bundle(root / "trivial", "trivial", TRIVIAL_FLAG, f"echo '{TRIVIAL_FLAG}'\n")
    # Hangs on its first run, answers at once on the next (the marker lives outside sandboxes).
    marker = tmp_path / "ran-once"
    _write_bundle(
        root / "once-slow",
        "once-slow",
        ONCE_FLAG,
        f'if [ ! -e "{marker}" ]; then touch "{marker}"; sleep 600; fi\necho \'{ONCE_FLAG}\'\n',
    )
    return root


@pytest.fixture
def start_workers(
    tmp_path: Path, engine_settings: Settings
) -> Iterator[Callable[[float], GracefulWorkers]]:
    """`start_workers(grace)`: a pool of worker processes with that grace period; every
    process is stopped (killed if need be) at the end of the test."""
    pools: list[GracefulWorkers] = []

    def make(grace: float) -> GracefulWorkers:
        pools.append(GracefulWorkers(tmp_path, engine_settings, grace))
        return pools[-1]

    try:
        yield make
    finally:
        for pool in pools:
            pool.stop_all()


def _agent_running(api: Api, evaluation_id: str) -> Any:
    def check() -> dict[str, Any] | None:
        (item,) = items_of(api, evaluation_id)
        return item if item["status"] == "agent_running" else None

    return wait_for("the item's agent to run", check, timeout=30)


def _terminate(proc: subprocess.Popen[bytes], timeout: float) -> int:
    proc.send_signal(signal.SIGTERM)
    return proc.wait(timeout=timeout)


def test_sigterm_lets_the_running_item_finish_and_claims_nothing_more(
    api: Api, start_workers: Callable[[float], GracefulWorkers]
) -> None:
    pool = start_workers(60)
    proc = pool.start(slots=2)
    first = create(api, task_names=["short"], concurrency=1)
    _agent_running(api, first)

    proc.send_signal(signal.SIGTERM)
    wait_for("the worker to drain", lambda: '"worker_draining"' in pool.log_of(proc), 10)
    later = create(api, task_names=["trivial"])
    assert proc.wait(timeout=30) == 0, pool.log_of(proc)

    (item,) = items_of(api, first)
    assert item["status"] == "passed", item
    types = [e["type"] for e in history(api, first) if e["stream_type"] == "item"]
    assert "item.infra_failed" not in types
    (untouched,) = items_of(api, later)
    assert untouched["status"] == "queued"
    assert "item.claimed" not in [e["type"] for e in history(api, later)]
    stopped = [
        json.loads(line)
        for line in pool.log_of(proc).splitlines()
        if line.startswith("{") and '"worker_stopped"' in line
    ]
    assert [record["interrupted_items"] for record in stopped] == [0]


def test_past_the_grace_period_the_item_is_handed_back_and_another_worker_takes_it_at_once(
    api: Api, start_workers: Callable[[float], GracefulWorkers]
) -> None:
    pool = start_workers(1)
    first = pool.start(slots=1)
    evaluation_id = create(api, task_names=["once-slow"], concurrency=1)
    item_id = _agent_running(api, evaluation_id)["id"]

    assert _terminate(first, timeout=30) == 0, pool.log_of(first)
    (handed_back,) = items_of(api, evaluation_id)
    assert handed_back["status"] == "queued" and handed_back["worker_id"] is None

    second = pool.start(slots=1)

    def ended() -> dict[str, Any] | None:
        (current,) = items_of(api, evaluation_id)
        return current if current["status"] in ("passed", "failed", "errored") else None

    final = wait_for("the second worker to finish the item", ended, timeout=40)

    assert final["status"] == "passed", final
    events = [e for e in history(api, evaluation_id) if e["stream_id"] == item_id]
    claims = [e for e in events if e["type"] == "item.claimed"]
    assert [worker_of(first)(c["data"]["worker_id"]) for c in claims] == [True, False]
    assert worker_of(second)(claims[1]["data"]["worker_id"])
    (back,) = [e for e in events if e["type"] == "item.infra_failed"]
    assert back["data"]["will_retry"] is True
    assert "shut down; item handed back" in back["data"]["error"]
    # Handed back, then claimed again, while the first worker's lease still had time to run.
    lease = max(
        e["data"]["lease_expires_at"]
        for e in events
        if e["type"] in ("item.claimed", "item.lease_renewed") and e["position"] < back["position"]
    )
    assert claims[0]["position"] < back["position"] < claims[1]["position"]
    assert claims[1]["recorded_at"] < lease
    assert [e["type"] for e in events if is_terminal(e)] == ["item.verdict"]


def test_assay_serve_hands_its_in_process_workers_item_back_on_sigterm(
    api: Api, start_workers: Callable[[float], GracefulWorkers], tmp_path: Path
) -> None:
    pool = start_workers(1)
    env = {**pool.env(), "ASSAY_WORKERS": "1", "ASSAY_PORT": str(free_port())}
    with (tmp_path / "serve.log").open("wb") as out:
        server = subprocess.Popen(
            [str(ASSAY), "serve"], env=env, cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT
        )
    pool.procs.append(server)  # killed at teardown if it outlives the test
    pool.logs[server.pid] = tmp_path / "serve.log"
    evaluation_id = create(api, task_names=["once-slow"], concurrency=1)
    item_id = _agent_running(api, evaluation_id)["id"]

    # uvicorn re-raises the signal once its shutdown (our lifespan's included) is complete.
    assert _terminate(server, timeout=30) in (0, -signal.SIGTERM), pool.log_of(server)
    assert '"worker_stopped"' in pool.log_of(server)

    (item,) = items_of(api, evaluation_id)
    assert item["status"] == "queued" and item["retry_count"] == 1
    events = [e for e in history(api, evaluation_id) if e["stream_id"] == item_id]
    assert "shut down; item handed back" in events[-1]["data"]["error"]
