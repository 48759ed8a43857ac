"""The evaluation list at scale, through the HTTP path: every filter pages through exactly what
a full scan would list, with totals kept as counters, pages served from memory only while
their workspace's membership holds, and counters that a rebuild and the migration's backfill
reproduce."""

from __future__ import annotations

import itertools
import time
from typing import Any

from infrastructure.db.migrate import alembic_config
from tests.app.conftest import Api, run_identity
from tests.app.http_helpers import created, items_of
from tests.app.simulated_worker import claim
from tests.app.test_rebuild_projections import projections, raw_sql


def make_project(api: Api, key: str) -> str:
    async def setup(store: Any) -> str:
        org = await store.get_org_by_key("acme")
        ws = await store.get_workspace(org.id, "main")
        project = await store.create_project(ws.id, key, key.title())
        return str(project.id)

    return str(run_identity(api.settings, setup))


def listed(api: Api, **params: Any) -> tuple[list[str], int]:
    """Every page of the list with these filters: the ids in order, and the totals seen."""
    ids: list[str] = []
    totals: set[int] = set()
    for page in itertools.count(1):
        body = api.get("/evaluations", params={**params, "page": page}).json()
        totals.add(body["total"])
        ids += [e["id"] for e in body["items"]]
        if not body["items"]:
            break
    assert len(totals) == 1, totals
    return ids, totals.pop()


def expected(views: list[dict[str, Any]], status: str | None, project: str | None) -> list[str]:
    """What a full scan lists: newest first, filtered."""
    return [
        v["id"]
        for v in reversed(views)
        if (status is None or v["status"] == status)
        and (project is None or v["project_id"] == project)
    ]


def test_every_filter_pages_through_what_a_full_scan_lists_and_totals_match(api: Api) -> None:
    red = make_project(api, "red")
    ids = [
        created(api, name=f"e{i}", **({"project_id": red} if i % 2 else {}))["id"] for i in range(7)
    ]
    for cancelled in (ids[1], ids[4], ids[5]):
        assert api.post(f"/evaluation/{cancelled}/cancel").status_code == 200
    views = [api.get(f"/evaluation/{i}").json() for i in ids]

    for status, project in itertools.product((None, "queued", "cancelled"), (None, red)):
        filters = {
            k: v for k, v in {"status": status, "project_id": project}.items() if v is not None
        }
        want = expected(views, status, project)
        for page_size in (2, 3, 50):
            assert listed(api, page_size=page_size, **filters) == (want, len(want)), filters


def test_a_cached_page_follows_this_processs_cancel_at_once(api: Api) -> None:
    first, second = created(api)["id"], created(api)["id"]
    assert listed(api, status="queued") == ([second, first], 2)  # pages now cached

    assert api.post(f"/evaluation/{first}/cancel").status_code == 200

    assert listed(api, status="queued") == ([second], 1)
    assert listed(api, status="cancelled") == ([first], 1)
    assert api.get("/evaluations").json()["items"][1]["status"] == "cancelled"


def test_a_cached_page_follows_another_processs_status_change_within_the_tail_interval(
    api: Api,
) -> None:
    evaluation = created(api)["id"]
    assert listed(api, status="queued") == ([evaluation], 1)
    assert listed(api, status="running") == ([], 0)

    claim(api, evaluation, items_of(api, evaluation)[0]["id"])  # another process's worker

    deadline = time.monotonic() + 10 * api.settings.view_tail_seconds + 2
    while time.monotonic() < deadline and listed(api, status="running") != ([evaluation], 1):
        time.sleep(0.02)
    assert listed(api, status="running") == ([evaluation], 1)
    assert listed(api, status="queued") == ([], 0)


def test_verify_names_a_corrupted_counter_and_rebuild_repairs_the_total(api: Api) -> None:
    url = api.settings.database_url
    created(api)
    created(api)
    raw_sql(url, "UPDATE evaluation_counts SET total = 41 WHERE project_id = '' AND status = ''")

    verified = projections(url, "verify")
    assert verified.exit_code != 0
    assert "evaluation_counts" in verified.output

    assert projections(url, "rebuild").exit_code == 0
    deadline = time.monotonic() + 10 * api.settings.view_tail_seconds + 2
    while time.monotonic() < deadline and api.get("/evaluations").json()["total"] != 2:
        time.sleep(0.02)
    assert api.get("/evaluations").json()["total"] == 2
    assert projections(url, "verify").exit_code == 0


def test_the_migration_backfills_ranks_and_counters_exactly_as_the_projection_writes_them(
    api: Api,
) -> None:
    from alembic import command

    url = api.settings.database_url
    red = make_project(api, "red")
    ids = [created(api, **({"project_id": red} if i % 2 else {}))["id"] for i in range(5)]
    assert api.post(f"/evaluation/{ids[2]}/cancel").status_code == 200
    before = listed(api, page_size=2), listed(api, status="queued", project_id=red)

    config = alembic_config(url)
    command.downgrade(config, "0006-1")
    command.upgrade(config, "head")

    verified = projections(url, "verify")
    assert verified.exit_code == 0, verified.output
    assert (listed(api, page_size=2), listed(api, status="queued", project_id=red)) == before


def test_a_page_read_while_its_workspace_moved_is_not_kept() -> None:
    from infrastructure.list_cache import ListCache

    lists = ListCache(ttl_seconds=60)
    key = ("w", None, None, 1, 50)
    stamp = lists.stamp("w")
    lists.moved(["w"])  # an append changed the workspace's membership during the read
    lists.put(key, stamp, ["a"], 1)
    assert lists.get(key) is None

    lists.put(key, lists.stamp("w"), ["a"], 1)
    assert lists.get(key) == (("a",), 1)
    lists.moved(["other"])
    assert lists.get(key) == (("a",), 1)
    lists.clear()
    assert lists.get(key) is None
