"""A real `assay worker --metrics-port` serves its own Prometheus metrics, behind
ASSAY_METRICS_TOKEN: free and busy slots as items run, sandbox start times and appends."""

from __future__ import annotations

import socket
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from infrastructure.settings import Settings
from tests.app import test_worker_processes as processes
from tests.app.conftest import Api
from tests.app.http_helpers import items_of
from tests.app.test_worker_processes import SLOW_SECONDS, Workers, create, wait_for

# The engine suite's fixtures: its API (no in-process worker) on its settings.
api = processes.api
engine_settings = processes.engine_settings
task_root = processes.task_root
beats = processes.beats

TOKEN = "scrape-me"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class MeteredWorkers(Workers):
    def __init__(self, root: Path, settings: Settings, port: int) -> None:
        super().__init__(root, settings)
        self.port = port

    def env(self) -> dict[str, str]:
        return {
            **super().env(),
            "ASSAY_METRICS_TOKEN": TOKEN,
            "ASSAY_WORKER_METRICS_PORT": str(self.port),
        }


def _scrape(port: int, token: str | None) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/metrics")
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(request, timeout=5) as response:
        text = response.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


@pytest.fixture
def metered(tmp_path: Path, engine_settings: Settings) -> Iterator[MeteredWorkers]:
    pool = MeteredWorkers(tmp_path, engine_settings, _free_port())
    try:
        yield pool
    finally:
        pool.stop_all()


def test_a_worker_process_serves_its_slots_sandbox_starts_and_appends(
    api: Api, metered: MeteredWorkers
) -> None:
    port = metered.port
    metered.start(slots=3)

    def scrape() -> dict[Any, float] | None:
        try:
            return _scrape(port, TOKEN)
        except OSError:
            return None  # not listening yet

    def started() -> dict[Any, float] | None:
        samples = scrape()  # the port opens before the pool has started
        free = samples and samples[("assay_worker_slots", (("state", "free"),))]
        return samples if free else None

    idle = wait_for("the worker's pool on its metrics port", started, timeout=30)
    assert idle[("assay_worker_slots", (("state", "free"),))] == 3
    assert idle[("assay_worker_slots", (("state", "busy"),))] == 0
    try:
        _scrape(port, None)
        raise AssertionError("metrics served without the token")
    except urllib.error.HTTPError as refused:
        assert refused.code == 401
        assert b'"type":"authentication_error"' in refused.read()

    evaluation_id = create(api, task_names=["slow-beat"], concurrency=1)

    def busy() -> dict[Any, float] | None:
        samples = scrape()
        if samples and samples[("assay_worker_slots", (("state", "busy"),))] == 1:
            return samples
        return None

    running = wait_for("a busy slot", busy, timeout=30)
    assert running[("assay_worker_slots", (("state", "free"),))] == 2

    def passed() -> bool:
        (item,) = items_of(api, evaluation_id)
        return bool(item["status"] == "passed")

    wait_for("the item to pass", passed, timeout=SLOW_SECONDS + 30)
    done = wait_for("the slot to be free again", scrape, timeout=5)
    assert done[("assay_sandbox_start_seconds_count", ())] >= 1
    assert done[("assay_appends_total", ())] >= 3  # claim, agent start, verdict at least
