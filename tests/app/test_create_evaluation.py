"""POST /evaluation through HTTP: the evaluation object, its items, and every refusal."""

from __future__ import annotations

import asyncio
import re
import uuid
from datetime import datetime, timedelta
from typing import Any

from app.composition import open_store
from infrastructure.db.engine import create_engine
from tests.app.conftest import Api, run_identity
from tests.app.http_helpers import assert_envelope, items_of

EVALUATION_FIELDS = {
    "id",
    "name",
    "kind",
    "model",
    "capability",
    "agent_type",
    "project_id",
    "runtime_id",
    "sandbox_provider",
    "cleanup_policy",
    "requested_concurrency",
    "effective_concurrency",
    "task_timeout_sec",
    "dataset_size",
    "status",
    "job_status",
    "item_counts",
    "analytics",
    "error_summary",
    "queued_at",
    "started_at",
    "completed_at",
    "created_at",
    "updated_at",
    "created_by",
    "created_by_email",
    "created_by_user",
}
ITEM_STATUSES = {
    "queued",
    "claiming",
    "provisioning",
    "agent_running",
    "agent_finished",
    "verifying",
    "passed",
    "failed",
    "timed_out",
    "cancelled",
    "infra_error",
    "errored",
}
FIVE_TASKS = [
    "find-the-flag",
    "crack-weak-hash",
    "path-traversal",
    "patch-vuln-function",
    "decode-payload",
]


def last_position(url: str) -> int:
    async def main() -> int:
        engine = create_engine(url)
        try:
            return await open_store(engine)[0].last_position()
        finally:
            await engine.dispose()

    return asyncio.run(main())


def assert_utc(value: str) -> None:
    parsed = datetime.fromisoformat(value)
    assert parsed.utcoffset() == timedelta(0), value


def assert_422_at(response: Any, *loc: str | int) -> dict[str, Any]:
    body = assert_envelope(response, 422, "validation_error")
    locs = [tuple(e["loc"]) for e in body["errors"]]
    assert ("body", *loc) in locs, locs
    for error in body["errors"]:
        assert error["msg"] and error["type"]
    return body


def item_queued_variables(api: Api, evaluation_id: str) -> list[dict[str, Any]]:
    history = api.get(f"/evaluation/{evaluation_id}/events").json()["events"]
    queued = [e["data"] for e in history if e["type"] == "item.queued"]
    return [e["variables"] for e in sorted(queued, key=lambda d: d["position"])]


# ---- the created evaluation ----


def test_create_answers_201_with_the_full_evaluation_object(api: Api) -> None:
    response = api.create(name="nightly", model="gpt-test", task_names=FIVE_TASKS, concurrency=3)

    assert response.status_code == 201, response.text
    body = response.json()
    assert body.keys() >= EVALUATION_FIELDS, EVALUATION_FIELDS - body.keys()
    uuid.UUID(body["id"])
    assert body["name"] == "nightly"
    assert body["model"] == "gpt-test"
    assert body["kind"] == "security_task_benchmark"
    assert body["status"] == body["job_status"] == "queued"
    assert body["cleanup_policy"] == "always"
    assert body["sandbox_provider"] == "local"
    assert body["requested_concurrency"] == 3
    # The API suites run no worker, so nothing can be granted yet.
    assert body["effective_concurrency"] == 0
    assert body["task_timeout_sec"] == api.settings.default_task_timeout_sec
    assert body["dataset_size"] == 5
    assert set(body["item_counts"]) == ITEM_STATUSES
    assert sum(body["item_counts"].values()) == body["dataset_size"]
    assert body["item_counts"]["queued"] == 5
    assert body["analytics"] == {"status": "pending"}
    assert body["error_summary"] is None
    assert body["started_at"] is None and body["completed_at"] is None
    for stamp in ("queued_at", "created_at", "updated_at"):
        assert_utc(body[stamp])
    assert body["created_by"] == api.user_id
    assert body["created_by_email"] == "owner@acme.test"
    user = body["created_by_user"]
    assert user["id"] == api.user_id
    assert user["email"] == "owner@acme.test"
    assert user["username"] == "owner"
    assert "full_name" in user
    # What create answered is what a later read answers.
    assert api.get(f"/evaluation/{body['id']}").json() == body


def test_create_stores_the_optional_settings_it_was_given(api: Api) -> None:
    response = api.create(
        cleanup_policy="on_success",
        task_timeout_sec=42,
        concurrency=100,
        agent_type="oracle",
        sandbox_provider="local",
        kind="security_task_benchmark",
    )

    assert response.status_code == 201, response.text
    body = response.json()
    assert body["cleanup_policy"] == "on_success"
    assert body["task_timeout_sec"] == 42
    assert body["requested_concurrency"] == 100
    assert body["agent_type"] == "oracle"


