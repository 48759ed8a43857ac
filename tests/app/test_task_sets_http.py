"""Task sets at the HTTP level, on SQLite and PostgreSQL: manifests, per-caller member
resolution, visibility, deletion, every change an event, and `task_set` in create expanding
the runnable members and reporting the rest."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from infrastructure.db.engine import create_engine
from infrastructure.db.store_tables import events
from infrastructure.identity.bootstrap import bootstrap
from tests.app.conftest import Api, run_identity
from tests.app.test_task_registry_http import push, write_bundle


def sets(api: Api, org: str = "acme") -> str:
    return f"/api/v1/org/{org}/task-sets"


def stream_events(api: Api, stream_type: str) -> list[str]:
    async def read() -> list[str]:
        engine = create_engine(api.settings.database_url)
        try:
            async with engine.connect() as conn:
                rows = await conn.execute(
                    sa.select(events.c.event_type)
                    .where(events.c.stream_type == stream_type)
                    .order_by(events.c.position)
                )
                return [r[0] for r in rows.all()]
        finally:
            await engine.dispose()

    return asyncio.run(read())


def rival_key(api: Api) -> str:
    result = run_identity(
        api.settings,
        lambda store: bootstrap(
            store,
            org_key="rival",
            workspace_key="main",
            email="owner@rival.test",
            username="rival",
        ),
    )
    key: str = result.raw_key
    return key


def create_set(api: Api, name: str, members: list[Any], **extra: Any) -> Any:
    return api.client.post(
        sets(api), json={"name": name, "members": members, **extra}, headers=api.headers
    )


def test_a_set_resolves_each_member_for_the_caller_and_reports_the_missing_ones(
    api: Api, tmp_path: Path
) -> None:
    assert (
        push(api, "acme/mine", "1.0.0", write_bundle(tmp_path / "m", "mine", "1.0.0")).status_code
        == 201
    )
    created = create_set(
        api,
        "suite",
        ["acme/mine", "assay/find-the-flag", {"task_name": "acme/ghost", "notes": "gone"}],
        description="a suite",
        tags=["web"],
    )
    assert created.status_code == 201, created.text
    detail = api.client.get(f"{sets(api)}/suite", headers=api.headers).json()
    members = {m["task_name"]: m for m in detail["members"]}
    assert members["acme/mine"]["task_version_resolved"] == "1.0.0"
    assert members["assay/find-the-flag"]["unresolvable_reason"] is None
    assert members["acme/ghost"]["unresolvable_reason"] == "not_found"
    assert members["acme/ghost"]["notes"] == "gone"
    assert (detail["member_count"], detail["unresolvable_count"]) == (3, 1)
    listed = api.client.get(sets(api), headers=api.headers).json()
    assert [s["name"] for s in listed["task_sets"]] == ["suite"]


def test_creating_an_evaluation_from_a_set_runs_its_members_and_lists_the_skipped(
    api: Api, tmp_path: Path
) -> None:
    assert (
        push(api, "acme/mine", "1.0.0", write_bundle(tmp_path / "m", "mine", "1.0.0")).status_code
        == 201
    )
    create_set(api, "suite", ["acme/mine", "assay/find-the-flag", "acme/ghost@2.0.0"])
    created = api.create(task_names=None, task_set="acme/suite", capability="oracle")
    assert created.status_code == 201, created.text
    body = created.json()
    assert body["skipped_members"] == [
        {"task_name": "acme/ghost", "task_version": "2.0.0", "reason": "not_found"}
    ]
    items = api.get(f"/evaluation/{body['id']}/items").json()["items"]
    assert sorted(i["task_ref"] for i in items) == ["acme/mine@1.0.0", "find-the-flag@2.0.0"]
    assert all(i["metadata_json"]["bundle_digest"].startswith("sha256:") for i in items)


def test_a_set_with_nothing_runnable_is_a_422_and_appends_nothing(api: Api) -> None:
    create_set(api, "hollow", ["acme/ghost"])
    before = stream_events(api, "evaluation")
    refused = api.create(task_names=None, task_set="acme/hollow", capability="oracle")
    assert refused.status_code == 422
    assert "no member" in refused.json()["detail"]
    assert stream_events(api, "evaluation") == before


def test_a_bad_manifest_is_a_422_naming_the_member_and_appends_nothing(api: Api) -> None:
    bare = create_set(api, "bad", ["find-the-flag"])
    assert bare.status_code == 422
    assert "org-qualified" in bare.json()["detail"]
    assert create_set(api, "bad", []).status_code == 422
    assert create_set(api, "bad", ["acme/a", "acme/a"]).status_code == 422
    assert create_set(api, "Bad Name", ["acme/a"]).status_code == 422
    assert stream_events(api, "task_set") == []


def test_a_set_is_replaced_in_full_published_unpublished_and_deleted_each_as_an_event(
    api: Api,
) -> None:
    assert create_set(api, "suite", ["assay/find-the-flag"]).status_code == 201
    assert create_set(api, "suite", ["assay/find-the-flag"]).status_code == 409
    replaced = api.client.put(
        f"{sets(api)}/suite",
        json={"members": ["assay/find-the-flag", "assay/decode-payload"], "tags": ["x"]},
        headers=api.headers,
    )
    assert (replaced.status_code, replaced.json()["member_count"]) == (200, 2)
    rival = rival_key(api)
    foreign = api.client.get(f"{sets(api)}/suite", headers={"X-API-Key": rival})
    assert foreign.status_code == 404
    published = api.client.patch(
        f"{sets(api)}/suite/visibility", json={"is_public": True}, headers=api.headers
    )
    assert published.json()["is_public"] is True
    seen = api.client.get(f"{sets(api)}/suite", headers={"X-API-Key": rival})
    assert seen.status_code == 200 and seen.json()["member_count"] == 2
    rival_list = api.client.get(
        "/api/v1/org/rival/task-sets",
        params={"include_public": True},
        headers={"X-API-Key": rival},
    ).json()
    assert [s["org_key"] for s in rival_list["task_sets"]] == ["acme"]
    api.client.patch(
        f"{sets(api)}/suite/visibility", json={"is_public": False}, headers=api.headers
    )
    assert api.client.get(f"{sets(api)}/suite", headers={"X-API-Key": rival}).status_code == 404
    deleted = api.client.delete(f"{sets(api)}/suite", headers=api.headers)
    assert (deleted.status_code, deleted.json()["deleted"]) == (200, True)
    assert api.client.get(f"{sets(api)}/suite", headers=api.headers).status_code == 404
    assert stream_events(api, "task_set") == [
        "task_set.created",
        "task_set.replaced",
        "task_set.visibility_changed",
        "task_set.visibility_changed",
        "task_set.deleted",
    ]
    assert create_set(api, "suite", ["assay/find-the-flag"]).status_code == 201


def test_another_orgs_private_member_is_not_found_even_in_a_public_set(
    api: Api, tmp_path: Path
) -> None:
    assert (
        push(
            api, "acme/hidden", "1.0.0", write_bundle(tmp_path / "h", "hidden", "1.0.0")
        ).status_code
        == 201
    )
    create_set(api, "mixed", ["acme/hidden", "assay/find-the-flag"], is_public=True)
    detail = api.client.get(f"{sets(api)}/mixed", headers=api.headers).json()
    assert detail["warnings"] == ["acme/hidden is not publicly runnable"]
    rival = rival_key(api)
    seen = api.client.get(f"{sets(api)}/mixed", headers={"X-API-Key": rival}).json()
    members = {m["task_name"]: m["unresolvable_reason"] for m in seen["members"]}
    assert members == {"acme/hidden": "not_found", "assay/find-the-flag": None}
