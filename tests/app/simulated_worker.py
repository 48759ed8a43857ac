"""A worker in another process, simulated: item events appended through a separate engine and
store, then a wait until the serving process shows them (its view cache learns of other
processes' appends from its log tail, within view_tail_seconds)."""

from __future__ import annotations

import asyncio
import time

from app.composition import open_store
from domain import item as it
from infrastructure import codec
from infrastructure.clock import utc_now
from infrastructure.db.engine import create_engine
from infrastructure.queries import ReadModelQueries
from tests.app.conftest import Api

SETTLE_SECONDS = 10.0


def worker_moves(api: Api, evaluation_id: str, item_id: str, *events: it.AnyItemEvent) -> None:
    async def append() -> tuple[str, dict[str, int]]:
        engine = create_engine(api.settings.database_url)
        store = open_store(engine)[0]
        try:
            version = len(await store.read_stream("item", item_id))
            await store.append(
                codec.to_appends(list(events), {("item", item_id): version}, codec.EventMetadata()),
                recorded_at=utc_now(),
            )
            stored = await ReadModelQueries(engine).evaluation(evaluation_id)
            assert stored is not None
            return stored.status, stored.item_counts
        finally:
            await store.close()
            await engine.dispose()

    status, counts = asyncio.run(append())
    deadline = time.monotonic() + SETTLE_SECONDS
    while time.monotonic() < deadline:
        served = api.get(f"/evaluation/{evaluation_id}").json()
        if (served["status"], served["item_counts"]) == (status, counts):
            return
        time.sleep(0.02)
    raise AssertionError(f"the API never showed {status} {counts} for {evaluation_id}")


def claim(api: Api, evaluation_id: str, item_id: str) -> None:
    worker_moves(
        api,
        evaluation_id,
        item_id,
        it.ItemClaimed(
            item_id=item_id,
            evaluation_id=evaluation_id,
            worker_id="w-1",
            lease_expires_at="2099-01-01T00:00:00.000000+00:00",
        ),
    )


def run_to_verdict(api: Api, evaluation_id: str, item_id: str, passed: bool) -> None:
    ids = {"item_id": item_id, "evaluation_id": evaluation_id}
    worker_moves(
        api,
        evaluation_id,
        item_id,
        it.ItemClaimed(**ids, worker_id="w-1", lease_expires_at="2099-01-01T00:00:00+00:00"),
        it.ItemProvisioning(**ids, sandbox_id="sb-1"),
        it.ItemAgentStarted(**ids, session_id="sess-1"),
        it.ItemAgentFinished(**ids, agent_result={"agent": "nop", "total_tokens": 12}),
        it.ItemVerifying(**ids),
        it.ItemVerdict(**ids, passed=passed, result={"flag": "x"}),
    )
