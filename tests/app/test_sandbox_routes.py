"""Sandbox routes on both backends, through the HTTP API: tenancy, and a delete that must not
record a removal that did not happen."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from infrastructure.identity.bootstrap import bootstrap
from infrastructure.sandbox.local import LocalSandboxProvider
from tests.app.conftest import run_identity
from tests.app.execution_fixtures import Engine, running_service


@pytest.fixture
def engine(database_url: str, tmp_path: Path) -> Iterator[Engine]:
    with running_service(database_url, tmp_path) as started:
        yield started


def kept_item(engine: Engine) -> dict[str, Any]:
    created = engine.create(
        name="keep", capability="nop", task_names=["find-the-flag"], cleanup_policy="on_success"
    )
    engine.wait(created["id"])
    [item] = engine.items(created["id"])
    deadline = time.monotonic() + 10
    while not item["metadata_json"].get("sandbox", {}).get("kept"):
        assert time.monotonic() < deadline, item
        time.sleep(0.05)
        item = engine.item(created["id"], item["id"])
    return item


def org_get(engine: Engine, path: str, key: str | None = None, org: str = "acme") -> Any:
    headers = {"X-API-Key": key or engine.api.key}
    return engine.api.client.get(f"/api/v1/org/{org}{path}", headers=headers)


def test_another_org_sees_none_of_the_sandboxes(engine: Engine) -> None:
    item = kept_item(engine)
    other = run_identity(
        engine.settings,
        lambda store: bootstrap(store, org_key="rival", workspace_key="main", email="r@rival.test"),
    )

    assert org_get(engine, "/sandboxes", other.raw_key, org="rival").json()["items"] == []
    assert (
        org_get(engine, f"/sandboxes/{item['id']}", other.raw_key, org="rival").status_code == 404
    )
    assert org_get(engine, "/sandboxes", other.raw_key).status_code == 404  # not its org
    mine = org_get(engine, "/sandboxes").json()
    assert [row["id"] for row in mine["items"]] == [item["id"]]
    assert mine["total"] == 1 and mine["next_cursor"] is None


def test_paging_follows_next_cursor(engine: Engine) -> None:
    created = engine.create(
        name="three", capability="nop", task_names=["find-the-flag"] * 3, concurrency=3
    )
    engine.wait(created["id"])

    first = org_get(engine, "/sandboxes?limit=2").json()
    second = org_get(engine, f"/sandboxes?limit=2&cursor={first['next_cursor']}").json()

    assert len(first["items"]) == 2 and second["next_cursor"] is None
    ids = [row["id"] for row in first["items"] + second["items"]]
    assert sorted(ids) == sorted(i["id"] for i in engine.items(created["id"]))
    assert org_get(engine, "/sandboxes?state=paused").status_code == 400


def test_deleting_a_kept_sandbox_whose_files_are_gone_records_nothing(engine: Engine) -> None:
    item = kept_item(engine)
    provider = LocalSandboxProvider(Path(engine.settings.sandbox_root))

    async def remove_by_hand() -> None:
        for meta in provider.sandboxes():
            await provider.discard(meta.id)

    asyncio.run(remove_by_hand())
    before = len(engine.events(item["evaluation_id"]))

    response = engine.api.client.delete(
        f"/api/v1/org/acme/sandboxes/{item['id']}", headers=engine.api.headers
    )

    assert response.status_code == 409
    assert "not under this server's sandbox root" in response.json()["detail"]
    assert len(engine.events(item["evaluation_id"])) == before
    assert engine.item(item["evaluation_id"], item["id"])["metadata_json"]["sandbox"]["kept"]