def test_capability_without_model_is_accepted(api: Api) -> None:
    response = api.create(model=None, capability="oracle")

    assert response.status_code == 201, response.text
    assert response.json()["capability"] == "oracle"
    assert response.json()["model"] is None


def test_one_queued_item_per_task_name_in_order(api: Api) -> None:
    names = ["decode-payload", "find-the-flag", "acme/crack-weak-hash", "find-the-flag@2.0.0"]
    evaluation = api.create(task_names=names, model="m-1").json()

    items = items_of(api, evaluation["id"])

    assert [i["position"] for i in items] == [1, 2, 3, 4]
    assert [i["task_name_snapshot"] for i in items] == [
        "decode-payload",
        "find-the-flag",
        "crack-weak-hash",
        "find-the-flag",
    ]
    for item in items:
        pattern = rf"{re.escape(item['task_name_snapshot'])}@\d+(\.\d+)*"
        assert re.fullmatch(pattern, item["task_ref"])
        assert item["status"] == item["item_status"] == "queued"
        assert item["evaluation_id"] == evaluation["id"]
        assert item["model"] == "m-1"
        assert item["passed"] is None
        assert item["retry_count"] == 0
    assert items[3]["task_ref"] == "find-the-flag@2.0.0"
    assert len({i["id"] for i in items}) == 4


def test_dataset_object_with_rows_makes_one_item_per_row_and_keeps_variables(api: Api) -> None:
    rows = [
        {"task_name": "find-the-flag", "target": "alpha", "level": 2},
        {"task_name": "decode-payload", "target": None},
    ]
    response = api.create(task_names=None, dataset={"rows": rows})

    assert response.status_code == 201, response.text
    evaluation = response.json()
    assert evaluation["dataset_size"] == 2
    items = items_of(api, evaluation["id"])
    assert [i["task_name_snapshot"] for i in items] == ["find-the-flag", "decode-payload"]
    assert item_queued_variables(api, evaluation["id"]) == [
        {"target": "alpha", "level": 2},
        {"target": None},
    ]


def test_dataset_as_a_bare_list_of_rows_is_accepted(api: Api) -> None:
    rows = [{"task_name": "path-traversal", "hint": "x"}, {"task_name": "crack-weak-hash"}]
    response = api.create(task_names=None, dataset=rows)

    assert response.status_code == 201, response.text
    items = items_of(api, response.json()["id"])
    assert [i["task_name_snapshot"] for i in items] == ["path-traversal", "crack-weak-hash"]
    assert item_queued_variables(api, response.json()["id"]) == [{"hint": "x"}, {}]


def test_task_names_win_over_dataset(api: Api) -> None:
    response = api.create(
        task_names=["decode-payload"],
        dataset={"rows": [{"task_name": "find-the-flag"}, {"task_name": "crack-weak-hash"}]},
    )

    assert response.status_code == 201, response.text
    assert response.json()["dataset_size"] == 1
    assert [i["task_name_snapshot"] for i in items_of(api, response.json()["id"])] == [
        "decode-payload"
    ]


def test_unknown_request_fields_are_ignored(api: Api) -> None:
    response = api.create(
        manifest_extra={"anything": [1, 2]},
        another_unknown="value",
        engine="e",
        max_steps=7,
        judge_model="j",
        model_overrides={"temperature": 0},
        egress_overrides=["example.com"],
        task_config={"difficulty": "hard"},
    )

    assert response.status_code == 201, response.text
    assert "manifest_extra" not in response.json()


# ---- validation: every rule of the create table answers 422 naming the field ----


def test_name_empty_or_too_long_is_422_at_name(api: Api) -> None:
    assert_422_at(api.create(name=""), "name")
    assert_422_at(api.create(name="x" * 256), "name")
    assert api.create(name="x" * 255).status_code == 201


def test_name_missing_is_422_at_name(api: Api) -> None:
    response = api.client.post(
        f"{api.base}/evaluation",
        json={"model": "m", "task_names": ["find-the-flag"]},
        headers=api.headers,
    )
    assert_422_at(response, "name")


def test_concurrency_outside_1_to_100_is_422_at_concurrency(api: Api) -> None:
    assert_422_at(api.create(concurrency=0), "concurrency")
    assert_422_at(api.create(concurrency=101), "concurrency")
    assert api.create(concurrency=1).status_code == 201


def test_the_concurrency_bound_of_the_schema_is_the_domains(api: Api) -> None:
    from domain.evaluation import MAX_CONCURRENCY

    schema = api.client.get("/schema/openapi.json").json()
    spec = schema["components"]["schemas"]["CreateEvaluationRequest"]["properties"]
    assert spec["concurrency"]["maximum"] == MAX_CONCURRENCY
    assert f"1-{MAX_CONCURRENCY}" in spec["concurrency"]["description"]
    assert api.create(concurrency=MAX_CONCURRENCY).status_code == 201
    assert_422_at(api.create(concurrency=MAX_CONCURRENCY + 1), "concurrency")


