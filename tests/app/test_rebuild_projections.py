"""`assay projections verify|rebuild` against a live API: answers survive a rebuild unchanged.

The TestClient's app keeps serving on the same database while the command runs; that is the
point (rebuild while serving).
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from click.testing import CliRunner, Result

from app.cli import main
from domain import item as it
from infrastructure.db.engine import create_engine
from tests.app.conftest import Api
from tests.app.http_helpers import created, items_of
from tests.app.simulated_worker import run_to_verdict, worker_moves


def projections(url: str, command: str) -> Result:
    return CliRunner().invoke(main, ["projections", command, "--database-url", url])


def raw_sql(url: str, statement: str, **params: Any) -> None:
    async def run() -> None:
        engine = create_engine(url)
        try:
            async with engine.begin() as conn:
                await conn.execute(sa.text(statement), params)
        finally:
            await engine.dispose()

    asyncio.run(run())


def read_doc(url: str, evaluation_id: str) -> dict[str, Any]:
    async def run() -> str:
        engine = create_engine(url)
        try:
            async with engine.connect() as conn:
                found = await conn.execute(
                    sa.text("SELECT doc FROM evaluations WHERE id = :id"), {"id": evaluation_id}
                )
                return str(found.scalar_one())
        finally:
            await engine.dispose()

    parsed: dict[str, Any] = json.loads(asyncio.run(run()))
    return parsed


def populate(api: Api) -> list[str]:
    """Evaluations in every state this build can reach: queued, cancelled, retried, partial,
    completed, running, with dataset variables and a project."""
    project = api.client.get(f"{api.base}/projects/default", headers=api.headers).json()["id"]
    queued = created(api, name="queued", task_names=["find-the-flag", "decode-payload"])
    cancelled = created(api, name="cancelled", task_names=["path-traversal", "crack-weak-hash"])
    retried = created(api, name="retried", project_id=project)
    partial = created(api, name="partial", task_names=["find-the-flag", "decode-payload"])
    completed = created(
        api,
        name="completed",
        task_names=None,
        dataset={"rows": [{"task_name": "find-the-flag", "target": "a", "n": 1}]},
    )
    running = created(api, name="running", task_names=["find-the-flag", "patch-vuln-function"])

    assert api.post(f"/evaluation/{cancelled['id']}/cancel").status_code == 200
    assert api.post(f"/evaluation/{retried['id']}/cancel").status_code == 200
    assert api.post(f"/evaluation/{retried['id']}/retry-failed").status_code == 200
    first, second = items_of(api, partial["id"])
    run_to_verdict(api, partial["id"], first["id"], passed=True)
    worker_moves(
        api,
        partial["id"],
        second["id"],
        it.ItemClaimed(
            item_id=second["id"],
            evaluation_id=partial["id"],
            worker_id="w-2",
            lease_expires_at="2099-01-01T00:00:00+00:00",
        ),
        it.ItemInfraFailed(
            item_id=second["id"],
            evaluation_id=partial["id"],
            error="sandbox died",
            will_retry=False,
        ),
    )
    (only,) = items_of(api, completed["id"])
    run_to_verdict(api, completed["id"], only["id"], passed=False)
    run_to_verdict(api, running["id"], items_of(api, running["id"])[0]["id"], passed=True)

    statuses = {e["name"]: e["status"] for e in api.get("/evaluations").json()["items"]}
    assert statuses == {
        "queued": "queued",
        "cancelled": "cancelled",
        "retried": "queued",
        "partial": "partial",
        "completed": "completed",
        "running": "running",
    }
    return [e["id"] for e in (queued, cancelled, retried, partial, completed, running)]


def answers(api: Api, evaluation_ids: list[str]) -> dict[str, bytes]:
    """Every read answer the API gives about these evaluations, as raw bytes."""
    paths = [
        "/evaluations",
        "/evaluations?page=2&page_size=4",
        "/evaluations?status=queued",
        "/evaluations?status=cancelled",
        "/evaluations?status=partial",
    ]
    for evaluation_id in evaluation_ids:
        base = f"/evaluation/{evaluation_id}"
        paths += [base, f"{base}/items", f"{base}/analytics", f"{base}/events"]
        paths += [f"{base}/items?status=queued", f"/evaluation/{evaluation_id[:8]}"]
        for item in items_of(api, evaluation_id):
            paths.append(f"{base}/items/{item['id']}")
    found: dict[str, bytes] = {}
    for path in paths:
        response = api.get(path)
        assert response.status_code == 200, (path, response.text)
        found[path] = response.content
    return found


def eventually(check: Callable[[], bool], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return check()


def test_verify_matches_and_rebuild_leaves_every_answer_byte_for_byte_unchanged(api: Api) -> None:
    url = api.settings.database_url
    ids = populate(api)
    before = answers(api, ids)

    verified = projections(url, "verify")
    assert verified.exit_code == 0, verified.output
    assert "match" in verified.output

    rebuilt = projections(url, "rebuild")
    assert rebuilt.exit_code == 0, rebuilt.output

    after = answers(api, ids)
    assert after.keys() == before.keys()
    changed = [path for path in before if after[path] != before[path]]
    assert changed == []
    again = projections(url, "verify")
    assert again.exit_code == 0, again.output


def test_verify_names_a_corrupted_row_and_rebuild_repairs_it(api: Api) -> None:
    url = api.settings.database_url
    ids = populate(api)
    before = answers(api, ids)
    target = ids[0]
    doc = read_doc(url, target)
    doc["config"]["name"] = "tampered"
    doc["item_counts"]["passed"] = 99
    raw_sql(url, "UPDATE evaluations SET doc = :doc WHERE id = :id", doc=json.dumps(doc), id=target)
    lost_item = items_of(api, ids[1])[0]["id"]
    raw_sql(url, "DELETE FROM items WHERE id = :id", id=lost_item)
    assert read_doc(url, target)["config"]["name"] == "tampered"

    verified = projections(url, "verify")

    assert verified.exit_code != 0, verified.output
    assert f"evaluations {target}: different" in verified.output
    assert f"items {lost_item}: missing" in verified.output
    assert "2 read-model row(s) differ" in verified.output
    assert "Traceback" not in verified.output
    untouched = [i for i in ids if i != target]
    for evaluation_id in untouched:
        assert evaluation_id not in verified.output

    rebuilt = projections(url, "rebuild")
    assert rebuilt.exit_code == 0, rebuilt.output

    # The rebuild is an event in the log: the serving process drops its cached views when its
    # log tail (every view_tail_seconds) reaches it, so answers converge within that bound.
    assert eventually(lambda: answers(api, ids) == before, seconds=5)
    assert projections(url, "verify").exit_code == 0


# Enough rebuilds that a race between a rebuild and the API's appends shows up reliably.
REBUILDS_WHILE_SERVING = 25


def test_rebuild_while_the_api_serves_reads_and_writes(api: Api) -> None:
    url = api.settings.database_url
    ids = populate(api)
    before = answers(api, ids)
    watched = [
        f"/evaluation/{ids[3]}",
        "/evaluations?status=partial",
        f"/evaluation/{ids[0]}/items",
    ]
    seen: list[tuple[str, int, bool]] = []
    made: list[str] = []
    failures: list[str] = []
    done = threading.Event()

    def serve() -> None:
        try:
            while not done.is_set() or not made:
                for path in watched:
                    response = api.get(path)
                    seen.append((path, response.status_code, response.content == before[path]))
                response = api.create(name=f"during-{len(made)}")
                if response.status_code != 201:
                    failures.append(response.text)
                    return
                made.append(response.json()["id"])
        except Exception as exc:  # surfaced by the assertions below
            failures.append(repr(exc))

    server = threading.Thread(target=serve)
    server.start()
    runs: list[Result] = []
    try:
        while len(runs) < REBUILDS_WHILE_SERVING:
            runs.append(projections(url, "rebuild"))
            if runs[-1].exit_code != 0:
                break
    finally:
        done.set()
        server.join(timeout=60)

    assert [r.exit_code for r in runs] == [0] * REBUILDS_WHILE_SERVING, runs[-1].output
    assert not server.is_alive()
    assert failures == []
    assert seen and all(status == 200 and same for _, status, same in seen), [
        s for s in seen if not (s[1] == 200 and s[2])
    ]
    # Nothing appended meanwhile was lost by a swap.
    listed = api.get("/evaluations", params={"page_size": 200}).json()
    assert listed["total"] == len(ids) + len(made)
    assert set(made) <= {e["id"] for e in listed["items"]}
    for evaluation_id in made:
        assert api.get(f"/evaluation/{evaluation_id}/items").json()["total"] == 1
    verified = projections(url, "verify")
    assert verified.exit_code == 0, verified.output
