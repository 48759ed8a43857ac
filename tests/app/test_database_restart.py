"""A PostgreSQL restart during a run, on a server of the test's own (tests/app/pg_server.py).

While the database is away the API answers 503 with the envelope (reads, creates, /ready);
once it is back the same server process answers again by itself. A real `assay worker`
running the evaluation meanwhile rides the outage out: every item ends, each exactly once,
none is lost or claimed twice. (SQLite is a file of the API's own process: nothing restarts.)
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from litestar.testing import TestClient

from app.main import create_app
from infrastructure.db.migrate import upgrade_sync
from infrastructure.identity.bootstrap import bootstrap
from tests.app import pg_server
from tests.app.conftest import Api, make_settings, run_identity
from tests.app.http_helpers import assert_envelope, items_of
from tests.app.test_worker_processes import (
    _write_bundle,
    create,
    history,
    is_requeue,
    is_terminal,
    wait_for,
)
from tests.app.test_worker_shutdown import GracefulWorkers
from tests.ci import unavailable

FLAG = "FLAG{patient}"
ITEMS = 6


@pytest.fixture
def own_postgres() -> Iterator[pg_server.OwnPostgres]:
    reason = pg_server.unavailable_reason()
    if reason:
        unavailable("a PostgreSQL server of the test's own", reason)
    server = pg_server.OwnPostgres()
    try:
        server.start()
        yield server
    finally:
        server.destroy()


@pytest.fixture
def restart_api(own_postgres: pg_server.OwnPostgres, tmp_path: Path) -> Iterator[Api]:
    async def create_database() -> None:
        conn = await asyncpg.connect(own_postgres.admin_url)
        try:
            await conn.execute("CREATE DATABASE assay")
        finally:
            await conn.close()

    asyncio.run(create_database())
    url = own_postgres.url("assay")
    upgrade_sync(url)
    tasks = tmp_path / "tasks"
    _write_bundle(tasks / "patient", "patient", FLAG, f"sleep 2\necho '{FLAG}'\n")
    settings = make_settings(
        url,
        task_paths=(str(tasks),),
        sandbox_root=str(tmp_path / "sandboxes"),
        sandbox_isolation="weak",
        poll_seconds=0.1,
    )
    boot = run_identity(
        settings,
        lambda store: bootstrap(store, org_key="demo", workspace_key="main", email="e@x.y"),
    )
    with TestClient(create_app(settings)) as client:
        yield Api(
            client=client,
            settings=settings,
            org="demo",
            workspace="main",
            key=boot.raw_key,
            user_id=boot.user.id,
            headers={"X-API-Key": boot.raw_key},
        )


def test_a_postgres_restart_is_503_meanwhile_and_every_item_ends_exactly_once(
    restart_api: Api, own_postgres: pg_server.OwnPostgres, tmp_path: Path
) -> None:
    api = restart_api
    workers = GracefulWorkers(tmp_path, api.settings, grace_seconds=5)
    try:
        worker = workers.start(slots=2)
        evaluation_id = create(api, task_names=["patient"] * ITEMS, concurrency=2)

        def some_running() -> bool:
            statuses = Counter(i["status"] for i in items_of(api, evaluation_id))
            return statuses["agent_running"] > 0 and statuses["passed"] > 0

        wait_for("an item to pass and others to run", some_running, timeout=60)

        own_postgres.stop("fast")
        away = [
            api.get(f"/evaluation/{evaluation_id}"),
            api.create(task_names=["patient"]),
            api.client.get("/ready"),
        ]
        # Agents finish while the database is away; their workers keep their outcomes.
        wait_for(
            "the worker to notice the outage",
            lambda: "database_unavailable_retrying" in workers.log_of(worker),
            timeout=30,
        )
        own_postgres.start()

        def answers() -> Any:
            response = api.get(f"/evaluation/{evaluation_id}")
            return response if response.status_code == 200 else None

        wait_for("the API to answer again by itself", answers, timeout=30, every=0.25)

        def ended() -> bool:
            status: str = api.get(f"/evaluation/{evaluation_id}").json()["status"]
            return status in ("completed", "partial", "failed")

        wait_for("the evaluation to end", ended, timeout=90, every=0.5)
        assert worker.poll() is None, workers.log_of(worker)
    finally:
        workers.stop_all()

    for response in away:
        body = assert_envelope(response, 503, "service_unavailable")
        assert "database" in body["detail"]
        assert response.headers["retry-after"]
    assert api.client.get("/ready").status_code == 200

    items = items_of(api, evaluation_id)
    assert Counter(i["status"] for i in items) == {"passed": ITEMS}
    by_item: dict[str, list[dict[str, Any]]] = {}
    for event in history(api, evaluation_id):
        if event["stream_type"] == "item":
            by_item.setdefault(event["stream_id"], []).append(event)
    assert len(by_item) == ITEMS
    for item_id, events in by_item.items():
        kinds = Counter(e["type"] for e in events)
        # Ridden out, not retried: the outage cost no item an attempt.
        assert not any(is_requeue(e) for e in events), (item_id, kinds)
        assert kinds["item.claimed"] == 1, (item_id, kinds)
        assert sum(1 for e in events if is_terminal(e)) == 1, (item_id, kinds)
        assert kinds["item.verdict"] == 1, (item_id, kinds)
    # The only evaluation is the one created before the outage: the refused create left nothing.
    assert api.get("/evaluations").json()["total"] == 1
