"""The in-process view cache never serves a view older than the log says, beyond its bounds:
this process's own writes at once, other processes' appends within the log-tail interval."""

from __future__ import annotations

import asyncio
import time

from app.composition import open_store
from app.services.items import ItemService
from domain.projections import EvaluationView
from infrastructure.clock import system_clock
from infrastructure.db.engine import create_engine
from infrastructure.eventstore import RecordedEvent
from infrastructure.queries import ReadModelQueries
from infrastructure.repository import Repository
from infrastructure.view_cache import REBUILT_EVENT, ViewCache
from tests.app.conftest import Api


def test_own_cancel_is_read_back_at_once_even_when_the_view_was_cached(api: Api) -> None:
    created = api.create(task_names=["find-the-flag", "decode-payload"]).json()
    assert api.get(f"/evaluation/{created['id']}").json()["status"] == "queued"  # now cached

    api.post(f"/evaluation/{created['id']}/cancel")

    assert api.get(f"/evaluation/{created['id']}").json()["status"] == "cancelled"


def claim_from_another_process(database_url: str, evaluation_id: str) -> None:
    """Append a claim through a separate engine and store, as a worker elsewhere would."""

    async def claim() -> None:
        engine = create_engine(database_url)
        try:
            queries = ReadModelQueries(engine)
            store, leases = open_store(engine)
            items = ItemService(
                repository=Repository(store),
                leases=leases,
                clock=system_clock,
                lease_seconds=30,
                retry_backoff_seconds=1,
            )
            evaluation = await queries.evaluation(evaluation_id)
            assert evaluation is not None
            first = (await queries.items(evaluation_id))[0]
            assert await items.claim([first.id], "elsewhere")
            await store.close()
        finally:
            await engine.dispose()

    asyncio.run(claim())


def test_another_processs_append_is_seen_within_the_log_tail_interval(api: Api) -> None:
    created = api.create().json()
    assert api.get(f"/evaluation/{created['id']}").json()["status"] == "queued"  # now cached

    claim_from_another_process(api.settings.database_url, created["id"])

    deadline = time.monotonic() + 10 * api.settings.view_tail_seconds + 2
    status = "queued"
    while time.monotonic() < deadline and status != "running":
        status = api.get(f"/evaluation/{created['id']}").json()["status"]
        time.sleep(0.02)
    assert status == "running"


def _view(evaluation_id: str) -> EvaluationView:
    from domain.evaluation import EvaluationConfig

    return EvaluationView(
        id=evaluation_id,
        org_id="o",
        workspace_id="w",
        config=EvaluationConfig(name="n"),
        dataset_size=1,
        status="queued",
        item_counts={},
        queued_at="t",
        created_at="t",
        updated_at="t",
        last_position=1,
    )


def _recorded(stream_type: str, stream_id: str, data: str, kind: str = "x") -> RecordedEvent:
    return RecordedEvent(
        position=1,
        event_id="e",
        stream_type=stream_type,
        stream_id=stream_id,
        stream_version=1,
        event_type=kind,
        schema_version=1,
        data=data,
        metadata="{}",
        recorded_at="t",
    )


def test_a_read_that_raced_an_invalidation_is_not_cached() -> None:
    cache = ViewCache(ttl_seconds=60)
    started = cache.begin_read()
    cache.forget(["a"])  # an event of "a" committed while the read was in flight
    cache.end_read(started, _view("a"))
    assert cache.get("a") is None
    cache.end_read(cache.begin_read(), _view("a"))
    assert cache.get("a") is not None


def test_item_events_evict_their_evaluation_and_operator_events_evict_everything() -> None:
    cache = ViewCache(ttl_seconds=60)
    cache.end_read(cache.begin_read(), _view("a"))
    cache.end_read(cache.begin_read(), _view("b"))
    cache.forget_recorded([_recorded("item", "i1", '{"evaluation_id": "a", "item_id": "i1"}')])
    assert cache.get("a") is None and cache.get("b") is not None
    cache.forget_recorded([_recorded("other", "x", "{}")])  # not an evaluation's stream
    assert cache.get("b") is not None
    cache.forget_recorded([_recorded("operations", "r1", '{"through_position": 1}', REBUILT_EVENT)])
    assert cache.get("b") is None


def test_a_zero_ttl_turns_caching_off() -> None:
    cache = ViewCache(ttl_seconds=0)
    cache.end_read(cache.begin_read(), _view("a"))
    assert cache.get("a") is None


def test_after_a_clear_only_reads_started_before_it_are_refused() -> None:
    cache = ViewCache(ttl_seconds=60)
    before = cache.begin_read()
    cache.clear()
    cache.end_read(before, _view("a"))
    assert cache.get("a") is None
    cache.end_read(cache.begin_read(), _view("a"))
    assert cache.get("a") is not None
