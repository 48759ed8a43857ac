"""Reading evaluations through HTTP: ids and prefixes, listing, items, analytics, history."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import pytest

from tests.app.conftest import Api, run_identity
from tests.app.http_helpers import assert_envelope, created


def id_sequence(monkeypatch: pytest.MonkeyPatch, api: Api) -> Callable[[list[str]], None]:
    """Make the service hand out the given ids next (items first, then the evaluation)."""
    queue: list[str] = []

    def next_id() -> str:
        return queue.pop(0) if queue else str(uuid.uuid4())

    monkeypatch.setattr(api.client.app.state.container.evaluations, "new_id", next_id)
    return queue.extend


def other_workspace_api(api: Api) -> Api:
    """The same owner, acting in a second workspace `other` of the same org."""

    async def setup(store: Any) -> None:
        org = await store.get_org_by_key("acme")
        await store.create_workspace(org.id, "other", "Other")

    run_identity(api.settings, setup)
    return Api(
        client=api.client,
        settings=api.settings,
        org="acme",
        workspace="other",
        key=api.key,
        user_id=api.user_id,
        headers=api.headers,
    )


# ---- one evaluation by id or prefix ----


def test_get_by_full_id_and_by_eight_character_prefix(api: Api) -> None:
    evaluation = created(api)
    full = evaluation["id"]

    assert api.get(f"/evaluation/{full}").json() == evaluation
    assert api.get(f"/evaluation/{full[:8]}").json() == evaluation
    assert api.get(f"/evaluation/{full[:13]}").json() == evaluation
    assert api.get(f"/evaluation/{full.upper()}").json() == evaluation


def test_prefix_shorter_than_eight_characters_is_400_too_short(api: Api) -> None:
    evaluation = created(api)

    for short in (evaluation["id"][:7], evaluation["id"][:1]):
        found = assert_envelope(api.get(f"/evaluation/{short}"), 400, "id_prefix_too_short")
        assert "at least 8" in found["detail"]


def test_unknown_id_or_non_hex_is_404(api: Api) -> None:
    created(api)

    assert_envelope(api.get(f"/evaluation/{uuid.uuid4()}"), 404, "not_found")
    assert_envelope(api.get("/evaluation/zzzzzzzzzz"), 404, "not_found")


def test_ambiguous_prefix_is_409_ambiguous_id(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    give = id_sequence(monkeypatch, api)
    first = "abcdef12-0000-4000-8000-000000000001"
    second = "abcdef12-1000-4000-8000-000000000002"
    give([str(uuid.uuid4()), first])
    created(api)
    give([str(uuid.uuid4()), second])
    created(api)

    body = assert_envelope(api.get("/evaluation/abcdef12"), 409, "ambiguous_id")
    assert body["request_id"]
    assert_envelope(api.post("/evaluation/abcdef12/cancel"), 409, "ambiguous_id")
    # A longer prefix settles it; each full id always works.
    assert api.get("/evaluation/abcdef12-0").json()["id"] == first
    assert api.get("/evaluation/abcdef12-1").json()["id"] == second
    assert api.get(f"/evaluation/{second}").json()["id"] == second


def test_prefix_is_unique_per_workspace(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    other = other_workspace_api(api)
    give = id_sequence(monkeypatch, api)
    give([str(uuid.uuid4()), "abcdef12-0000-4000-8000-000000000001"])
    created(api)
    give([str(uuid.uuid4()), "abcdef12-1000-4000-8000-000000000002"])
    created(other)

    assert api.get("/evaluation/abcdef12").json()["id"].endswith("0001")
    assert other.get("/evaluation/abcdef12").json()["id"].endswith("0002")


def test_another_workspaces_evaluation_is_404(api: Api) -> None:
    other = other_workspace_api(api)
    theirs = created(other)

    assert_envelope(api.get(f"/evaluation/{theirs['id']}"), 404, "not_found")
    assert_envelope(api.get(f"/evaluation/{theirs['id'][:8]}"), 404, "not_found")
    assert_envelope(api.get(f"/evaluation/{theirs['id']}/items"), 404, "not_found")
    assert_envelope(api.get(f"/evaluation/{theirs['id']}/analytics"), 404, "not_found")
    assert_envelope(api.get(f"/evaluation/{theirs['id']}/events"), 404, "not_found")
    assert_envelope(api.post(f"/evaluation/{theirs['id']}/cancel"), 404, "not_found")
    assert api.get("/evaluations").json()["total"] == 0
    assert other.get(f"/evaluation/{theirs['id']}").status_code == 200


# ---- the list ----


def test_list_is_newest_first_with_total_page_and_page_size(api: Api) -> None:
    ids = [created(api, name=f"e{i}")["id"] for i in range(5)]

    body = api.get("/evaluations").json()

    assert body["total"] == 5
    assert body["page"] == 1
    assert body["page_size"] == 50
    assert [e["id"] for e in body["items"]] == list(reversed(ids))
    assert body["items"][0] == api.get(f"/evaluation/{ids[-1]}").json()


def test_list_pages(api: Api) -> None:
    ids = [created(api, name=f"e{i}")["id"] for i in range(5)]
    newest_first = list(reversed(ids))

    pages = [
        api.get("/evaluations", params={"page": n, "page_size": 2}).json() for n in (1, 2, 3, 4)
    ]

    assert [[e["id"] for e in p["items"]] for p in pages] == [
        newest_first[0:2],
        newest_first[2:4],
        newest_first[4:5],
        [],
    ]
    assert all(p["total"] == 5 and p["page_size"] == 2 for p in pages)
    assert [p["page"] for p in pages] == [1, 2, 3, 4]


def test_list_page_size_over_200_or_page_below_one_is_400(api: Api) -> None:
    assert_envelope(api.get("/evaluations", params={"page_size": 201}), 400, "bad_request")
    assert_envelope(api.get("/evaluations", params={"page_size": 0}), 400, "bad_request")
    assert_envelope(api.get("/evaluations", params={"page": 0}), 400, "bad_request")
    assert_envelope(api.get("/evaluations", params={"page": "one"}), 400, "bad_request")
    assert api.get("/evaluations", params={"page_size": 200}).status_code == 200


def test_bad_query_parameter_error_names_it_as_query(api: Api) -> None:
    body = assert_envelope(api.get("/evaluations", params={"page_size": 201}), 400, "bad_request")

    assert [e["loc"] for e in body["errors"]] == [["query", "page_size"]]


def test_list_filters_by_status_and_rejects_an_unknown_status(api: Api) -> None:
    keep = created(api, name="keep")
    gone = created(api, name="gone")
    assert api.post(f"/evaluation/{gone['id']}/cancel").status_code == 200

    queued = api.get("/evaluations", params={"status": "queued"}).json()
    cancelled = api.get("/evaluations", params={"status": "cancelled"}).json()
    completed = api.get("/evaluations", params={"status": "completed"}).json()

    assert [e["id"] for e in queued["items"]] == [keep["id"]] and queued["total"] == 1
    assert [e["id"] for e in cancelled["items"]] == [gone["id"]] and cancelled["total"] == 1
    assert completed == {"items": [], "total": 0, "page": 1, "page_size": 50}
    assert_envelope(api.get("/evaluations", params={"status": "finished"}), 400, "bad_request")


def test_list_filters_by_project_id(api: Api) -> None:
    async def setup(store: Any) -> str:
        org = await store.get_org_by_key("acme")
        ws = await store.get_workspace(org.id, "main")
        project = await store.create_project(ws.id, "red", "Red")
        return str(project.id)

    project_id = run_identity(api.settings, setup)
    inside = created(api, project_id=project_id)
    created(api)

    found = api.get("/evaluations", params={"project_id": project_id}).json()

    assert [e["id"] for e in found["items"]] == [inside["id"]]
    assert found["total"] == 1
    none = api.get("/evaluations", params={"project_id": str(uuid.uuid4())}).json()
    assert none["total"] == 0 and none["items"] == []


# ---- items ----


def test_items_list_with_total_and_status_filter(api: Api) -> None:
    evaluation = created(api, task_names=["find-the-flag", "decode-payload", "path-traversal"])

    listed = api.get(f"/evaluation/{evaluation['id']}/items").json()
    queued = api.get(f"/evaluation/{evaluation['id']}/items", params={"status": "queued"}).json()
    passed = api.get(f"/evaluation/{evaluation['id']}/items", params={"status": "passed"}).json()

    assert set(listed) >= {"items", "total"}
    assert listed["total"] == 3 and len(listed["items"]) == 3
    assert queued == listed
    assert passed["items"] == [] and passed["total"] == 0
    response = api.get(f"/evaluation/{evaluation['id']}/items", params={"status": "nope"})
    assert_envelope(response, 400, "bad_request")
    # The prefix of the evaluation works for its items too.
    assert api.get(f"/evaluation/{evaluation['id'][:8]}/items").json() == listed


def test_item_by_id_and_by_prefix(api: Api) -> None:
    evaluation = created(api, task_names=["find-the-flag", "decode-payload"])
    items = api.get(f"/evaluation/{evaluation['id']}/items").json()["items"]
    second = items[1]

    assert api.get(f"/evaluation/{evaluation['id']}/items/{second['id']}").json() == second
    assert api.get(f"/evaluation/{evaluation['id']}/items/{second['id'][:8]}").json() == second
    short = api.get(f"/evaluation/{evaluation['id']}/items/{second['id'][:7]}")
    assert_envelope(short, 400, "id_prefix_too_short")
    unknown = api.get(f"/evaluation/{evaluation['id']}/items/{uuid.uuid4()}")
    assert_envelope(unknown, 404, "not_found")


def test_item_of_another_evaluation_is_404(api: Api) -> None:
    first = created(api)
    second = created(api)
    item = api.get(f"/evaluation/{first['id']}/items").json()["items"][0]

    response = api.get(f"/evaluation/{second['id']}/items/{item['id']}")

    assert_envelope(response, 404, "not_found")


def test_ambiguous_item_prefix_is_409(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    give = id_sequence(monkeypatch, api)
    give(
        [
            "12345678-aaaa-4000-8000-000000000001",
            "12345678-bbbb-4000-8000-000000000002",
            str(uuid.uuid4()),
        ]
    )
    evaluation = created(api, task_names=["find-the-flag", "decode-payload"])

    response = api.get(f"/evaluation/{evaluation['id']}/items/12345678")

    assert_envelope(response, 409, "ambiguous_id")
    one = api.get(f"/evaluation/{evaluation['id']}/items/12345678-b").json()
    assert one["task_name_snapshot"] == "decode-payload"


# ---- analytics ----


def test_analytics_object_shape_for_a_fresh_evaluation(api: Api) -> None:
    evaluation = created(api, task_names=["find-the-flag", "find-the-flag", "decode-payload"])

    body = api.get(f"/evaluation/{evaluation['id']}/analytics").json()

    assert body["status"] == "pending"
    assert body["total_samples"] == 3
    assert body["passed_count"] == 0
    assert body["failed_count"] == 0
    assert body["error_count"] == 0
    assert body["pass_rate"] is None
    assert body["degraded_runtime_count"] == 0
    snapshot = body["analytics_snapshot"]
    assert set(snapshot) >= {"task_breakdown", "runtime_durations_ms", "error_summary"}
    breakdown = {b["task_name"]: b for b in snapshot["task_breakdown"]}
    assert set(breakdown) == {"find-the-flag", "decode-payload"}
    assert breakdown["find-the-flag"] == {
        "task_name": "find-the-flag",
        "passed_count": 0,
        "total_samples": 2,
        "pass_rate": None,
    }
    assert snapshot["runtime_durations_ms"] == {"p50_ms": None, "p95_ms": None, "max_ms": None}
    assert snapshot["error_summary"] == []


def test_analytics_of_a_cancelled_evaluation_counts_errors_and_is_ready(api: Api) -> None:
    evaluation = created(api, task_names=["find-the-flag", "decode-payload"])
    assert api.post(f"/evaluation/{evaluation['id']}/cancel").status_code == 200

    body = api.get(f"/evaluation/{evaluation['id']}/analytics").json()

    assert body["status"] == "ready"
    assert body["error_count"] == 2
    assert body["pass_rate"] is None
    assert [e["count"] for e in body["analytics_snapshot"]["error_summary"]] == [2]


# ---- history ----


def test_history_in_order_with_actor_and_request_id_of_each_call(api: Api) -> None:
    response = api.create(task_names=["find-the-flag", "decode-payload"])
    evaluation = response.json()
    create_request_id = response.headers["x-request-id"]
    cancel = api.post(f"/evaluation/{evaluation['id']}/cancel")
    cancel_request_id = cancel.headers["x-request-id"]
    assert create_request_id and cancel_request_id and create_request_id != cancel_request_id

    body = api.get(f"/evaluation/{evaluation['id']}/events").json()

    events = body["events"]
    assert body["evaluation_id"] == evaluation["id"]
    assert [e["type"] for e in events] == [
        "evaluation.created",
        "item.queued",
        "item.queued",
        "evaluation.cancelled",
        "item.cancelled",
        "item.cancelled",
    ]
    positions = [e["position"] for e in events]
    assert positions == sorted(positions) and len(set(positions)) == len(positions)
    for event in events:
        assert event["actor"]["email"] == "owner@acme.test"
        assert event["actor"]["user_id"] == api.user_id
    assert {e["request_id"] for e in events[:3]} == {create_request_id}
    assert {e["request_id"] for e in events[3:]} == {cancel_request_id}
    assert events[0]["stream_id"] == evaluation["id"]
    assert events[0]["stream_type"] == "evaluation"
    assert {e["stream_type"] for e in events[1:3]} == {"item"}


def test_history_uses_the_callers_request_id_when_it_sends_one(api: Api) -> None:
    response = api.client.post(
        f"{api.base}/evaluation",
        json={"name": "n", "model": "m", "task_names": ["find-the-flag"]},
        headers={**api.headers, "X-Request-ID": "trace-42.abc"},
    )
    assert response.headers["x-request-id"] == "trace-42.abc"

    events = api.get(f"/evaluation/{response.json()['id']}/events").json()["events"]

    assert {e["request_id"] for e in events} == {"trace-42.abc"}


def test_history_pages_with_after_and_limit(api: Api) -> None:
    evaluation = created(api, task_names=["find-the-flag", "decode-payload", "path-traversal"])
    full = api.get(f"/evaluation/{evaluation['id']}/events").json()["events"]

    first = api.get(f"/evaluation/{evaluation['id']}/events", params={"limit": 2}).json()
    rest = api.get(
        f"/evaluation/{evaluation['id']}/events", params={"after": first["next_after"]}
    ).json()

    assert len(full) == 4
    assert first["events"] == full[:2]
    assert first["next_after"] == full[1]["position"]
    assert rest["events"] == full[2:]
    assert rest["next_after"] is None
