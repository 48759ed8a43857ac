"""Any request body gets an answer in the envelope, never a 500: a JSON body nested deeper
than ASSAY_MAX_JSON_DEPTH is a 400 before anything decodes it (a decoder would exhaust its
stack a few thousand levels down), and one larger than ASSAY_MAX_BODY_BYTES is a 413."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from typing import Any

import pytest
from litestar.testing import TestClient

from app.body_limits import check_json_depth, json_depth, nests_deeper_than
from app.errors import ApiError
from app.main import create_app
from infrastructure.settings import Settings
from tests.app.conftest import Api, make_settings
from tests.app.http_helpers import assert_envelope

JSON = {"content-type": "application/json"}


def deep_array(levels: int) -> bytes:
    return b"[" * levels + b"]" * levels


def deep_object(levels: int) -> bytes:
    return b'{"a":' * levels + b"1" + b"}" * levels


def create_body_with(nested: bytes) -> bytes:
    """A create request whose task_config carries `nested` (a valid request otherwise)."""
    return b'{"name": "deep", "agent_type": "oracle", "task_names": ["find-the-flag"], ' + (
        b'"task_config": {"x": ' + nested + b"}}"
    )


def json_posts(api: Api) -> list[tuple[str, str]]:
    """Every kind of JSON body route: create, a task set, a task's visibility."""
    return [
        ("POST", f"{api.base}/evaluation"),
        ("POST", f"/api/v1/org/{api.org}/task-sets"),
        ("PATCH", f"/api/v1/org/{api.org}/tasks/find-the-flag/visibility"),
    ]


@pytest.mark.parametrize("levels", [65, 3000, 100_000])
@pytest.mark.parametrize("shape", [deep_array, deep_object])
def test_deeply_nested_bodies_are_400_on_every_json_route(
    api: Api, levels: int, shape: Any
) -> None:
    for method, path in json_posts(api):
        response = api.client.request(
            method, path, content=shape(levels), headers={**api.headers, **JSON}
        )
        body = assert_envelope(response, 400, "bad_request")
        assert "deeper than 64" in body["detail"], (path, body)


def test_depth_is_counted_inside_a_valid_create_request(api: Api) -> None:
    # The request object is level 1, task_config 2, so 62 more levels reach the limit of 64.
    headers = {**api.headers, **JSON}
    path = f"{api.base}/evaluation"
    at_limit = api.client.post(path, content=create_body_with(deep_array(62)), headers=headers)
    past_limit = api.client.post(path, content=create_body_with(deep_array(63)), headers=headers)
    assert at_limit.status_code == 201, at_limit.text
    assert "deeper than 64" in assert_envelope(past_limit, 400, "bad_request")["detail"]


def test_brackets_inside_strings_are_not_nesting(api: Api) -> None:
    text = b'"' + b"[{" * 5000 + b'\\"]' + b'"'
    response = api.client.post(
        f"{api.base}/evaluation", content=create_body_with(text), headers={**api.headers, **JSON}
    )
    assert response.status_code == 201, response.text


def test_truncated_deep_body_is_400_not_500(api: Api) -> None:
    response = api.client.post(
        f"{api.base}/evaluation", content=b"[" * 5000, headers={**api.headers, **JSON}
    )
    assert_envelope(response, 400, "bad_request")


def test_a_deep_registry_manifest_is_400(api: Api) -> None:
    auth = base64.b64encode(f"__token__:{api.key}".encode()).decode()
    response = api.client.put(
        "/v2/acme/hello/manifests/1.0.0",
        content=deep_array(5000),
        headers={
            "Authorization": f"Basic {auth}",
            "Content-Type": "application/vnd.oci.image.manifest.v1+json",
        },
    )
    assert response.status_code == 400, response.text
    assert response.json()["errors"][0]["code"] == "MANIFEST_INVALID"


@pytest.fixture
def small_limits(database_url: str) -> Iterator[tuple[TestClient[Any], Settings]]:
    settings = make_settings(database_url, max_body_bytes=2048, max_json_depth=8)
    with TestClient(create_app(settings)) as client:
        yield client, settings


def test_both_limits_come_from_settings(small_limits: tuple[TestClient[Any], Settings]) -> None:
    client, _settings = small_limits
    path = "/api/v1/org/acme/ws/main/evaluation"

    too_deep = client.post(path, content=deep_object(9), headers=JSON)
    too_big = client.post(path, content=b'{"name": "' + b"x" * 4096 + b'"}', headers=JSON)

    assert "deeper than 8" in assert_envelope(too_deep, 400, "bad_request")["detail"]
    assert_envelope(too_big, 413, "payload_too_large")


def test_depth_counts_arrays_and_objects_but_not_brackets_in_strings() -> None:
    assert not nests_deeper_than(b'"' + b"[" * 100 + b'"', 0)
    assert not nests_deeper_than(b"[[], {}]", 2)
    assert nests_deeper_than(b"[[], {}]", 1)
    assert not nests_deeper_than(b'{"a": [1, {"b": "]]]"}]}', 3)
    assert nests_deeper_than(b'{"a": [1, {"b": "]]]"}]}', 2)
    assert not nests_deeper_than(b'["\\"[", "\\\\", [[]]]', 3)
    assert nests_deeper_than(b'["\\"[", "\\\\", [[]]]', 2)
    assert not nests_deeper_than(b"[]" * 100_000, 1)
    assert nests_deeper_than(b"[" * 70, 64)  # unclosed
    assert nests_deeper_than(b"[[]" * 70 + b"]" * 70, 64)  # no run of 65 opening brackets
    assert nests_deeper_than((b"[" * 65 + b"]" * 65) * 10, 64)
    assert not nests_deeper_than((b"[" * 64 + b"]" * 64) * 1000, 64)
    assert [json_depth(b) for b in (b"1", b"[]", b"[[]]", b"[[], [[{}]]]", b'{"a": "["}')] == [
        0,
        1,
        2,
        4,
        1,
    ]
    check_json_depth(deep_array(64), 64)
    with pytest.raises(ApiError):
        check_json_depth(deep_array(65), 64)


def test_a_depth_limit_out_of_range_is_refused_at_start_up() -> None:
    for raw in ("0", "100000"):
        with pytest.raises(ValueError, match="ASSAY_MAX_JSON_DEPTH"):
            Settings.from_env({"ASSAY_MAX_JSON_DEPTH": raw})
    assert Settings.from_env({"ASSAY_MAX_JSON_DEPTH": "16"}).max_json_depth == 16
