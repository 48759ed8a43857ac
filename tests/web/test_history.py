"""The History page shows the hash-chain check of the evaluation's events and opens the
evaluation as of any of them (both backends)."""

from __future__ import annotations

import json
import re
from typing import Any

from tests.app.test_audit_verify_cli import without_triggers
from tests.web.conftest import Site


def api_history(site: Site, evaluation_id: str) -> list[dict[str, Any]]:
    response = site.client.get(
        f"/api/v1/org/{site.org}/ws/{site.workspace}/evaluation/{evaluation_id}/events",
        headers={"X-API-Key": site.key},
    )
    assert response.status_code == 200, response.text
    events: list[dict[str, Any]] = response.json()["events"]
    return events


def test_history_says_the_chain_is_intact_and_links_each_position(site: Site) -> None:
    site.sign_in()
    evaluation = site.api_create()
    events = api_history(site, evaluation["id"])
    html = site.client.get(f"{site.base}/evaluations/{evaluation['id']}/history").text
    assert f"Intact: {len(events)} events recompute" in html
    assert "assay audit verify" in html and 'data-chain="bad"' not in html
    for event in events:
        assert f"/evaluations/{evaluation['id']}?as_of={event['position']}" in html


def test_an_edited_event_is_named_by_position_and_marked(site: Site) -> None:
    site.sign_in()
    evaluation = site.api_create()
    events = api_history(site, evaluation["id"])
    target = next(e for e in events if e["type"] == "item.queued")
    without_triggers(
        site.settings.database_url,
        "UPDATE events SET data = :data WHERE position = :p",
        params={"data": json.dumps({**target["data"], "max_retries": 99}), "p": target["position"]},
    )
    html = site.client.get(f"{site.base}/evaluations/{evaluation['id']}/history").text
    assert f"Broken at position {target['position']}</strong>: changed" in html
    assert "Intact" not in html
    marked = re.findall(r'<tr class="chain-bad-row" data-chain="bad">\s*<td><a [^>]*>(\d+)<', html)
    assert marked == [str(target["position"])]


def test_as_of_a_position_shows_the_past_state_without_actions(site: Site) -> None:
    site.sign_in()
    evaluation = site.api_create()
    page = f"{site.base}/evaluations/{evaluation['id']}"
    now = site.client.get(page).text
    assert "Cancel evaluation" in now and "As of position" not in now
    queued = api_history(site, evaluation["id"])[-1]  # the last event before the cancel
    site.client.post(
        f"/api/v1/org/{site.org}/ws/{site.workspace}/evaluation/{evaluation['id']}/cancel",
        headers={"X-API-Key": site.key},
    )
    assert 'aria-label="2 cancelled of 2"' in site.client.get(page).text

    past = site.client.get(f"{page}?as_of={queued['position']}")
    assert past.status_code == 200
    assert f"As of position {queued['position']}, recorded at" in past.text
    assert f'href="{page}">back to now</a>' in past.text
    assert 'aria-label="2 queued of 2"' in past.text and "s-queued" in past.text
    # The evaluation was still running then: still no cancel button, and no live updates.
    assert "Cancel evaluation" not in past.text and "data-live=" not in past.text

    item = re.search(rf'href="({page}/items/[^"?]+)\?as_of={queued["position"]}"', past.text)
    assert item, "the past page's items open as of the same position"
    item_now = site.client.get(item.group(1)).text
    assert "item.cancelled" in item_now
    item_then = site.client.get(f"{item.group(1)}?as_of={queued['position']}").text
    assert f"As of position {queued['position']}" in item_then
    assert "queued (no verdict yet)" in item_then and "item.queued" in item_then
    assert "item.cancelled" not in item_then and "data-live=" not in item_then


def test_a_malformed_as_of_is_an_error_page(site: Site) -> None:
    site.sign_in()
    evaluation = site.api_create()
    page = f"{site.base}/evaluations/{evaluation['id']}"
    bad = site.client.get(f"{page}?as_of=yesterday")
    assert bad.status_code == 422
    assert "as_of must be an event position" in bad.text and "<html" in bad.text
    before = site.client.get(f"{page}?as_of=0")
    assert before.status_code == 404 and "did not exist yet" in before.text
