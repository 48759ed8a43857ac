"""UUIDs are case-insensitive: an existing project, runtime, secret, evaluation or item named
in upper case (or without hyphens) is found, in bodies, paths (prefixes too) and queries; and a
body id that is not a UUID is a 422 naming its field, not a 404."""

from __future__ import annotations

import json
from typing import Any

import pytest
from click.testing import CliRunner

from app.cli import main
from tests.app.conftest import Api, run_identity
from tests.app.http_helpers import assert_envelope, created, items_of


def _references(api: Api) -> dict[str, str]:
    async def setup(store: Any) -> dict[str, str]:
        org = await store.get_org_by_key("acme")
        main_ws = await store.get_workspace(org.id, "main")
        project = await store.create_project(main_ws.id, "red-team", "Red team")
        runtime = await store.create_runtime(main_ws.id, "gpu-box", "https://runtime.example/v1")
        secret = await store.create_secret(api.user_id, "OPENAI_API_KEY", "openai", "sk-abcdef12")
        return {"project": project.id, "runtime": runtime.id, "secret": secret.id}

    found: dict[str, str] = run_identity(api.settings, setup)
    return found


def _example_request(ids: dict[str, str]) -> dict[str, Any]:
    """A create request as the reference API's example writes it: ids in upper case."""
    return {
        "name": "nightly-red-team",
        "model": "openai/gpt-4o-mini",
        "kind": "security_task_benchmark",
        "task_names": ["find-the-flag", "decode-payload"],
        "project_id": ids["project"].upper(),
        "runtime_id": ids["runtime"].upper(),
        "secret_ids": [ids["secret"].upper()],
        "concurrency": 2,
        "cleanup_policy": "always",
    }


def test_the_example_request_with_upper_case_ids_is_created(api: Api) -> None:
    ids = _references(api)

    response = api.client.post(
        f"{api.base}/evaluation", json=_example_request(ids), headers=api.headers
    )

    assert response.status_code == 201, response.text
    body = response.json()
    # Stored and answered in the canonical (lower-case) form, so filters and joins match.
    assert body["project_id"] == ids["project"]
    assert body["runtime_id"] == ids["runtime"]
    history = api.get(f"/evaluation/{body['id']}/events").json()["events"]
    config = next(e for e in history if e["type"] == "evaluation.created")["data"]["config"]
    assert config["secret_ids"] == [ids["secret"]]
    for project_id in (ids["project"], ids["project"].upper()):
        listed = api.get("/evaluations", params={"project_id": project_id}).json()
        assert [e["id"] for e in listed["items"]] == [body["id"]]


def test_ids_without_hyphens_name_the_same_resources(api: Api) -> None:
    ids = _references(api)
    request = _example_request({k: v.replace("-", "") for k, v in ids.items()})

    response = api.client.post(f"{api.base}/evaluation", json=request, headers=api.headers)

    assert response.status_code == 201, response.text
    assert response.json()["project_id"] == ids["project"]


def test_malformed_ids_in_the_example_request_are_422_naming_each_field(api: Api) -> None:
    ids = _references(api)
    request = _example_request(ids)
    request["project_id"] = "red-team"
    request["secret_ids"] = [ids["secret"], "OPENAI_API_KEY"]

    response = api.client.post(f"{api.base}/evaluation", json=request, headers=api.headers)

    body = assert_envelope(response, 422, "validation_error")
    assert [e["loc"] for e in body["errors"]] == [["body", "project_id"]]
    request["project_id"] = ids["project"]
    response = api.client.post(f"{api.base}/evaluation", json=request, headers=api.headers)
    body = assert_envelope(response, 422, "validation_error")
    assert [e["loc"] for e in body["errors"]] == [["body", "secret_ids", 1]]
    request["secret_ids"] = [ids["secret"]]
    request["runtime_id"] = "gpu-box"
    response = api.client.post(f"{api.base}/evaluation", json=request, headers=api.headers)
    body = assert_envelope(response, 422, "validation_error")
    assert [e["loc"] for e in body["errors"]] == [["body", "runtime_id"]]


def test_evaluation_and_item_paths_accept_upper_case_ids_and_prefixes(api: Api) -> None:
    evaluation = created(api)
    item = items_of(api, evaluation["id"])[0]
    upper, item_upper = evaluation["id"].upper(), item["id"].upper()

    for path in (upper, upper[:8], evaluation["id"].replace("-", "").upper()):
        response = api.get(f"/evaluation/{path}")
        assert response.status_code == 200, (path, response.text)
        assert response.json()["id"] == evaluation["id"]
    for path in (item_upper, item_upper[:8]):
        response = api.get(f"/evaluation/{upper[:8]}/items/{path}")
        assert response.status_code == 200, (path, response.text)
        assert response.json()["id"] == item["id"]
    assert api.get(f"/evaluation/{upper}/events").status_code == 200
    too_short = api.get(f"/evaluation/{upper[:4]}")
    assert_envelope(too_short, 400, "id_prefix_too_short")
    cancelled = api.post(f"/evaluation/{upper}/cancel")
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["status"] == "cancelled"


def test_runtime_path_accepts_an_upper_case_id(api: Api) -> None:
    ids = _references(api)

    response = api.get(f"/runtimes/{ids['runtime'].upper()}")

    assert response.status_code == 200, response.text
    assert response.json()["id"] == ids["runtime"]


def test_project_id_query_that_is_not_a_uuid_is_400_naming_it(api: Api) -> None:
    body = assert_envelope(
        api.get("/evaluations", params={"project_id": "red-team"}), 400, "bad_request"
    )
    assert [e["loc"] for e in body["errors"]] == [["query", "project_id"]]
    body = assert_envelope(
        api.client.get(
            f"/api/v1/org/{api.org}/sandboxes",
            params={"project_id": "red-team"},
            headers=api.headers,
        ),
        400,
        "bad_request",
    )
    assert [e["loc"] for e in body["errors"]] == [["query", "project_id"]]


@pytest.fixture(autouse=True)
def _cli_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    monkeypatch.setenv("ASSAY_SECRET_KEY_FILE", str(tmp_path / "keys" / "secret-key"))
    monkeypatch.delenv("ASSAY_DATABASE_URL", raising=False)


def test_cli_revokes_a_key_named_in_upper_case(api: Api) -> None:
    url = api.settings.database_url
    made = CliRunner().invoke(
        main, ["admin", "create-key", "--email", "owner@acme.test", "--database-url", url]
    )
    assert made.exit_code == 0, made.output
    key_id = made.stdout.split("id=", 1)[1].split()[0]

    revoked = CliRunner().invoke(
        main, ["admin", "revoke-key", key_id.upper(), "--database-url", url]
    )

    assert revoked.exit_code == 0, revoked.output
    listed = CliRunner().invoke(
        main, ["admin", "list-keys", "--email", "owner@acme.test", "--database-url", url]
    )
    line = next(x for x in listed.stdout.splitlines() if x.startswith(key_id))
    assert "revoked" in line, json.dumps(listed.stdout)
