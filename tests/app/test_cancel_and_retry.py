"""Cancel and retry-failed through HTTP, and who may do them."""

from __future__ import annotations

import asyncio
from typing import Any

from app.composition import open_store
from domain import item as it
from infrastructure.db.engine import create_engine
from infrastructure.identity.bootstrap import bootstrap
from tests.app.conftest import Api, run_identity
from tests.app.http_helpers import assert_envelope, created, items_of
from tests.app.simulated_worker import claim, run_to_verdict, worker_moves


def last_position(url: str) -> int:
    async def main() -> int:
        engine = create_engine(url)
        try:
            return await open_store(engine)[0].last_position()
        finally:
            await engine.dispose()

    return asyncio.run(main())


def user_api(api: Api, email: str, role: str, *, workspace_scoped: str | None = None) -> Api:
    """Another person in org `acme` with `role`, with their own key (optionally scoped)."""

    async def setup(store: Any) -> tuple[str, str]:
        org = await store.get_org_by_key("acme")
        user = await store.create_user(email, email.split("@")[0], email)
        await store.add_membership(org.id, user.id, role)
        workspace_id = None
        if workspace_scoped is not None:
            ws = await store.get_workspace(org.id, workspace_scoped)
            if ws is None:
                ws = await store.create_workspace(org.id, workspace_scoped, workspace_scoped)
            workspace_id = ws.id
        _, raw = await store.create_api_key(user.id, "k", workspace_id)
        return user.id, raw

    user_id, raw = run_identity(api.settings, setup)
    return Api(
        client=api.client,
        settings=api.settings,
        org="acme",
        workspace="main",
        key=raw,
        user_id=user_id,
        headers={"X-API-Key": raw},
    )


# ---- cancel ----


def test_cancel_makes_queued_items_cancelled_and_the_evaluation_cancelled(api: Api) -> None:
    evaluation = created(api, task_names=["find-the-flag", "decode-payload", "path-traversal"])

    response = api.post(f"/evaluation/{evaluation['id']}/cancel")

    assert response.status_code == 200, response.text
    body = response.json()
    assert body["id"] == evaluation["id"]
    assert body["status"] == body["job_status"] == "cancelled"
    assert body["item_counts"]["cancelled"] == 3
    assert body["item_counts"]["queued"] == 0
    assert sum(body["item_counts"].values()) == 3
    assert body["completed_at"] is not None
    assert body["analytics"]["status"] == "ready"
    items = items_of(api, evaluation["id"])
    assert [i["status"] for i in items] == ["cancelled"] * 3
    assert all(i["item_status"] == "cancelled" and i["completed_at"] for i in items)
    assert api.get(f"/evaluation/{evaluation['id']}").json() == body


def test_cancel_by_prefix_works(api: Api) -> None:
    evaluation = created(api)

    response = api.post(f"/evaluation/{evaluation['id'][:8]}/cancel")

    assert response.status_code == 200, response.text
    assert response.json()["status"] == "cancelled"


def test_second_cancel_is_409_conflict_and_appends_nothing(api: Api) -> None:
    evaluation = created(api)
    assert api.post(f"/evaluation/{evaluation['id']}/cancel").status_code == 200
    before = last_position(api.settings.database_url)

    assert_envelope(api.post(f"/evaluation/{evaluation['id']}/cancel"), 409, "conflict")
    assert last_position(api.settings.database_url) == before


def test_cancel_of_a_running_evaluation_cancels_in_flight_items_too(api: Api) -> None:
    evaluation = created(api, task_names=["find-the-flag", "decode-payload"])
    first = items_of(api, evaluation["id"])[0]
    claim(api, evaluation["id"], first["id"])
    assert api.get(f"/evaluation/{evaluation['id']}").json()["status"] == "running"

    body = api.post(f"/evaluation/{evaluation['id']}/cancel").json()

    assert body["status"] == "cancelled"
    assert body["item_counts"]["cancelled"] == 2
    assert body["item_counts"]["claiming"] == 0
    cancelled = items_of(api, evaluation["id"])[0]
    assert cancelled["status"] == "cancelled"
    assert cancelled["worker_id"] is None and cancelled["lease_expires_at"] is None


