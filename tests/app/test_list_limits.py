"""Every list route pages with one bound, MAX_LIST_LIMIT (app/api/context.py)."""

from __future__ import annotations

from app.api.context import MAX_LIST_LIMIT
from tests.app.conftest import Api
from tests.app.http_helpers import assert_envelope


def test_every_list_route_accepts_the_bound_and_refuses_one_more(api: Api) -> None:
    routes = [
        f"/api/v1/org/{api.org}/tasks",
        f"/api/v1/org/{api.org}/task-sets",
        f"/api/v1/org/{api.org}/capabilities",
        f"/api/v1/org/{api.org}/sandboxes",
        f"{api.base}/runtimes",
    ]
    for route in routes:
        ok = api.client.get(route, params={"limit": MAX_LIST_LIMIT}, headers=api.headers)
        assert ok.status_code == 200, (route, ok.text)
        refused = api.client.get(route, params={"limit": MAX_LIST_LIMIT + 1}, headers=api.headers)
        body = assert_envelope(refused, 400, "bad_request")
        assert [e["loc"] for e in body["errors"]] == [["query", "limit"]], route
