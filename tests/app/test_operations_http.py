"""Operators' routes through HTTP, on SQLite and PostgreSQL: `/metrics` (Prometheus text, the
optional bearer token), `/health` and `/ready` (database, migration head, catalog; 503 with the
envelope otherwise), and `Idempotency-Key` on create."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from litestar.testing import AsyncTestClient, TestClient
from prometheus_client.parser import text_string_to_metric_families

from app.composition import build_container
from app.main import create_app
from app.services.idempotency import Idempotency
from infrastructure.db.migrate import upgrade_sync
from infrastructure.idempotency import IdempotencyKeys
from infrastructure.identity.bootstrap import bootstrap
from infrastructure.settings import Settings
from infrastructure.tasks import TaskCatalog
from tests.app.conftest import Api, make_settings, run_identity
from tests.app.http_helpers import assert_envelope, created

CREATE_ROUTE = "/api/v1/org/{org}/ws/{ws}/evaluation"


def scrape(
    client: TestClient[Any], **headers: str
) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """`GET /metrics` parsed: {(sample name, sorted labels): value}."""
    response = client.get("/metrics", headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


# ---- metrics ------------------------------------------------------------------------------


def test_metrics_count_requests_by_route_template_appends_and_items_by_state(api: Api) -> None:
    before = scrape(api.client)

    first = created(api, task_names=["find-the-flag", "decode-payload"])
    created(api, task_names=["find-the-flag"])
    assert api.get(f"/evaluation/{first['id']}").status_code == 200
    assert api.get("/evaluation/00000000-0000-0000-0000-000000000000").status_code == 404
    after = scrape(api.client)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    # One series per route template, never per id in the path.
    assert delta("assay_http_requests_total", method="POST", route=CREATE_ROUTE, status="201") == 2
    get_route = "/api/v1/org/{org}/ws/{ws}/evaluation/{evaluation_id}"
    assert delta("assay_http_requests_total", method="GET", route=get_route, status="200") == 1
    assert delta("assay_http_requests_total", method="GET", route=get_route, status="404") == 1
    assert not any(first["id"] in dict(labels).get("route", "") for _, labels in after)
    latency = "assay_http_request_duration_seconds_count"
    assert delta(latency, method="POST", route=CREATE_ROUTE) == 2
    # Two creates: two append calls of 1 + 2 and 1 + 1 events (evaluation.created, item.queued).
    assert delta("assay_appends_total") == 2
    assert delta("assay_events_appended_total") == 5
    assert delta("assay_append_batch_units_count") >= 1
    # From the read model at scrape time: this database's three items are all queued.
    assert value(after, "assay_items", state="queued") == 3
    assert value(after, "assay_items", state="passed") == 0
    assert value(after, "assay_projection_lag_events") == 0
    # Present for other code to set, and the pool's slots (this app runs no worker).
    assert ("assay_live_streams", ()) in after
    assert value(after, "assay_worker_slots", state="busy") == 0


def test_metrics_need_the_bearer_token_when_one_is_set(database_url: str) -> None:
    settings = make_settings(database_url, metrics_token="s3cret-scrape")
    with TestClient(create_app(settings)) as client:
        missing = client.get("/metrics")
        wrong = client.get("/metrics", headers={"Authorization": "Bearer nope"})
        samples = scrape(client, Authorization="Bearer s3cret-scrape")

    assert_envelope(missing, 401, "authentication_error")
    assert_envelope(wrong, 401, "authentication_error")
    assert ("assay_projection_lag_events", ()) in samples


# ---- health and readiness -----------------------------------------------------------------


def test_ready_names_the_schema_revision_and_the_loaded_tasks(api: Api) -> None:
    ready = api.client.get("/ready")

    assert ready.status_code == 200, ready.text
    body = ready.json()
    assert body["status"] == "ok" and body["database"] == "ok"
    assert body["tasks"] >= 1
    assert api.client.get("/health").json() == {"status": "ok"}


def test_ready_is_503_while_the_schema_is_behind_the_code(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path}/old.db"
    upgrade_sync(url, "0003")
    with TestClient(create_app(make_settings(url))) as client:
        ready = client.get("/ready")
        health = client.get("/health")

    body = assert_envelope(ready, 503, "service_unavailable")
    assert "0003" in body["detail"] and "assay db upgrade" in body["detail"]
    assert health.status_code == 200  # alive: a restart would not help


def test_ready_is_503_when_the_database_cannot_be_reached() -> None:
    # A PostgreSQL URL on a port nothing listens on.
    settings = make_settings("postgresql+asyncpg://postgres@127.0.0.1:9/none")
    with TestClient(create_app(settings)) as client:
        ready = client.get("/ready")
        health = client.get("/health")

    body = assert_envelope(ready, 503, "service_unavailable")
    assert "database unreachable" in body["detail"]
    assert health.status_code == 200


def test_ready_is_503_without_a_loaded_task(settings: Settings) -> None:
    container = build_container(settings, catalog=TaskCatalog([]))
    with TestClient(create_app(settings, container=container)) as client:
        ready = client.get("/ready")

    body = assert_envelope(ready, 503, "service_unavailable")
    assert "no task is loaded" in body["detail"]


# ---- Idempotency-Key ----------------------------------------------------------------------


def _create(
    api: Api, key: str | None, body: dict[str, Any], headers: dict[str, str] | None = None
) -> Any:
    sent = {**(headers or api.headers), **({"Idempotency-Key": key} if key else {})}
    return api.client.post(f"{api.base}/evaluation", json=body, headers=sent)


BODY = {"name": "nightly", "model": "test-model", "task_names": ["find-the-flag"]}


def _evaluation_count(api: Api) -> int:
    total: int = api.get("/evaluations").json()["total"]
    return total


def test_the_same_key_and_body_answer_the_first_evaluation_again(api: Api) -> None:
    first = _create(api, "nightly-2026-11-30", BODY)
    again = _create(api, "nightly-2026-11-30", BODY)
    # The same request serialised in another key order is the same request.
    reordered = _create(api, "nightly-2026-11-30", dict(reversed(list(BODY.items()))))

    assert first.status_code == 201, first.text
    assert again.status_code == 201 and reordered.status_code == 201
    assert again.json()["id"] == first.json()["id"] == reordered.json()["id"]
    assert _evaluation_count(api) == 1
    # Recorded in the log: the created event carries the key.
    history = api.get(f"/evaluation/{first.json()['id']}/events").json()["events"]
    created_event = next(e for e in history if e["type"] == "evaluation.created")
    assert created_event["idempotency_key"] == "nightly-2026-11-30"


def test_the_same_key_with_another_body_is_409_already_exists(api: Api) -> None:
    first = _create(api, "k-1", BODY)
    other = _create(api, "k-1", {**BODY, "name": "something else"})

    assert first.status_code == 201
    body = assert_envelope(other, 409, "already_exists")
    assert body["detail"].startswith("Already exists")
    assert _evaluation_count(api) == 1


def test_requests_without_a_key_or_with_different_keys_create_each_time(api: Api) -> None:
    ids = {
        _create(api, None, BODY).json()["id"],
        _create(api, None, BODY).json()["id"],
        _create(api, "a", BODY).json()["id"],
        _create(api, "b", BODY).json()["id"],
    }
    assert len(ids) == 4


def test_keys_belong_to_their_caller(api: Api) -> None:
    other = run_identity(
        api.settings,
        lambda store: bootstrap(store, org_key="acme", workspace_key="main", email="two@acme.test"),
    )
    mine = _create(api, "shared-key", BODY)
    theirs = _create(api, "shared-key", BODY, headers={"X-API-Key": other.raw_key})

    assert mine.status_code == theirs.status_code == 201
    assert mine.json()["id"] != theirs.json()["id"]


def test_a_malformed_key_is_400_naming_the_header(api: Api) -> None:
    response = _create(api, "x" * 256, BODY)

    body = assert_envelope(response, 400, "bad_request")
    assert body["errors"][0]["loc"] == ["header", "Idempotency-Key"]
    assert _evaluation_count(api) == 0


def test_keys_are_kept_24_hours_then_free_again(api: Api) -> None:
    service = api.client.app.state.container.evaluations
    now = [datetime(2026, 11, 30, 12, tzinfo=UTC)]
    service.idempotency = Idempotency(IdempotencyKeys(service.store.engine), lambda: now[0])

    first = _create(api, "daily", BODY)
    now[0] += timedelta(hours=23, minutes=59)
    within = _create(api, "daily", {**BODY, "name": "changed"})
    now[0] += timedelta(minutes=2)
    after = _create(api, "daily", {**BODY, "name": "changed"})

    assert first.status_code == 201
    assert_envelope(within, 409, "already_exists")
    assert after.status_code == 201 and after.json()["id"] != first.json()["id"]


@pytest.fixture
def async_app(settings: Settings, api: Api) -> Iterator[tuple[Any, dict[str, str], str]]:
    """A second app on the same database for a truly concurrent client (one event loop)."""
    yield create_app(settings), api.headers, api.base


async def test_concurrent_requests_with_one_key_create_one_evaluation(
    async_app: tuple[Any, dict[str, str], str],
) -> None:
    app, headers, base = async_app
    async with AsyncTestClient(app) as client:
        responses = await asyncio.gather(
            *(
                client.post(
                    f"{base}/evaluation", json=BODY, headers={**headers, "Idempotency-Key": "race"}
                )
                for _ in range(8)
            )
        )
        listed = (await client.get(f"{base}/evaluations", headers=headers)).json()

    assert [r.status_code for r in responses] == [201] * 8, [r.text for r in responses]
    assert len({r.json()["id"] for r in responses}) == 1
    assert listed["total"] == 1
