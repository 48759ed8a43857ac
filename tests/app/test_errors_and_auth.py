"""The error envelope, authentication, transport limits, scope endpoints and operations routes."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
import sqlalchemy.exc
from litestar.testing import TestClient

from app.main import create_app
from infrastructure.identity.bootstrap import bootstrap
from tests.app.conftest import Api, run_identity
from tests.app.http_helpers import assert_envelope


def new_key(api: Api, *, revoke: bool = False) -> str:
    async def issue(store: Any) -> str:
        info, raw = await store.create_api_key(api.user_id, "second")
        if revoke:
            await store.revoke_api_key(info.id)
        return str(raw)

    result: str = run_identity(api.settings, issue)
    return result


def with_agent(api: Api, agent: str) -> dict[str, str]:
    return {**api.headers, "User-Agent": agent}


def app_with(api: Api, **overrides: Any) -> TestClient[Any]:
    return TestClient(create_app(msgspec.structs.replace(api.settings, **overrides)))


# ---- authentication ----


def test_no_key_is_401(api: Api) -> None:
    assert_envelope(api.client.get(f"{api.base}/evaluations"), 401, "authentication_error")
    assert_envelope(api.client.get("/api/v1/user"), 401, "authentication_error")
    response = api.client.post(f"{api.base}/evaluation", json={"name": "x"})
    assert_envelope(response, 401, "authentication_error")


def test_unknown_key_is_401(api: Api) -> None:
    for key in ("assay_" + "x" * 43, "not-even-a-key", api.key + "x", "assay_" + "y" * 500):
        response = api.client.get("/api/v1/user", headers={"X-API-Key": key})
        assert_envelope(response, 401, "authentication_error")


def test_revoked_key_is_401(api: Api) -> None:
    live = new_key(api)
    revoked = new_key(api, revoke=True)

    assert api.client.get("/api/v1/user", headers={"X-API-Key": live}).status_code == 200
    response = api.client.get("/api/v1/user", headers={"X-API-Key": revoked})
    assert_envelope(response, 401, "authentication_error")


def test_authorization_bearer_works_like_x_api_key(api: Api) -> None:
    for scheme in ("Bearer", "bearer"):
        headers = {"Authorization": f"{scheme} {api.key}"}
        assert api.client.get("/api/v1/user", headers=headers).json()["id"] == api.user_id
        response = api.client.post(
            f"{api.base}/evaluation",
            json={"name": "n", "model": "m", "task_names": ["find-the-flag"]},
            headers=headers,
        )
        assert response.status_code == 201, response.text
    basic = {"Authorization": f"Basic {api.key}"}
    assert_envelope(api.client.get("/api/v1/user", headers=basic), 401, "authentication_error")


# ---- malformed requests ----


def test_malformed_json_is_400_bad_request(api: Api) -> None:
    for raw in (b'{"name": ', b"not json at all", b'{"name": "x",}'):
        response = api.client.post(
            f"{api.base}/evaluation",
            content=raw,
            headers={**api.headers, "content-type": "application/json"},
        )
        assert_envelope(response, 400, "bad_request")


def test_non_json_content_type_is_415(api: Api) -> None:
    for content_type in ("text/plain", "application/x-www-form-urlencoded", "application/xml"):
        response = api.client.post(
            f"{api.base}/evaluation",
            content=b'{"name": "x", "model": "m", "task_names": ["find-the-flag"]}',
            headers={**api.headers, "content-type": content_type},
        )
        assert_envelope(response, 415, "unsupported_media_type")
    assert api.get("/evaluations").json()["total"] == 0


def test_unknown_route_is_a_404_envelope(api: Api) -> None:
    assert_envelope(api.client.get("/no/such/route", headers=api.headers), 404, "not_found")
    assert_envelope(api.get("/evaluation/abcdef12/nothing"), 404, "not_found")


def test_wrong_method_is_a_405_envelope(api: Api) -> None:
    assert_envelope(
        api.client.delete(f"{api.base}/evaluations", headers=api.headers),
        405,
        "method_not_allowed",
    )
    assert_envelope(
        api.client.put("/api/v1/user", headers=api.headers, json={}), 405, "method_not_allowed"
    )


def test_oversize_body_is_413_payload_too_large(api: Api) -> None:
    with app_with(api, max_body_bytes=512) as client:
        small = {"name": "n", "model": "m", "task_names": ["find-the-flag"]}
        big = {**small, "name": "n" * 100, "task_config": {"blob": "x" * 2000}}
        ok = client.post(f"{api.base}/evaluation", json=small, headers=api.headers)
        assert ok.status_code == 201, ok.text

        response = client.post(f"{api.base}/evaluation", json=big, headers=api.headers)

        assert_envelope(response, 413, "payload_too_large")
        assert client.get(f"{api.base}/evaluations", headers=api.headers).json()["total"] == 1


def test_rate_limit_is_429_with_retry_after_and_counts_per_key(api: Api) -> None:
    second = new_key(api)
    with app_with(api, rate_limit=3) as client:
        for _ in range(3):
            assert client.get("/api/v1/user", headers=api.headers).status_code == 200

        limited = client.get("/api/v1/user", headers=api.headers)

        assert_envelope(limited, 429, "rate_limited")
        assert int(limited.headers["retry-after"]) > 0
        assert client.get("/api/v1/user", headers={"X-API-Key": second}).status_code == 200
        assert client.get("/health").status_code == 200


def test_rate_limited_answer_echoes_the_request_id_header(api: Api) -> None:
    with app_with(api, rate_limit=1) as client:
        client.get("/api/v1/user", headers=api.headers)
        limited = client.get("/api/v1/user", headers={**api.headers, "X-Request-ID": "rl-1"})

        assert limited.status_code == 429
        assert limited.json()["request_id"] == "rl-1"
        assert limited.headers.get("x-request-id") == "rl-1"


def test_old_dreadnode_sdk_is_426_and_other_user_agents_pass(api: Api) -> None:
    for agent in ("dreadnode-sdk/1.0.0", "dreadnode-sdk/1.9.99", "python dreadnode-sdk/0.1"):
        response = api.client.get("/api/v1/user", headers={**api.headers, "User-Agent": agent})
        body = assert_envelope(response, 426, "upgrade_required")
        assert "upgrade" in body["detail"].lower()
    for agent in ("dreadnode-sdk/2.0.52", "dreadnode-sdk/2.0.0", "dreadnode-sdk/10.1.0"):
        response = api.client.get("/api/v1/user", headers={**api.headers, "User-Agent": agent})
        assert response.status_code == 200, (agent, response.text)
    for agent in ("curl/8.5.0", "python-httpx/0.27", "Mozilla/5.0", ""):
        response = api.client.get("/api/v1/user", headers={**api.headers, "User-Agent": agent})
        assert response.status_code == 200, (agent, response.text)


def test_client_version_floor_is_configurable(api: Api) -> None:
    with app_with(api, min_client_version="3.1.0") as client:
        old = client.get(
            "/api/v1/user", headers={**api.headers, "User-Agent": "dreadnode-sdk/3.0.9"}
        )
        new = client.get(
            "/api/v1/user", headers={**api.headers, "User-Agent": "dreadnode-sdk/3.1.0"}
        )

        assert_envelope(old, 426, "upgrade_required")
        assert new.status_code == 200


def test_client_at_the_floor_written_with_fewer_components_passes(api: Api) -> None:
    response = api.client.get(
        "/api/v1/user", headers={**api.headers, "User-Agent": "dreadnode-sdk/2.0"}
    )

    assert response.status_code == 200, response.text


def test_unexpected_exception_is_500_with_request_id_and_no_internals(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(*args: Any, **kwargs: Any) -> Any:
        raise sqlalchemy.exc.OperationalError(
            "SELECT doc FROM evaluations WHERE workspace_id = 'w'",
            {"workspace_id": "w"},
            RuntimeError("disk I/O error at /var/lib/assay/assay.db"),
        )

    monkeypatch.setattr(api.client.app.state.container.queries, "list_evaluations", broken)

    response = api.client.get(
        f"{api.base}/evaluations", headers={**api.headers, "X-Request-ID": "req-500"}
    )

    body = assert_envelope(response, 500, "internal_error")
    assert body["request_id"] == "req-500"
    assert response.headers["x-request-id"] == "req-500"
    for leak in ("Traceback", "SELECT", "evaluations WHERE", "disk I/O", "OperationalError", ".py"):
        assert leak not in response.text, leak
    # The app keeps serving after it.
    assert api.get("/evaluation/00000000").status_code == 404


# ---- scope endpoints ----


def test_user_endpoint(api: Api) -> None:
    body = api.client.get("/api/v1/user", headers=api.headers).json()

    assert body["id"] == api.user_id
    assert body["email_address"] == "owner@acme.test"
    assert body["username"] == "owner"


def test_org_endpoint_has_every_field_of_the_spec(api: Api) -> None:
    response = api.client.get("/api/v1/org/acme", headers=api.headers)

    assert response.status_code == 200, response.text
    body = response.json()
    for field in ("id", "name", "key", "created_at", "updated_at"):
        assert isinstance(body[field], str) and body[field], field
    assert body["key"] == "acme"
    for field in (
        "effective_max_sandbox_runtime_seconds",
        "effective_default_sandbox_runtime_seconds",
        "platform_max_sandbox_runtime_seconds",
        "platform_default_sandbox_runtime_seconds",
    ):
        assert isinstance(body[field], int) and not isinstance(body[field], bool), field
        assert body[field] > 0
    for field in ("max_sandbox_runtime_source_level", "default_sandbox_runtime_source_level"):
        assert isinstance(body[field], str) and body[field], field
    assert (
        body["effective_default_sandbox_runtime_seconds"]
        <= body["effective_max_sandbox_runtime_seconds"]
    )


def test_workspace_list_and_one_workspace(api: Api) -> None:
    org = api.client.get("/api/v1/org/acme", headers=api.headers).json()

    listed = api.client.get("/api/v1/org/acme/ws", headers=api.headers).json()
    one = api.client.get("/api/v1/org/acme/ws/main", headers=api.headers).json()

    workspaces = listed["workspaces"] if isinstance(listed, dict) else listed
    assert [w["key"] for w in workspaces] == ["main"]
    assert workspaces[0] == one
    assert set(one) >= {"id", "name", "key", "org_id", "created_at", "updated_at", "is_default"}
    assert one["key"] == "main"
    assert one["org_id"] == org["id"]
    assert one["is_default"] is True
    response = api.client.get("/api/v1/org/acme/ws/nope", headers=api.headers)
    assert_envelope(response, 404, "not_found")


def test_default_project_is_found_and_an_unknown_project_is_404(api: Api) -> None:
    response = api.client.get("/api/v1/org/acme/ws/main/projects/default", headers=api.headers)

    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) >= {"id", "key", "name", "created_at", "updated_at"}
    assert body["key"] == "default"
    created = api.create(project_id=body["id"])
    assert created.status_code == 201 and created.json()["project_id"] == body["id"]
    missing = api.client.get("/api/v1/org/acme/ws/main/projects/nope", headers=api.headers)
    assert_envelope(missing, 404, "not_found")


def test_user_secrets_are_listed_masked_only(api: Api) -> None:
    raw_value = "sk-live-5f1e2d3c4b5a69788796a5b4"

    async def setup(store: Any) -> str:
        other = await store.create_user("else@acme.test", "else", "Else")
        await store.create_secret(other.id, "THEIRS", "openai", "sk-theirs-value-000")
        secret = await store.create_secret(api.user_id, "OPENAI_API_KEY", "openai", raw_value)
        return str(secret.id)

    secret_id = run_identity(api.settings, setup)

    response = api.client.get("/api/v1/user/secrets", headers=api.headers)

    assert response.status_code == 200, response.text
    body = response.json()
    assert body["total"] == 1
    (secret,) = body["secrets"]
    assert set(secret) >= {"id", "name", "provider", "masked_value", "created_at", "updated_at"}
    assert secret["id"] == secret_id
    assert secret["name"] == "OPENAI_API_KEY"
    assert secret["provider"] == "openai"
    assert secret["masked_value"] != raw_value
    assert raw_value not in response.text
    assert raw_value[:12] not in response.text
    assert "sk-theirs-value" not in response.text


def test_another_orgs_slug_is_404_like_a_missing_one(api: Api) -> None:
    run_identity(
        api.settings,
        lambda store: bootstrap(store, org_key="beta", workspace_key="ops", email="b@beta.test"),
    )

    for path in ("/api/v1/org/beta", "/api/v1/org/beta/ws", "/api/v1/org/beta/ws/ops"):
        assert_envelope(api.client.get(path, headers=api.headers), 404, "not_found")
    existing = api.client.get("/api/v1/org/beta", headers=api.headers).json()
    missing = api.client.get("/api/v1/org/gamma", headers=api.headers).json()
    assert existing["detail"].replace("beta", "X") == missing["detail"].replace("gamma", "X")


# ---- operations ----


def test_health_and_ready(api: Api) -> None:
    health = api.client.get("/health")
    ready = api.client.get("/ready")

    assert health.status_code == 200 and health.json()["status"] == "ok"
    assert ready.status_code == 200, ready.text
    assert ready.json()["status"] == "ok"
    assert isinstance(ready.json()["schema_revision"], str) and ready.json()["schema_revision"]


def test_openapi_lists_every_route_and_the_error_envelope(api: Api) -> None:
    response = api.client.get("/schema/openapi.json")

    assert response.status_code == 200
    spec = response.json()
    scoped = "/api/v1/org/{org}/ws/{ws}"
    expected = {
        ("post", f"{scoped}/evaluation"),
        ("get", f"{scoped}/evaluations"),
        ("get", f"{scoped}/evaluation/{{evaluation_id}}"),
        ("post", f"{scoped}/evaluation/{{evaluation_id}}/cancel"),
        ("post", f"{scoped}/evaluation/{{evaluation_id}}/retry-failed"),
        ("get", f"{scoped}/evaluation/{{evaluation_id}}/analytics"),
        ("get", f"{scoped}/evaluation/{{evaluation_id}}/items"),
        ("get", f"{scoped}/evaluation/{{evaluation_id}}/items/{{item_id}}"),
        ("get", f"{scoped}/evaluation/{{evaluation_id}}/events"),
        ("get", "/api/v1/user"),
        ("get", "/api/v1/user/secrets"),
        ("get", "/api/v1/org/{org}"),
        ("get", "/api/v1/org/{org}/ws"),
        ("get", scoped),
        ("get", f"{scoped}/projects/{{key}}"),
        ("get", "/health"),
        ("get", "/ready"),
    }
    listed = {(method, path) for path, ops in spec["paths"].items() for method in ops}
    assert expected <= listed, expected - listed
    envelope = spec["components"]["schemas"]["ErrorEnvelope"]
    assert {"code", "detail", "type", "errors", "request_id"} <= set(envelope["properties"])
    assert {"code", "detail", "type"} <= set(envelope["required"])
    create_errors = spec["paths"][f"{scoped}/evaluation"]["post"]["responses"]
    assert "422" in create_errors
    assert "ErrorEnvelope" in str(create_errors["422"])


def test_schema_serves_an_html_docs_page(api: Api) -> None:
    response = api.client.get("/schema")

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert "<html" in response.text.lower()
    assert "Assay evaluation API" in response.text
