"""The dashboard in a real browser: Chromium against `assay serve` with a worker, as a user
would use it. On failure every open page is saved as a screenshot (see browser.artifacts_dir).

ASSAY_SCREENSHOTS_DIR, when set, also receives the pages the README shows."""

from __future__ import annotations

import os
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.app.dn_client import LiveServer, assay_command
from tests.app.execution_fixtures import write_bundle
from tests.web.browser import artifacts_dir, chromium_or_skip, launch

TIMEOUT_MS = 90_000


def _cli(server: LiveServer, *args: str) -> str:
    done = subprocess.run(
        [*assay_command(), "admin", *args, "--database-url", server.database_url],
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return done.stdout.strip()


@pytest.fixture(scope="module")
def chromium() -> str:
    return chromium_or_skip()


@pytest.fixture(scope="module")
def server(chromium: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    workdir = tmp_path_factory.mktemp("web-server")
    bundles = workdir / "tasks"
    bundles.mkdir()
    # An answer the grader refuses (a failed item with a transcript), and one that keeps its
    # item running long enough to be cancelled.
    write_bundle(bundles, "wrong-answer", solution="echo 'looking around'; echo FLAG{nope}")
    write_bundle(bundles, "slow-task", solution="sleep 120; echo FLAG{ok}")
    live = LiveServer(
        workdir,
        env={"ASSAY_WORKERS": "3", "ASSAY_TASK_PATHS": str(bundles), "ASSAY_LOG_LEVEL": "INFO"},
    )
    live.prepare()
    live.start()
    try:
        yield live
    finally:
        live.stop()


@pytest.fixture(scope="module")
def viewer_key(server: LiveServer) -> str:
    _cli(
        server,
        "add-user",
        "--email",
        "viewer@example.com",
        "--username",
        "viewer",
        "--full-name",
        "Vera Viewer",
    )
    _cli(
        server,
        "add-member",
        "--org",
        server.org,
        "--email",
        "viewer@example.com",
        "--role",
        "viewer",
    )
    return _cli(server, "create-key", "--email", "viewer@example.com").splitlines()[-1]


@pytest.fixture(scope="module")
def browser(chromium: str) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        instance = launch(playwright, chromium)
        try:
            yield instance
        finally:
            instance.close()


@pytest.fixture
def context(browser: Any, request: pytest.FixtureRequest) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(15_000)
    try:
        yield context
    finally:
        report = getattr(request.node, "report_call", None)
        if report is not None and report.failed:
            name = re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.name)
            for index, page in enumerate(context.pages):
                path = artifacts_dir() / f"{name}-{index}.png"
                page.screenshot(path=str(path), full_page=True)
                print(f"screenshot of {page.url}: {path}")
        context.close()


def _sign_in(context: Any, server: LiveServer, key: str, start: str = "/") -> Any:
    page = context.new_page()
    page.goto(server.url + start)
    assert "/login" in page.url
    page.get_by_label("API key").fill(key)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_load_state()
    return page


def _wait_status(server: LiveServer, evaluation_id: str, wanted: set[str]) -> dict[str, Any]:
    deadline = time.monotonic() + TIMEOUT_MS / 1000
    while time.monotonic() < deadline:
        status, body = server.api("GET", f"/evaluation/{evaluation_id}")
        assert status == 200, body
        if body["status"] in wanted:
            return dict(body)
        time.sleep(0.3)
    raise AssertionError(f"evaluation {evaluation_id} never reached {wanted}:\n{server.log_tail()}")


def _api_create(server: LiveServer, **body: Any) -> dict[str, Any]:
    status, created = server.api(
        "POST", "/evaluation", {"name": "api", "agent_type": "oracle", **body}
    )
    assert status == 201, created
    return dict(created)


def _screenshot_for_docs(page: Any, name: str) -> None:
    folder = os.environ.get("ASSAY_SCREENSHOTS_DIR")
    if folder:
        page.screenshot(path=str(Path(folder) / name), full_page=True)


def test_start_an_oracle_evaluation_from_the_form_and_watch_it_complete(
    context: Any, server: LiveServer
) -> None:
    assert server.tenant is not None
    page = _sign_in(context, server, server.tenant.api_key)
    page.get_by_role("link", name="New evaluation").first.click()
    page.get_by_label("Name", exact=True).fill("browser-oracle")
    page.get_by_role("checkbox", name=re.compile("find-the-flag")).check()
    page.get_by_role("checkbox", name=re.compile("decode-payload")).check()
    page.get_by_label("Agent", exact=True).select_option("oracle")
    page.get_by_role("button", name="Start evaluation").click()
    page.wait_for_url(re.compile(r"/evaluations/[0-9a-f-]{36}$"))
    # A marker that a reload would wipe: the page must fill in by itself.
    page.evaluate("window.__assayNoReload = true")
    page.locator('[data-terminal="true"]').wait_for(timeout=TIMEOUT_MS)
    assert page.evaluate("window.__assayNoReload") is True
    live = page.locator("#live")
    assert "completed" in live.locator(".status-line").inner_text()
    assert "100%" in live.locator("#rate-h + p").inner_text()
    assert live.locator("svg[aria-label^='pass rate 100%']").count() == 1
    assert live.locator("svg[aria-label^='histogram of 2 item durations']").count() == 1
    assert live.locator("tr[data-state='passed']").count() == 2
    _screenshot_for_docs(page, "evaluation.png")

    page.get_by_role("link", name="find-the-flag").first.click()
    assert page.locator("#verdict").inner_text() == "Passed"
    assert page.locator(".timeline li").count() >= 5
    assert page.locator(".transcript .msg").count() >= 1
    _screenshot_for_docs(page, "item.png")

    page.get_by_role("link", name="Evaluations", exact=True).click()
    row = page.locator("tbody#rows tr", has_text="browser-oracle")
    assert "completed" in row.inner_text() and "100%" in row.inner_text()


def test_a_failed_items_page_shows_the_verdict_and_what_the_agent_did(
    context: Any, server: LiveServer
) -> None:
    assert server.tenant is not None
    created = _api_create(server, name="will-fail", task_names=["wrong-answer", "find-the-flag"])
    _wait_status(server, created["id"], {"partial", "completed", "failed"})
    page = _sign_in(
        context,
        server,
        server.tenant.api_key,
        f"/{server.org}/evaluation?workspace={server.workspace}&eval={created['id']}",
    )
    assert page.url.endswith(f"/evaluations/{created['id']}")  # dn's link, after sign-in
    page.get_by_role("link", name="wrong-answer").click()
    assert page.locator("#verdict").inner_text() == "Failed"
    transcript = page.locator(".transcript").inner_text()
    assert "looking around" in transcript or "solution" in transcript
    page.go_back()
    page.get_by_role("link", name="find-the-flag").click()
    assert page.locator("#verdict").inner_text() == "Passed"
    # The failed item can be run again from the evaluation's page.
    page.go_back()
    page.get_by_role("button", name="Retry failed items").click()
    page.wait_for_load_state()
    _status, history = server.api("GET", f"/evaluation/{created['id']}/events")
    assert "evaluation.reopened" in [event["type"] for event in history["events"]]
    _wait_status(server, created["id"], {"partial", "completed", "failed"})


def test_cancel_a_running_evaluation_from_its_page(context: Any, server: LiveServer) -> None:
    assert server.tenant is not None
    created = _api_create(server, name="to-cancel", task_names=["slow-task"])
    _wait_status(server, created["id"], {"running"})
    page = _sign_in(context, server, server.tenant.api_key)
    page.goto(f"{server.url}/w/{server.org}/{server.workspace}/evaluations/{created['id']}")
    page.on("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name="Cancel evaluation").click()
    page.wait_for_load_state()
    assert "cancelled" in page.locator(".status-line").inner_text()
    assert page.get_by_role("button", name="Cancel evaluation").count() == 0
    assert _wait_status(server, created["id"], {"cancelled"})["status"] == "cancelled"


def test_a_viewer_has_no_cancel_button_and_a_forged_cancel_is_refused(
    context: Any, server: LiveServer, viewer_key: str
) -> None:
    created = _api_create(server, name="viewer-sees", task_names=["slow-task"])
    page = _sign_in(context, server, viewer_key)
    url = f"{server.url}/w/{server.org}/{server.workspace}/evaluations/{created['id']}"
    page.goto(url)
    assert page.get_by_role("heading", name=re.compile("viewer-sees")).count() == 1
    assert page.get_by_role("button", name="Cancel evaluation").count() == 0
    assert page.get_by_role("link", name="New evaluation").count() == 0
    # The form the owner would get, posted with the viewer's own valid CSRF token.
    token = page.locator("input[name=_csrf_token]").first.get_attribute("value")
    forged = context.request.post(url + "/cancel", form={"_csrf_token": token})
    assert forged.status == 403
    # And without a token at all, refused before any role is looked at.
    assert context.request.post(url + "/cancel", form={}).status == 403
    _, body = server.api("GET", f"/evaluation/{created['id']}")
    assert body["status"] in ("queued", "running")
    server.api("POST", f"/evaluation/{created['id']}/cancel")  # frees the worker slot


def test_pages_fit_a_phone_and_work_by_keyboard(context: Any, server: LiveServer) -> None:
    assert server.tenant is not None
    created = _api_create(server, name="phone", task_names=["find-the-flag"])
    _wait_status(server, created["id"], {"completed", "partial", "failed"})
    _, items = server.api("GET", f"/evaluation/{created['id']}/items")
    evaluation = f"/evaluations/{created['id']}"
    page = _sign_in(context, server, server.tenant.api_key)
    page.set_viewport_size({"width": 390, "height": 844})
    for path in (
        "/",
        "/tasks",
        "/new",
        evaluation,
        f"{evaluation}/items/{items['items'][0]['id']}",
        f"{evaluation}/history",
    ):
        page.goto(f"{server.url}/w/{server.org}/{server.workspace}{path}")
        overflow = page.evaluate(
            "document.documentElement.scrollWidth - document.documentElement.clientWidth"
        )
        assert overflow <= 0, f"{path} scrolls sideways at 390 px"
    page.goto(f"{server.url}/w/{server.org}/{server.workspace}/")
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.textContent") == "Skip to content"
    page.keyboard.press("Enter")
    assert page.evaluate("document.activeElement.id") == "main"


def test_api_docs_render_with_no_asset_from_elsewhere(context: Any, server: LiveServer) -> None:
    page = context.new_page()
    outside: list[str] = []
    page.route(
        re.compile(r"^(?!" + re.escape(server.url) + ").*"),
        lambda route: (outside.append(route.request.url), route.abort()),
    )
    page.goto(server.url + "/schema")
    page.locator(".swagger-ui .info .title").wait_for()
    assert "Assay evaluation API" in page.locator(".swagger-ui .info .title").inner_text()
    assert outside == []


def test_a_running_items_page_follows_it_to_its_end(context: Any, server: LiveServer) -> None:
    assert server.tenant is not None
    created = _api_create(server, name="item-live", task_names=["slow-task"])
    _wait_status(server, created["id"], {"running"})
    _, items = server.api("GET", f"/evaluation/{created['id']}/items")
    page = _sign_in(context, server, server.tenant.api_key)
    page.goto(
        f"{server.url}/w/{server.org}/{server.workspace}/evaluations/{created['id']}"
        f"/items/{items['items'][0]['id']}"
    )
    page.evaluate("window.__assayNoReload = true")
    assert "no verdict yet" in page.locator("#verdict").inner_text()
    server.api("POST", f"/evaluation/{created['id']}/cancel")
    page.locator('[data-terminal="true"]').wait_for(timeout=TIMEOUT_MS)
    assert page.locator("#verdict").inner_text() == "cancelled"
    assert page.evaluate("window.__assayNoReload") is True


def test_the_list_updates_running_rows_by_itself(context: Any, server: LiveServer) -> None:
    assert server.tenant is not None
    created = _api_create(server, name="row-live", task_names=["slow-task"])
    _wait_status(server, created["id"], {"running"})
    page = _sign_in(context, server, server.tenant.api_key)
    page.evaluate("window.__assayNoReload = true")
    row = page.locator("tbody#rows tr", has_text="row-live")
    assert "running" in row.inner_text()
    server.api("POST", f"/evaluation/{created['id']}/cancel")
    page.locator("tbody#rows tr[data-status='cancelled']", has_text="row-live").wait_for(
        timeout=TIMEOUT_MS
    )
    assert page.evaluate("window.__assayNoReload") is True


def test_history_shows_the_intact_chain_and_opens_a_past_state(
    context: Any, server: LiveServer
) -> None:
    assert server.tenant is not None
    created = _api_create(server, name="history-walk", task_names=["find-the-flag"])
    _wait_status(server, created["id"], {"completed", "partial", "failed"})
    page = _sign_in(context, server, server.tenant.api_key)
    page.goto(f"{server.url}/w/{server.org}/{server.workspace}/evaluations/{created['id']}/history")
    assert "Intact:" in page.locator(".chain-check").inner_text()
    first = page.get_by_role("link", name=re.compile("View the evaluation as of position")).first
    position = first.inner_text()
    first.click()
    page.wait_for_url(re.compile(rf"\?as_of={position}$"))
    banner = page.get_by_role("status").filter(has_text="As of position")
    assert f"As of position {position}" in banner.inner_text()
    assert "queued" in page.locator(".status-line").inner_text()
    assert page.locator("#live").count() == 0  # no live updates of a past state
    banner.get_by_role("link", name="back to now").click()
    page.wait_for_url(re.compile(rf"/evaluations/{created['id']}$"))
    assert "completed" in page.locator(".status-line").inner_text()