def test_task_timeout_below_one_second_is_422_at_task_timeout_sec(api: Api) -> None:
    assert_422_at(api.create(task_timeout_sec=0), "task_timeout_sec")
    assert api.create(task_timeout_sec=1).status_code == 201


def test_bad_cleanup_policy_is_422_at_cleanup_policy(api: Api) -> None:
    assert_422_at(api.create(cleanup_policy="never"), "cleanup_policy")


def test_bad_kind_is_422_at_kind(api: Api) -> None:
    assert_422_at(api.create(kind="chat_benchmark"), "kind")


def test_every_unknown_task_is_named(api: Api) -> None:
    response = api.create(task_names=["nope-one", "find-the-flag", "nope-two", "find-the-flag@9.9"])

    body = assert_422_at(response, "task_names", 0)
    locs = [tuple(e["loc"]) for e in body["errors"]]
    assert ("body", "task_names", 2) in locs
    assert ("body", "task_names", 3) in locs
    assert ("body", "task_names", 1) not in locs
    messages = " ".join(e["msg"] for e in body["errors"])
    for bad in ("nope-one", "nope-two", "find-the-flag@9.9"):
        assert bad in messages


def test_unknown_task_in_a_dataset_row_is_named(api: Api) -> None:
    response = api.create(
        task_names=None, dataset={"rows": [{"task_name": "find-the-flag"}, {"task_name": "ghost"}]}
    )
    body = assert_422_at(response, "dataset", "rows", 1)
    assert "ghost" in body["errors"][0]["msg"]


def test_model_missing_without_capability_is_422_at_model(api: Api) -> None:
    assert_422_at(api.create(model=None), "model")
    assert_422_at(api.create(model=""), "model")


def test_unknown_agent_type_or_capability_is_422_naming_it(api: Api) -> None:
    assert_422_at(api.create(agent_type="skynet"), "agent_type")
    assert_422_at(api.create(capability="skynet"), "capability")
    assert api.create(agent_type="nop").status_code == 201
    assert api.create(agent_type="openai").status_code == 201


def test_unknown_sandbox_provider_is_422_at_sandbox_provider(api: Api) -> None:
    assert_422_at(api.create(sandbox_provider="kubernetes"), "sandbox_provider")


def test_no_tasks_at_all_is_422(api: Api) -> None:
    for body in (
        {"task_names": None},
        {"task_names": []},
        {"task_names": None, "dataset": {"rows": []}},
        {"task_names": None, "dataset": []},
    ):
        response = api.create(**body)
        found = assert_envelope(response, 422, "validation_error")
        assert found["errors"], body
        assert all(e["loc"][0] == "body" for e in found["errors"]), found


def test_dataset_row_without_task_name_is_422_at_that_row(api: Api) -> None:
    response = api.create(
        task_names=None, dataset={"rows": [{"task_name": "find-the-flag"}, {"target": "x"}]}
    )
    assert_422_at(response, "dataset", "rows", 1, "task_name")

    response = api.create(task_names=None, dataset=[{"target": "x"}])
    assert_422_at(response, "dataset", 0, "task_name")


def test_task_set_alone_yields_no_items_and_is_422_at_task_set(api: Api) -> None:
    assert_422_at(api.create(task_names=None, task_set="owasp-top-10"), "task_set")


def test_dataset_that_is_not_rows_or_has_nested_variables_is_422_naming_it(api: Api) -> None:
    assert_422_at(api.create(task_names=None, dataset={"items": []}), "dataset", "rows")
    nested = {"rows": [{"task_name": "find-the-flag", "cfg": {"a": 1}}]}
    assert_422_at(api.create(task_names=None, dataset=nested), "dataset", "rows", 0, "cfg")
    assert_422_at(api.create(task_names=None, dataset=["find-the-flag"]), "dataset", 0)


def test_several_bad_fields_are_all_reported_at_once(api: Api) -> None:
    response = api.create(
        model=None, agent_type="skynet", sandbox_provider="mars", task_names=["ghost"]
    )
    body = assert_envelope(response, 422, "validation_error")
    locs = {tuple(e["loc"]) for e in body["errors"]}
    assert {
        ("body", "model"),
        ("body", "agent_type"),
        ("body", "sandbox_provider"),
        ("body", "task_names", 0),
    } <= locs


# ---- references to other resources ----


