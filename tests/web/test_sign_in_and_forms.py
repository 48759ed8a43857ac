"""The dashboard's sign-in, CSRF and role checks, through HTTP as a browser sends it (both
backends). The browser suite (test_browser.py) drives the same pages in Chromium."""

from __future__ import annotations

import html as html_lib
import re
from typing import Any
from urllib.parse import quote

from tests.web.conftest import Site, add_member_key, csrf_of


def _status(site: Site, evaluation_id: str) -> str:
    response = site.client.get(
        f"/api/v1/org/{site.org}/ws/{site.workspace}/evaluation/{evaluation_id}",
        headers={"X-API-Key": site.key},
    )
    status: str = response.json()["status"]
    return status


def test_a_page_without_a_session_sends_to_sign_in_and_back(site: Site) -> None:
    evaluation = site.api_create()
    page = f"{site.base}/evaluations/{evaluation['id']}"
    response = site.client.get(page, follow_redirects=False)
    assert response.status_code == 303
    assert response.headers["location"] == "/login?next=" + quote(page, safe="")
    signed = site.sign_in(next_url=page)
    assert signed.status_code == 303 and signed.headers["location"] == page
    assert evaluation["name"] in site.client.get(page).text


def test_the_session_cookie_is_encrypted_httponly_and_lax(site: Site) -> None:
    response = site.sign_in()
    cookie = next(c for c in response.headers.get_list("set-cookie") if "assay_session" in c)
    assert "HttpOnly" in cookie and "SameSite=lax" in cookie
    assert site.key not in cookie  # the key is inside, encrypted
    assert site.key[-12:] not in cookie


def test_an_unknown_key_is_refused_with_the_reason(site: Site) -> None:
    response = site.sign_in(key="assay_not-a-key")
    assert response.status_code == 401
    assert "unknown or revoked" in response.text
    assert site.client.get(site.base + "/", follow_redirects=False).status_code == 303


def test_sign_in_never_redirects_to_another_site(site: Site) -> None:
    response = site.sign_in(next_url="//evil.example/")
    assert response.headers["location"] == "/"


def test_posts_without_the_csrf_token_are_refused(site: Site) -> None:
    site.sign_in()
    evaluation = site.api_create()
    cancel = f"{site.base}/evaluations/{evaluation['id']}/cancel"
    response = site.client.post(cancel, data={}, follow_redirects=False)
    assert response.status_code == 403
    forged = site.client.post(cancel, data={"_csrf_token": "0" * 128}, follow_redirects=False)
    assert forged.status_code == 403
    assert _status(site, evaluation["id"]) == "queued"
    # Sign-in itself is guarded too (no login CSRF).
    site.client.cookies.clear()
    assert site.client.post("/login", data={"api_key": site.key}).status_code == 403


def test_the_api_keeps_working_without_csrf_even_beside_a_session(site: Site) -> None:
    site.sign_in()
    evaluation = site.api_create()
    response = site.client.post(
        f"/api/v1/org/{site.org}/ws/{site.workspace}/evaluation/{evaluation['id']}/cancel",
        headers={"Authorization": f"Bearer {site.key}"},
    )
    assert response.status_code == 200, response.text
    # ...and a session cookie alone is no API credential.
    alone = site.client.get(f"/api/v1/org/{site.org}/ws/{site.workspace}/evaluations")
    assert alone.status_code == 401


def test_an_owner_cancels_from_the_page(site: Site) -> None:
    site.sign_in()
    evaluation = site.api_create()
    page = f"{site.base}/evaluations/{evaluation['id']}"
    assert "Cancel evaluation" in site.client.get(page).text
    response = site.submit(page, page + "/cancel")
    assert response.status_code == 303 and response.headers["location"] == page
    assert _status(site, evaluation["id"]) == "cancelled"
    assert "Cancel evaluation" not in site.client.get(page).text


def test_a_viewer_sees_no_cancel_button_and_a_forged_cancel_is_refused(site: Site) -> None:
    viewer = add_member_key(site, "viewer@acme.test", "viewer")
    evaluation = site.api_create()
    site.sign_in(key=viewer)
    page = f"{site.base}/evaluations/{evaluation['id']}"
    html = site.client.get(page).text
    assert evaluation["name"] in html and "Cancel evaluation" not in html
    assert "New evaluation" not in site.client.get(site.base + "/").text
    response = site.submit(page, page + "/cancel")  # a valid token: the role is what refuses
    assert response.status_code == 403
    assert "only reads evaluations" in response.text
    assert _status(site, evaluation["id"]) == "queued"
    refused = site.submit(site.base + "/tasks", site.base + "/new", _form("by viewer"))
    assert refused.status_code == 403