def test_cancel_of_a_completed_evaluation_is_409(api: Api) -> None:
    evaluation = created(api)
    item = items_of(api, evaluation["id"])[0]
    run_to_verdict(api, evaluation["id"], item["id"], passed=True)
    assert api.get(f"/evaluation/{evaluation['id']}").json()["status"] == "completed"

    assert_envelope(api.post(f"/evaluation/{evaluation['id']}/cancel"), 409, "conflict")


# ---- retry-failed ----


def test_retry_failed_on_a_cancelled_evaluation_requeues_every_item(api: Api) -> None:
    evaluation = created(api, task_names=["find-the-flag", "decode-payload"])
    api.post(f"/evaluation/{evaluation['id']}/cancel")

    response = api.post(f"/evaluation/{evaluation['id']}/retry-failed")

    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == body["job_status"] == "queued"
    assert body["item_counts"]["queued"] == 2
    assert body["item_counts"]["cancelled"] == 0
    assert body["completed_at"] is None
    assert body["analytics"]["status"] == "pending"
    items = items_of(api, evaluation["id"])
    assert [i["status"] for i in items] == ["queued", "queued"]
    assert all(i["error"] is None and i["completed_at"] is None for i in items)
    types = [e["type"] for e in api.get(f"/evaluation/{evaluation['id']}/events").json()["events"]]
    assert types[-3:] == ["evaluation.reopened", "item.requeued", "item.requeued"]


def test_retry_failed_on_a_queued_or_running_evaluation_is_409(api: Api) -> None:
    queued = created(api)
    before = last_position(api.settings.database_url)
    assert_envelope(api.post(f"/evaluation/{queued['id']}/retry-failed"), 409, "conflict")
    assert last_position(api.settings.database_url) == before

    running = created(api, task_names=["find-the-flag", "decode-payload"])
    claim(api, running["id"], items_of(api, running["id"])[0]["id"])
    assert api.get(f"/evaluation/{running['id']}").json()["status"] == "running"
    assert_envelope(api.post(f"/evaluation/{running['id']}/retry-failed"), 409, "conflict")


def test_retry_failed_after_a_retry_is_409_until_it_finishes_again(api: Api) -> None:
    evaluation = created(api)
    api.post(f"/evaluation/{evaluation['id']}/cancel")
    assert api.post(f"/evaluation/{evaluation['id']}/retry-failed").status_code == 200

    response = api.post(f"/evaluation/{evaluation['id']}/retry-failed")

    assert_envelope(response, 409, "conflict")


def test_retry_failed_requeues_only_failed_items_of_a_partial_evaluation(api: Api) -> None:
    evaluation = created(api, task_names=["find-the-flag", "decode-payload", "path-traversal"])
    passed, failed, timed_out = items_of(api, evaluation["id"])
    run_to_verdict(api, evaluation["id"], passed["id"], passed=True)
    run_to_verdict(api, evaluation["id"], failed["id"], passed=False)
    worker_moves(
        api,
        evaluation["id"],
        timed_out["id"],
        it.ItemTimedOut(item_id=timed_out["id"], evaluation_id=evaluation["id"], error="deadline"),
    )
    assert api.get(f"/evaluation/{evaluation['id']}").json()["status"] == "partial"

    body = api.post(f"/evaluation/{evaluation['id']}/retry-failed").json()

    assert body["status"] == "queued"
    assert body["item_counts"]["passed"] == 1
    assert body["item_counts"]["queued"] == 2
    after = {i["id"]: i for i in items_of(api, evaluation["id"])}
    assert after[passed["id"]]["status"] == "passed"
    assert after[passed["id"]]["passed"] is True
    assert after[failed["id"]]["status"] == "queued"
    assert after[failed["id"]]["passed"] is None
    assert after[timed_out["id"]]["status"] == "queued"
    assert after[timed_out["id"]]["error"] is None


def test_retry_failed_with_nothing_to_retry_is_409(api: Api) -> None:
    evaluation = created(api)
    item = items_of(api, evaluation["id"])[0]
    run_to_verdict(api, evaluation["id"], item["id"], passed=True)

    assert_envelope(api.post(f"/evaluation/{evaluation['id']}/retry-failed"), 409, "conflict")


# ---- roles ----