def _other_workspace(api: Api) -> dict[str, str]:
    async def setup(store: Any) -> dict[str, str]:
        org = await store.get_org_by_key("acme")
        main = await store.get_workspace(org.id, "main")
        other = await store.create_workspace(org.id, "other", "Other")
        project = await store.create_project(other.id, "elsewhere", "Elsewhere")
        runtime = await store.create_runtime(other.id, "far-runtime")
        return {"main": main.id, "other": other.id, "project": project.id, "runtime": runtime.id}

    result: dict[str, str] = run_identity(api.settings, setup)
    return result


def test_project_and_runtime_not_in_the_workspace_are_404(api: Api) -> None:
    ids = _other_workspace(api)
    for field, value in (
        ("project_id", ids["project"]),
        ("project_id", str(uuid.uuid4())),
        ("runtime_id", ids["runtime"]),
        ("runtime_id", str(uuid.uuid4())),
    ):
        assert_envelope(api.create(**{field: value}), 404, "not_found")


def test_project_and_runtime_ids_that_are_not_uuids_are_422_naming_the_field(api: Api) -> None:
    for field in ("project_id", "runtime_id"):
        for value in ("not-a-uuid", "", "0a1b2c3d", 42):
            body = assert_422_at(api.create(**{field: value}), field)
            assert len(body["errors"]) == 1, body


def test_secret_ids_that_are_not_the_callers_are_404(api: Api) -> None:
    async def setup(store: Any) -> tuple[str, str]:
        mine = await store.create_secret(api.user_id, "OPENAI_API_KEY", "openai", "sk-mine-123456")
        stranger = await store.create_user("stranger@else.test", "stranger", "Stranger")
        theirs = await store.create_secret(stranger.id, "KEY", "openai", "sk-theirs-9876")
        return mine.id, theirs.id

    mine, theirs = run_identity(api.settings, setup)

    assert_envelope(api.create(secret_ids=[theirs]), 404, "not_found")
    assert_envelope(api.create(secret_ids=[mine, theirs]), 404, "not_found")
    assert_envelope(api.create(secret_ids=[str(uuid.uuid4())]), 404, "not_found")
    assert api.create(secret_ids=[mine]).status_code == 201


def test_secret_ids_that_are_not_uuids_are_422_naming_the_entry(api: Api) -> None:
    body = assert_422_at(api.create(secret_ids=[str(uuid.uuid4()), "garbage"]), "secret_ids", 1)
    assert "UUID" in body["errors"][0]["msg"]
    assert_422_at(api.create(secret_ids=["garbage"]), "secret_ids", 0)


def test_valid_project_runtime_and_secret_are_accepted_and_reflected(api: Api) -> None:
    async def setup(store: Any) -> tuple[str, str, str]:
        org = await store.get_org_by_key("acme")
        main = await store.get_workspace(org.id, "main")
        project = await store.create_project(main.id, "red-team", "Red team")
        runtime = await store.create_runtime(main.id, "gpu-box", "https://runtime.example")
        secret = await store.create_secret(api.user_id, "KEY", "openai", "sk-value-abcdef")
        return project.id, runtime.id, secret.id

    project_id, runtime_id, secret_id = run_identity(api.settings, setup)

    response = api.create(project_id=project_id, runtime_id=runtime_id, secret_ids=[secret_id])

    assert response.status_code == 201, response.text
    body = response.json()
    assert body["project_id"] == project_id
    assert body["runtime_id"] == runtime_id
    history = api.get(f"/evaluation/{body['id']}/events").json()["events"]
    created = next(e for e in history if e["type"] == "evaluation.created")
    assert created["data"]["config"]["secret_ids"] == [secret_id]
    assert "sk-value-abcdef" not in api.get(f"/evaluation/{body['id']}/events").text
    listed = api.get("/evaluations", params={"project_id": project_id}).json()
    assert [e["id"] for e in listed["items"]] == [body["id"]]


# ---- a refused create changes nothing ----


def test_a_refused_create_appends_nothing(api: Api) -> None:
    ids = _other_workspace(api)
    assert api.create().status_code == 201
    url = api.settings.database_url
    before_position = last_position(url)
    before_total = api.get("/evaluations").json()["total"]

    refusals = [
        api.create(concurrency=0),
        api.create(task_names=["ghost"]),
        api.create(model=None),
        api.create(task_names=["find-the-flag", "ghost"]),
        api.create(project_id=ids["project"]),
        api.create(runtime_id=ids["runtime"]),
        api.create(secret_ids=[str(uuid.uuid4())]),
        api.client.post(
            f"{api.base}/evaluation",
            content=b'{"name": ',
            headers={**api.headers, "content-type": "application/json"},
        ),
    ]

    assert [r.status_code for r in refusals] == [422, 422, 422, 422, 404, 404, 404, 400]
    assert last_position(url) == before_position
    assert api.get("/evaluations").json()["total"] == before_total