def _form(name: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "agent": "oracle", "task_names": ["find-the-flag"], **extra}


def test_the_start_form_creates_through_the_service(site: Site) -> None:
    site.sign_in()
    response = site.submit(site.base + "/new", site.base + "/new", _form("from the form"))
    assert response.status_code == 303
    evaluation_id = response.headers["location"].rsplit("/", 1)[1]
    listed = site.client.get(
        f"/api/v1/org/{site.org}/ws/{site.workspace}/evaluation/{evaluation_id}",
        headers={"X-API-Key": site.key},
    ).json()
    assert listed["name"] == "from the form" and listed["agent_type"] == "oracle"
    assert listed["dataset_size"] == 1


def _errors_of(html: str, field: str) -> str:
    found = re.search(rf'<ul class="field-errors" id="{field}-errors"[^>]*>(.*?)</ul>', html, re.S)
    assert found, f"no errors shown for {field}"
    return html_lib.unescape(found.group(1))


def test_the_start_form_shows_the_services_errors_next_to_their_fields(site: Site) -> None:
    site.sign_in()
    no_task = site.submit(site.base + "/new", site.base + "/new", {"name": "x", "agent": "oracle"})
    assert no_task.status_code == 422
    assert "at least one task" in _errors_of(no_task.text, "task_names")
    model = site.submit(
        site.base + "/new", site.base + "/new", _form("x", agent="openai", concurrency="lots")
    )
    assert "whole number" in _errors_of(model.text, "concurrency")
    needs_model = site.submit(site.base + "/new", site.base + "/new", _form("x", agent="openai"))
    assert "model is required" in _errors_of(needs_model.text, "model")
    assert 'value="x"' in needs_model.text  # what was typed stays


def test_dn_view_on_web_links_open_the_evaluation(site: Site) -> None:
    evaluation = site.api_create()
    link = (
        f"/{site.org}/evaluation?workspace={site.workspace}&project=default&eval={evaluation['id']}"
    )
    first = site.client.get(link, follow_redirects=False)
    assert first.headers["location"].startswith("/login?next=")
    signed = site.sign_in(next_url=link)
    assert signed.headers["location"] == link
    opened = site.client.get(link, follow_redirects=False)
    assert opened.headers["location"] == f"{site.base}/evaluations/{evaluation['id']}"


def test_another_orgs_evaluation_page_is_not_found(site: Site) -> None:
    site.sign_in()
    response = site.client.get(f"/w/{site.org}/{site.workspace}/evaluations/{'0' * 8}")
    assert response.status_code == 404
    assert site.client.get("/w/other-org/main/").status_code == 404


def test_sign_out_ends_the_session(site: Site) -> None:
    site.sign_in()
    page = site.client.get(site.base + "/")
    response = site.client.post(
        "/logout", data={"_csrf_token": csrf_of(page.text)}, follow_redirects=False
    )
    assert response.status_code == 303
    assert site.client.get(site.base + "/", follow_redirects=False).status_code == 303


def test_the_start_form_takes_a_project_by_key_and_names_an_unknown_one(site: Site) -> None:
    site.sign_in()
    unknown = site.submit(site.base + "/new", site.base + "/new", _form("x", project_id="nope"))
    assert unknown.status_code == 422
    assert "project 'nope' not found" in _errors_of(unknown.text, "project_id")
    made = site.submit(site.base + "/new", site.base + "/new", _form("x", project_id="default"))
    assert made.status_code == 303
    listed = site.client.get(site.base + "/?project=default").text
    assert made.headers["location"].rsplit("/", 1)[1][:8] in listed


def test_what_users_typed_is_shown_as_text_never_run(site: Site) -> None:
    site.sign_in()
    evaluation = site.api_create(name="<script>alert(1)</script>")
    for path in ("/", f"/evaluations/{evaluation['id']}"):
        html = site.client.get(site.base + path).text
        assert "<script>alert(1)" not in html
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
