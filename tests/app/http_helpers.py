"""Assertions and calls the HTTP suites share."""

from __future__ import annotations

from typing import Any

from tests.app.conftest import Api


def assert_envelope(response: Any, status: int, type_: str) -> dict[str, Any]:
    """The response is the spec's error envelope with this status and type."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body: dict[str, Any] = response.json()
    assert body["code"] == status
    assert body["type"] == type_
    assert isinstance(body["detail"], str) and body["detail"]
    assert isinstance(body["request_id"], str) and body["request_id"]
    assert set(body) <= {"code", "detail", "type", "errors", "request_id"}
    return body


def created(api: Api, **body: Any) -> dict[str, Any]:
    response = api.create(**body)
    assert response.status_code == 201, response.text
    result: dict[str, Any] = response.json()
    return result


def items_of(api: Api, evaluation_id: str) -> list[dict[str, Any]]:
    response = api.get(f"/evaluation/{evaluation_id}/items")
    assert response.status_code == 200, response.text
    found: list[dict[str, Any]] = response.json()["items"]
    return found
