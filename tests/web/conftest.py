"""The dashboard in process (Litestar's TestClient, both backends): a signed-in browser-like
client that keeps cookies and sends the CSRF token its forms carry."""

from __future__ import annotations

import re
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from litestar.testing import TestClient

from app.main import create_app
from infrastructure.identity.bootstrap import bootstrap
from infrastructure.settings import Settings
from tests.app.conftest import make_settings, run_identity

CSRF_FIELD = re.compile(r'name="_csrf_token" value="([^"]+)"')


def csrf_of(html: str) -> str:
    found = CSRF_FIELD.search(html)
    assert found, "the page has no CSRF field"
    return found.group(1)


@dataclass
class Site:
    client: TestClient[Any]
    settings: Settings
    org: str
    workspace: str
    key: str

    @property
    def base(self) -> str:
        return f"/w/{self.org}/{self.workspace}"

    def sign_in(self, key: str | None = None, next_url: str = "/") -> Any:
        page = self.client.get("/login")
        return self.client.post(
            "/login",
            data={"api_key": key or self.key, "next": next_url, "_csrf_token": csrf_of(page.text)},
            follow_redirects=False,
        )

    def submit(self, page_path: str, action: str, data: dict[str, Any] | None = None) -> Any:
        """POST a form the way a browser does: with the token of the page it sits on."""
        token = csrf_of(self.client.get(page_path).text)
        return self.client.post(
            action, data={**(data or {}), "_csrf_token": token}, follow_redirects=False
        )

    def api_create(self, key: str | None = None, **body: Any) -> dict[str, Any]:
        body.setdefault("name", "eval")
        body.setdefault("agent_type", "oracle")
        body.setdefault("task_names", ["find-the-flag", "decode-payload"])
        response = self.client.post(
            f"/api/v1/org/{self.org}/ws/{self.workspace}/evaluation",
            json=body,
            headers={"X-API-Key": key or self.key},
        )
        assert response.status_code == 201, response.text
        result: dict[str, Any] = response.json()
        return result


@pytest.fixture
def site(database_url: str) -> Iterator[Site]:
    settings = make_settings(database_url)
    result = run_identity(
        settings,
        lambda store: bootstrap(
            store, org_key="acme", workspace_key="main", email="owner@acme.test"
        ),
    )
    with TestClient(create_app(settings)) as client:
        yield Site(
            client=client, settings=settings, org="acme", workspace="main", key=result.raw_key
        )


def add_member_key(site: Site, email: str, role: str) -> str:
    """A user of `role` in the site's org, and a key of theirs."""

    async def action(store: Any) -> str:
        org = await store.get_org_by_key(site.org)
        user = await store.create_user(email, email.split("@")[0], email)
        await store.add_membership(org.id, user.id, role)
        _info, raw = await store.create_api_key(user.id, "web", None)
        return str(raw)

    result: str = run_identity(site.settings, action)
    return result


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: Any) -> Generator[None, Any, None]:
    """Keeps each phase's report on the test, so fixtures can tell a failure at teardown (the
    browser suite then saves a screenshot of every open page)."""
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"report_{report.when}", report)