def test_a_member_may_cancel_their_own_evaluation_but_not_anothers(api: Api) -> None:
    member = user_api(api, "mia@acme.test", "member")
    owners = created(api)
    mine = created(member)
    assert mine["created_by"] == member.user_id
    assert mine["created_by_email"] == "mia@acme.test"

    assert_envelope(member.post(f"/evaluation/{owners['id']}/cancel"), 403, "permission_denied")
    assert api.get(f"/evaluation/{owners['id']}").json()["status"] == "queued"
    assert member.post(f"/evaluation/{mine['id']}/cancel").status_code == 200
    assert member.post(f"/evaluation/{mine['id']}/retry-failed").status_code == 200
    api.post(f"/evaluation/{owners['id']}/cancel")
    response = member.post(f"/evaluation/{owners['id']}/retry-failed")
    assert_envelope(response, 403, "permission_denied")


def test_an_admin_may_cancel_anybodys_evaluation(api: Api) -> None:
    admin = user_api(api, "ada@acme.test", "admin")
    member = user_api(api, "mo@acme.test", "member")
    theirs = created(member)

    assert admin.post(f"/evaluation/{theirs['id']}/cancel").status_code == 200


def test_a_viewer_reads_but_cannot_create_or_cancel(api: Api) -> None:
    viewer = user_api(api, "vic@acme.test", "viewer")
    evaluation = created(api)
    before = last_position(api.settings.database_url)

    assert_envelope(viewer.create(), 403, "permission_denied")
    assert_envelope(viewer.post(f"/evaluation/{evaluation['id']}/cancel"), 403, "permission_denied")
    assert last_position(api.settings.database_url) == before

    assert viewer.get(f"/evaluation/{evaluation['id']}").json() == evaluation
    assert viewer.get("/evaluations").json()["total"] == 1
    assert viewer.get(f"/evaluation/{evaluation['id']}/items").status_code == 200
    assert viewer.get(f"/evaluation/{evaluation['id']}/analytics").status_code == 200
    assert viewer.get(f"/evaluation/{evaluation['id']}/events").status_code == 200
    api.post(f"/evaluation/{evaluation['id']}/cancel")
    response = viewer.post(f"/evaluation/{evaluation['id']}/retry-failed")
    assert_envelope(response, 403, "permission_denied")


# ---- tenancy ----


def test_a_workspace_scoped_key_cannot_see_another_workspace(api: Api) -> None:
    evaluation = created(api)
    scoped = user_api(api, "sam@acme.test", "owner", workspace_scoped="lab")

    assert_envelope(scoped.get(f"/evaluation/{evaluation['id']}"), 404, "not_found")
    assert_envelope(scoped.get("/evaluations"), 404, "not_found")
    assert_envelope(scoped.post(f"/evaluation/{evaluation['id']}/cancel"), 404, "not_found")
    assert_envelope(scoped.create(), 404, "not_found")
    lab = Api(
        client=api.client,
        settings=api.settings,
        org="acme",
        workspace="lab",
        key=scoped.key,
        user_id=scoped.user_id,
        headers=scoped.headers,
    )
    assert lab.create().status_code == 201
    listed = api.client.get("/api/v1/org/acme/ws", headers=scoped.headers).json()
    assert [w["key"] for w in listed["workspaces"]] == ["lab"]


def test_another_orgs_evaluation_is_404_not_403(api: Api) -> None:
    other = run_identity(
        api.settings,
        lambda store: bootstrap(store, org_key="beta", workspace_key="ops", email="boss@beta.test"),
    )
    beta = Api(
        client=api.client,
        settings=api.settings,
        org="beta",
        workspace="ops",
        key=other.raw_key,
        user_id=other.user.id,
        headers={"X-API-Key": other.raw_key},
    )
    theirs = created(beta)

    # Through their org's path, and through ours: never a 403, never a hint it exists.
    as_us = Api(
        client=api.client,
        settings=api.settings,
        org="beta",
        workspace="ops",
        key=api.key,
        user_id=api.user_id,
        headers=api.headers,
    )
    assert_envelope(as_us.get(f"/evaluation/{theirs['id']}"), 404, "not_found")
    assert_envelope(as_us.post(f"/evaluation/{theirs['id']}/cancel"), 404, "not_found")
    assert_envelope(as_us.create(), 404, "not_found")
    assert_envelope(api.get(f"/evaluation/{theirs['id']}"), 404, "not_found")
    assert_envelope(api.post(f"/evaluation/{theirs['id']}/cancel"), 404, "not_found")
    assert_envelope(api.post(f"/evaluation/{theirs['id']}/retry-failed"), 404, "not_found")
    assert beta.get(f"/evaluation/{theirs['id']}").json()["status"] == "queued"
