"""The auditor role and the org feed, through HTTP and the admin CLI, on both backends.

An auditor reads everything of its org (every workspace) and the org-wide feed, and changes
nothing; owners and admins read the feed too; members and workspace-scoped keys do not.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from app.cli import main
from tests.app.conftest import Api


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("ASSAY_SECRET_KEY_FILE", str(tmp_path / "keys" / "secret-key"))
    monkeypatch.delenv("ASSAY_DATABASE_URL", raising=False)


def admin(api: Api, *args: str) -> str:
    result = CliRunner().invoke(main, ["admin", *args, "--database-url", api.settings.database_url])
    assert result.exit_code == 0, result.output
    return result.stdout


def user_with_role(api: Api, email: str, role: str, *, org: str = "acme") -> str:
    """A new user with `role` in `org` (through `assay admin add-member`); returns a key."""
    admin(
        api, "add-user", "--email", email, "--username", email.split("@")[0], "--full-name", email
    )
    assert f"{email} is {role} of {org}" in admin(
        api, "add-member", "--org", org, "--email", email, "--role", role
    )
    return admin(api, "create-key", "--email", email).strip().splitlines()[-1]


def create_in(api: Api, ws: str, name: str) -> dict[str, Any]:
    response = api.client.post(
        f"/api/v1/org/{api.org}/ws/{ws}/evaluation",
        json={"name": name, "model": "m", "task_names": ["find-the-flag"]},
        headers=api.headers,
    )
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


def feed(api: Api, key: str, org: str = "acme", **params: Any) -> Any:
    return api.client.get(f"/api/v1/org/{org}/events", params=params, headers={"X-API-Key": key})


def test_auditor_reads_every_workspace_and_changes_nothing(api: Api) -> None:
    admin(api, "add-workspace", "--org", "acme", "--key", "second", "--name", "Second")
    first = create_in(api, "main", "in-main")
    second = create_in(api, "second", "in-second")
    auditor = {"X-API-Key": user_with_role(api, "audit@acme.test", "auditor")}

    for ws, evaluation in (("main", first), ("second", second)):
        base = f"/api/v1/org/acme/ws/{ws}/evaluation/{evaluation['id']}"
        assert api.client.get(base, headers=auditor).json()["name"] == evaluation["name"]
        assert api.client.get(f"{base}/items", headers=auditor).json()["total"] == 1
        assert api.client.get(f"{base}/analytics", headers=auditor).status_code == 200
        assert api.client.get(f"{base}/events", headers=auditor).status_code == 200
        listed = api.client.get(f"/api/v1/org/acme/ws/{ws}/evaluations", headers=auditor)
        assert [e["id"] for e in listed.json()["items"]] == [evaluation["id"]]

        refused = [
            api.client.post(
                f"/api/v1/org/acme/ws/{ws}/evaluation",
                json={"name": "x", "model": "m", "task_names": ["find-the-flag"]},
                headers=auditor,
            ),
            api.client.post(f"{base}/cancel", headers=auditor),
            api.client.post(f"{base}/retry-failed", headers=auditor),
        ]
        for response in refused:
            assert response.status_code == 403, response.text
            assert response.json()["code"] == 403
    refused_set = api.client.post(
        "/api/v1/org/acme/task-sets/",
        json={"name": "mine", "tasks": [{"name": "find-the-flag"}]},
        headers=auditor,
    )
    assert refused_set.status_code == 403, refused_set.text
    # Still queued: nothing the auditor tried changed anything.
    assert api.get(f"/evaluation/{first['id']}").json()["status"] == "queued"


def test_feed_pages_through_the_orgs_events_only(api: Api) -> None:
    admin(api, "add-workspace", "--org", "acme", "--key", "second", "--name", "Second")
    first = create_in(api, "main", "a")
    second = create_in(api, "second", "b")
    api.post(f"/evaluation/{first['id']}/cancel")
    # Another tenant's evaluation: never in acme's feed.
    admin(api, "bootstrap", "--org", "other", "--workspace", "w", "--email", "o@other.test")
    other_key = admin(api, "create-key", "--email", "o@other.test").strip().splitlines()[-1]
    other = api.client.post(
        "/api/v1/org/other/ws/w/evaluation",
        json={"name": "theirs", "model": "m", "task_names": ["find-the-flag"]},
        headers={"X-API-Key": other_key},
    )
    assert other.status_code == 201
    auditor = user_with_role(api, "audit@acme.test", "auditor")

    whole = feed(api, auditor)
    assert whole.status_code == 200, whole.text
    events = whole.json()["events"]
    assert whole.json()["next_after"] is None
    positions = [e["position"] for e in events]
    assert positions == sorted(positions)
    mentioned = {e["data"].get("evaluation_id") for e in events}
    assert mentioned == {first["id"], second["id"]}
    assert {e["type"] for e in events} >= {"evaluation.created", "item.queued", "item.cancelled"}
    assert all(
        set(e) >= {"position", "event_id", "stream_type", "data", "recorded_at"} for e in events
    )

    # Paging: full pages say where to continue; the pages join up to the whole feed.
    paged: list[int] = []
    after = 0
    while True:
        page = feed(api, auditor, after=after, limit=2).json()
        paged += [e["position"] for e in page["events"]]
        if page["next_after"] is None:
            break
        after = page["next_after"]
    assert paged == positions

    # Owners and admins read it too; the other org's owner sees only theirs.
    assert [e["position"] for e in feed(api, api.key).json()["events"]] == positions
    admin_key = user_with_role(api, "admin@acme.test", "admin")
    assert feed(api, admin_key).status_code == 200
    theirs = feed(api, other_key, org="other").json()["events"]
    assert {e["data"].get("evaluation_id") for e in theirs} == {other.json()["id"]}


def test_feed_is_refused_to_members_viewers_scoped_keys_and_strangers(api: Api) -> None:
    create_in(api, "main", "a")
    for role in ("member", "viewer"):
        key = user_with_role(api, f"{role}@acme.test", role)
        response = feed(api, key)
        assert response.status_code == 403, response.text
        assert "owners, admins and auditors" in response.json()["detail"]
        stream = api.client.get("/api/v1/org/acme/events/stream", headers={"X-API-Key": key})
        assert stream.status_code == 403
    scoped = admin(api, "create-key", "--email", "owner@acme.test", "--workspace", "acme/main")
    assert feed(api, scoped.strip().splitlines()[-1]).status_code == 403
    # An auditor of acme is nobody in another org: 404, as for any org not one's own.
    admin(api, "bootstrap", "--org", "other", "--workspace", "w", "--email", "o@other.test")
    auditor = user_with_role(api, "audit@acme.test", "auditor")
    assert feed(api, auditor, org="other").status_code == 404
    assert feed(api, auditor, limit=0).status_code == 400
