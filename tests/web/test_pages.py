"""What the dashboard's read pages show, from the same read models as the API (both backends),
and the API docs working with no network."""

from __future__ import annotations

import re

from tests.web.conftest import Site


def test_the_list_shows_status_progress_agent_creator_and_filters(site: Site) -> None:
    site.sign_in()
    project = site.client.get(
        f"/api/v1/org/{site.org}/ws/{site.workspace}/projects/default",
        headers={"X-API-Key": site.key},
    ).json()
    site.api_create(name="first-eval", project_id=project["id"])
    second = site.api_create(name="second-eval")
    site.client.post(
        f"/api/v1/org/{site.org}/ws/{site.workspace}/evaluation/{second['id']}/cancel",
        headers={"X-API-Key": site.key},
    )
    html = site.client.get(site.base + "/").text
    assert html.index("second-eval") < html.index("first-eval")  # newest first
    assert "owner@acme.test" in html and "oracle" in html
    assert 'aria-label="2 queued of 2"' in html  # the progress bar says what it draws
    cancelled = site.client.get(site.base + "/?status=cancelled").text
    assert "second-eval" in cancelled and "first-eval" not in cancelled
    in_project = site.client.get(site.base + "/?project=default").text
    assert "first-eval" in in_project and "second-eval" not in in_project
    assert site.client.get(site.base + "/?project=nope").status_code == 404
    assert site.client.get(site.base + "/?status=weird").status_code == 400


def test_paging_keeps_the_filters(site: Site) -> None:
    site.sign_in()
    for n in range(26):
        site.api_create(name=f"e{n}", task_names=["find-the-flag"])
    html = site.client.get(site.base + "/?status=queued").text
    assert "Page 1 of 2" in html and "?page=2&status=queued" in html
    assert "e0<" in site.client.get(site.base + "/?page=2&status=queued").text


def test_the_evaluation_page_lists_items_tasks_and_its_live_fragment(site: Site) -> None:
    site.sign_in()
    evaluation = site.api_create(name="live-one")
    page = site.client.get(f"{site.base}/evaluations/{evaluation['id']}").text
    assert 'data-live="' in page and "find-the-flag" in page and "decode-payload" in page
    assert "No verdict yet" in page
    fragment = site.client.get(f"{site.base}/evaluations/{evaluation['id']}/live").text
    assert 'data-terminal="false"' in fragment and "<html" not in fragment


def test_history_shows_the_event_log_with_actors(site: Site) -> None:
    site.sign_in()
    evaluation = site.api_create()
    html = site.client.get(f"{site.base}/evaluations/{evaluation['id']}/history").text
    assert "evaluation.created" in html and "item.queued" in html
    assert "owner@acme.test" in html


def test_item_page_shows_its_timeline(site: Site) -> None:
    site.sign_in()
    evaluation = site.api_create()
    items = site.client.get(
        f"/api/v1/org/{site.org}/ws/{site.workspace}/evaluation/{evaluation['id']}/items",
        headers={"X-API-Key": site.key},
    ).json()["items"]
    html = site.client.get(f"{site.base}/evaluations/{evaluation['id']}/items/{items[0]['id']}")
    assert "item.queued" in html.text and "The agent never started" in html.text


def test_compare_puts_two_evaluations_side_by_side(site: Site) -> None:
    site.sign_in()
    a = site.api_create(name="left", task_names=["find-the-flag"])
    b = site.api_create(name="right", task_names=["find-the-flag", "decode-payload"])
    html = site.client.get(f"{site.base}/compare?a={a['id']}&b={b['id']}").text
    assert "A: left" in html and "B: right" in html
    assert re.search(r"decode-payload</td>\s*<td>—</td>", html)
    assert "only in one" in html


def test_the_tasks_page_lists_the_catalog_with_tags(site: Site) -> None:
    site.sign_in()
    html = site.client.get(site.base + "/tasks").text
    for name in ("find-the-flag", "path-traversal", "patch-vuln-function"):
        assert name in html
    assert 'class="tag"' in html


def test_api_docs_load_every_asset_from_this_server(site: Site) -> None:
    html = site.client.get("/schema").text
    assert "SwaggerUIBundle" in html
    assets = re.findall(r'(?:src|href)=["\']([^"\']+)["\']', html)
    assert len(assets) >= 4
    for url in assets:
        assert url.startswith("/"), f"{url} would be fetched from elsewhere"
        response = site.client.get(url)
        assert response.status_code == 200, url
        assert len(response.content) > 100, url
