"""`as_of` through HTTP on both backends: answers recorded while an evaluation runs (a
simulated worker in its own engine, as another process) are found again afterwards, by
position and by time; bad values are 422s in the envelope."""

from __future__ import annotations

from typing import Any

from domain import item as it
from tests.app.conftest import Api
from tests.app.simulated_worker import worker_moves

LEASE = "2099-01-01T00:00:00+00:00"


def answers(api: Api, evaluation_id: str, item_id: str, **params: str) -> dict[str, Any]:
    base = f"/evaluation/{evaluation_id}"
    found = {}
    for name, path in (
        ("evaluation", base),
        ("items", f"{base}/items"),
        ("item", f"{base}/items/{item_id}"),
        ("analytics", f"{base}/analytics"),
    ):
        response = api.get(path, params=params)
        assert response.status_code == 200, response.text
        found[name] = response.json()
    return found


def last_event(api: Api, evaluation_id: str) -> dict[str, Any]:
    events: list[dict[str, Any]] = api.get(f"/evaluation/{evaluation_id}/events").json()["events"]
    return events[-1]


def test_answers_recorded_during_a_run_are_found_again_with_as_of(api: Api) -> None:
    created = api.create(task_names=["find-the-flag", "decode-payload"], concurrency=2).json()
    evaluation_id = created["id"]
    items = api.get(f"/evaluation/{evaluation_id}/items").json()["items"]
    first, second = items[0]["id"], items[1]["id"]
    recorded: list[tuple[dict[str, Any], dict[str, Any]]] = []

    def record() -> None:
        recorded.append((last_event(api, evaluation_id), answers(api, evaluation_id, first)))

    record()
    for item_id, passed in ((first, True), (second, False)):
        ids = {"item_id": item_id, "evaluation_id": evaluation_id}
        for event in (
            it.ItemClaimed(**ids, worker_id="w-1", lease_expires_at=LEASE),
            it.ItemProvisioning(**ids, sandbox_id="sb"),
            it.ItemAgentStarted(**ids, session_id="s", isolation={"level": "weak"}),
            it.ItemAgentFinished(**ids, agent_result={"agent": "sim"}),
            it.ItemVerifying(**ids),
            it.ItemVerdict(**ids, passed=passed, result={"flag": "x"}),
        ):
            worker_moves(api, evaluation_id, item_id, event)
            record()
    final = recorded[-1][1]
    assert final["evaluation"]["status"] in ("completed", "partial", "failed")
    assert len({str(a["evaluation"]) for _, a in recorded}) > 5  # the answers did change

    for event, then in recorded:
        assert answers(api, evaluation_id, first, as_of=str(event["position"])) == then
        assert answers(api, evaluation_id, first, as_of=event["recorded_at"]) == then
        as_z = event["recorded_at"].replace("+00:00", "Z")
        assert answers(api, evaluation_id, first, as_of=as_z) == then
    # The status filter applies to the past items as it does to today's.
    middle_position = str(recorded[3][0]["position"])
    running = api.get(
        f"/evaluation/{evaluation_id}/items", params={"as_of": middle_position, "status": "queued"}
    ).json()
    assert [i["id"] for i in running["items"]] == [second]


def test_as_of_before_the_evaluation_or_malformed_is_refused(api: Api) -> None:
    earlier = api.create().json()
    created = api.create().json()
    evaluation_id = created["id"]
    before = str(last_event(api, earlier["id"])["position"])
    response = api.get(f"/evaluation/{evaluation_id}", params={"as_of": before})
    assert response.status_code == 404
    assert "did not exist yet" in response.json()["detail"]
    response = api.get(f"/evaluation/{evaluation_id}", params={"as_of": "2000-01-01T00:00:00Z"})
    assert response.status_code == 404
    for bad in ("yesterday", "-3", "2026-11-30", "2026-11-30T12:00:00", "1.5"):
        for path in ("", "/items", "/analytics"):
            response = api.get(f"/evaluation/{evaluation_id}{path}", params={"as_of": bad})
            assert response.status_code == 422, (bad, path, response.text)
            body = response.json()
            assert body["code"] == 422 and "as_of" in body["detail"]
            assert body["errors"][0]["loc"] == ["query", "as_of"]
