"""The evaluation stream answers a browser signed in to the dashboard: EventSource sends the
session cookie and no header, so the stream accepts the cookie's key (and only a valid one)."""

from __future__ import annotations

from tests.web.conftest import Site


def test_a_signed_in_browser_streams_an_evaluation_with_its_cookie_alone(site: Site) -> None:
    created = site.api_create()
    path = f"/api/v1/org/{site.org}/ws/{site.workspace}/evaluation/{created['id']}"
    cancelled = site.client.post(f"{path}/cancel", headers={"X-API-Key": site.key})
    assert cancelled.status_code == 200

    anonymous = site.client.get(f"{path}/stream")
    assert anonymous.status_code == 401

    assert site.sign_in().status_code == 303
    streamed = site.client.get(f"{path}/stream")  # cookie only; ends: the evaluation is over
    assert streamed.status_code == 200, streamed.text
    assert streamed.headers["content-type"].startswith("text/event-stream")
    body = streamed.text
    assert "event: evaluation.created" in body and "event: item.cancelled" in body
    assert (
        body.rstrip().endswith('"status":"cancelled"')
        or '"status":"cancelled"' in (body.rstrip().split("\n\n")[-1])
    )

    site.client.post("/logout", data={})  # whatever the form wants, drop the cookie too
    site.client.cookies.clear()
    assert site.client.get(f"{path}/stream").status_code == 401
