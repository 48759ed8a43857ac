"""First-hour papercuts of the API: what a new user types first and what it answers."""

from __future__ import annotations

from tests.app.conftest import Api
from tests.app.http_helpers import assert_envelope
from tests.app.test_cancel_and_retry import user_api


def test_agent_type_alone_creates_an_evaluation_without_a_model(api: Api) -> None:
    for agent in ("oracle", "nop"):
        response = api.create(model=None, agent_type=agent)

        assert response.status_code == 201, response.text
        body = response.json()
        assert (body["agent_type"], body["model"], body["capability"]) == (agent, None, None)


def test_the_openai_agent_without_a_model_is_refused_naming_the_agents_that_need_none(
    api: Api,
) -> None:
    for body in ({"agent_type": "openai"}, {}):
        response = api.create(model=None, **body)

        found = assert_envelope(response, 422, "validation_error")
        [error] = [e for e in found["errors"] if e["loc"] == ["body", "model"]]
        assert "openai agent" in error["msg"]
        assert "nop" in error["msg"] and "oracle" in error["msg"]
    assert api.get("/evaluations").json()["total"] == 0


def test_a_short_id_prefix_is_too_short_naming_the_minimum_not_not_found(api: Api) -> None:
    created = api.create(model=None, capability="oracle").json()

    for path in (
        f"/evaluation/{created['id'][:4]}",
        f"/evaluation/{created['id'][:7]}/items",
    ):
        found = assert_envelope(api.get(path), 400, "id_prefix_too_short")
        assert "at least 8 characters" in found["detail"]
    assert api.get(f"/evaluation/{created['id'][:8]}").status_code == 200
    # Not hex at all: no id starts so, whatever its length.
    assert api.get("/evaluation/zz").status_code == 404


def test_a_short_item_prefix_is_too_short_too(api: Api) -> None:
    created = api.create(model=None, capability="oracle").json()
    item_id = api.get(f"/evaluation/{created['id']}/items").json()["items"][0]["id"]

    response = api.get(f"/evaluation/{created['id']}/items/{item_id[:5]}")

    found = assert_envelope(response, 400, "id_prefix_too_short")
    assert "at least 8" in found["detail"]


def test_a_viewers_refused_cancel_names_the_role_not_ownership(api: Api) -> None:
    created = api.create(model=None, capability="oracle").json()
    viewer = user_api(api, "vic@acme.test", "viewer")
    member = user_api(api, "meg@acme.test", "member")

    refused = assert_envelope(
        viewer.post(f"/evaluation/{created['id']}/cancel"), 403, "permission_denied"
    )
    assert "viewer" in refused["detail"]
    assert "created" not in refused["detail"]
    # A member's refusal is about ownership, which is what stops them.
    not_theirs = assert_envelope(
        member.post(f"/evaluation/{created['id']}/cancel"), 403, "permission_denied"
    )
    assert "you created" in not_theirs["detail"]
    assert api.get(f"/evaluation/{created['id']}").json()["status"] == "queued"
