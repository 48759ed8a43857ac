"""The inline read models: evaluation and item rows written in the append's own transaction.

Runs on SQLite and PostgreSQL through the `engine` fixture. Each test drives the real write
path: load the streams, `decide`, `codec.to_appends`, and `EventStore.append` with the
`Projector` as its in-transaction hook, then reads the rows back.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import msgspec
import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from domain import evaluation as ev
from domain import item as it
from domain.projections import Actor, EvaluationView, ItemView, Views, project
from infrastructure import codec
from infrastructure.db.store_tables import evaluations, items
from infrastructure.eventstore import ConcurrencyConflict, EventStore, RecordedEvent
from infrastructure.readmodels import Projector, decode_evaluation, decode_item

AT = "2026-11-26T12:00:00.000000Z"
ACTOR = Actor(user_id=str(uuid.uuid4()), email="ada@example.com", username="ada")
METADATA = codec.EventMetadata(actor=ACTOR, request_id="req-1")


def new_id() -> str:
    return str(uuid.uuid4())


def at(second: int) -> str:
    return f"2026-11-26T12:00:{second:02d}.000000Z"


def create_command(item_count: int, *, max_retries: int = 1) -> ev.CreateEvaluation:
    return ev.CreateEvaluation(
        evaluation_id=new_id(),
        org_id=new_id(),
        workspace_id=new_id(),
        config=ev.EvaluationConfig(
            name="inline", model="gpt-test", project_id=new_id(), max_retries=max_retries
        ),
        items=tuple(
            ev.ItemSpec(
                item_id=new_id(),
                task_name=f"task-{n}",
                task_ref=f"task-{n}@1",
                variables={"n": n},
            )
            for n in range(item_count)
        ),
    )


class Loaded(msgspec.Struct, kw_only=True):
    state: ev.EvaluationState
    item_states: dict[str, it.ItemState]
    versions: dict[tuple[str, str], int]


async def load(store: EventStore, evaluation_id: str) -> Loaded:
    """What a command service does before deciding: replay the evaluation and its items."""
    state: ev.EvaluationState | None = None
    own = await store.read_stream("evaluation", evaluation_id)
    for record in own:
        event = codec.decode(record)
        assert isinstance(event, ev.EVALUATION_EVENTS)
        state = ev.evolve(state, event)
    assert state is not None
    versions = {("evaluation", evaluation_id): own[-1].stream_version}
    item_states: dict[str, it.ItemState] = {}
    for item_id, records in (await store.read_streams("item", state.item_ids)).items():
        item_events = [codec.decode(r) for r in records]
        assert all(isinstance(e, it.ITEM_EVENTS) for e in item_events)
        replayed = it.replay(item_events)  # type: ignore[arg-type]
        assert replayed is not None
        item_states[item_id] = replayed
        versions[("item", item_id)] = records[-1].stream_version
    return Loaded(state=state, item_states=item_states, versions=versions)


async def append(
    store: EventStore,
    events: Sequence[ev.AnyEvent],
    versions: Mapping[tuple[str, str], int],
    recorded_at: str,
) -> list[RecordedEvent]:
    return await store.append(
        codec.to_appends(events, dict(versions), METADATA), recorded_at=recorded_at
    )


async def rows(engine: AsyncEngine) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    async with engine.connect() as conn:
        evaluation_rows = (
            await conn.execute(sa.select(evaluations).order_by(evaluations.c.id))
        ).all()
        item_rows = (await conn.execute(sa.select(items).order_by(items.c.id))).all()
    return [dict(r._mapping) for r in evaluation_rows], [dict(r._mapping) for r in item_rows]


async def views_from_rows(
    engine: AsyncEngine,
) -> tuple[dict[str, EvaluationView], dict[str, ItemView]]:
    evaluation_rows, item_rows = await rows(engine)
    return (
        {r["id"]: decode_evaluation(r["doc"]) for r in evaluation_rows},
        {r["id"]: decode_item(r["doc"]) for r in item_rows},
    )


def rebuilt(recorded: Sequence[RecordedEvent]) -> Views:
    """The same read models folded from the log alone (what a rebuild produces)."""
    views = Views()
    for record in recorded:
        project(views, codec.decode(record), codec.envelope(record))
    return views


async def advance(
    store: EventStore, evaluation_id: str, item_id: str, events: Sequence[it.AnyItemEvent], t: int
) -> None:
    """Move one item through `events`, each decided against freshly loaded state."""
    for offset, proposed in enumerate(events):
        loaded = await load(store, evaluation_id)
        it.evolve(loaded.item_states[item_id], proposed)  # refuses what the machine does not
        decided = [proposed]
        await append(store, decided, loaded.versions, at(t + offset))


def happy_path(evaluation_id: str, item_id: str, *, passed: bool) -> list[it.AnyItemEvent]:
    ids = {"item_id": item_id, "evaluation_id": evaluation_id}
    return [
        it.ItemClaimed(**ids, worker_id="worker-1", lease_expires_at=at(59)),
        it.ItemProvisioning(**ids, sandbox_id="sbx"),
        it.ItemAgentStarted(**ids, session_id="sess"),
        it.ItemAgentFinished(**ids, agent_result={"steps": 3}),
        it.ItemVerifying(**ids),
        it.ItemVerdict(**ids, passed=passed, result={"flag": passed}),
    ]


async def test_create_writes_one_evaluation_row_and_one_row_per_item_that_decode_to_the_views(
    engine: AsyncEngine,
) -> None:
    store = EventStore(engine, in_transaction=Projector())
    command = create_command(4)
    recorded = await append(store, ev.decide(None, {}, command), {}, AT)

    evaluation_rows, item_rows = await rows(engine)
    assert len(evaluation_rows) == 1
    assert len(item_rows) == 4

    (row,) = evaluation_rows
    view = decode_evaluation(row["doc"])
    assert view.id == row["id"] == command.evaluation_id
    assert view.org_id == row["org_id"] == command.org_id
    assert view.workspace_id == row["workspace_id"] == command.workspace_id
    assert row["project_id"] == command.config.project_id
    assert view.created_by == ACTOR and row["created_by"] == ACTOR.user_id
    assert view.status == row["status"] == "queued"
    assert view.dataset_size == 4
    assert view.item_counts == {s: (4 if s == "queued" else 0) for s in it.ITEM_STATUSES}
    assert view.config == command.config
    assert view.created_at == view.queued_at == view.updated_at == AT
    assert view.completed_at is None
    assert view.last_position == row["last_position"] == recorded[0].position

    by_id = {r["id"]: decode_item(r["doc"]) for r in item_rows}
    for position, spec in enumerate(command.items, start=1):
        item_view = by_id[spec.item_id]
        item_row = next(r for r in item_rows if r["id"] == spec.item_id)
        assert item_view.evaluation_id == item_row["evaluation_id"] == command.evaluation_id
        assert item_view.position == item_row["position"] == position
        assert item_view.status == item_row["status"] == "queued"
        assert item_view.task_name_snapshot == spec.task_name
        assert item_view.task_ref == spec.task_ref
        assert item_view.variables == spec.variables
        assert item_view.model == command.config.model
        assert item_view.max_retries == command.config.max_retries
        assert item_view.retry_count == 0
        assert item_view.last_position == item_row["last_position"]

    # The rows equal a rebuild from the log.
    rebuilt_views = rebuilt(await store.read_all())
    assert await views_from_rows(engine) == (rebuilt_views.evaluations, rebuilt_views.items)


async def test_cancel_after_progress_updates_status_counts_and_item_rows(
    engine: AsyncEngine,
) -> None:
    store = EventStore(engine, in_transaction=Projector())
    command = create_command(3)
    eid = command.evaluation_id
    first, second, third = (spec.item_id for spec in command.items)
    await append(store, ev.decide(None, {}, command), {}, at(0))
    await advance(store, eid, first, happy_path(eid, first, passed=True), 1)
    await advance(store, eid, second, happy_path(eid, second, passed=True)[:2], 10)

    evaluation_views, _ = await views_from_rows(engine)
    assert evaluation_views[eid].status == "running"

    loaded = await load(store, eid)
    cancel = ev.decide(loaded.state, loaded.item_states, ev.CancelEvaluation(reason="user stop"))
    await append(store, cancel, loaded.versions, at(20))

    evaluation_rows, item_rows = await rows(engine)
    (row,) = evaluation_rows
    view = decode_evaluation(row["doc"])
    assert view.status == row["status"] == "cancelled"
    assert view.item_counts == {
        s: {"passed": 1, "cancelled": 2}.get(s, 0) for s in it.ITEM_STATUSES
    }
    assert view.completed_at == at(20)
    statuses = {r["id"]: (r["status"], decode_item(r["doc"]).status) for r in item_rows}
    assert statuses == {
        first: ("passed", "passed"),
        second: ("cancelled", "cancelled"),
        third: ("cancelled", "cancelled"),
    }
    assert decode_item(next(r for r in item_rows if r["id"] == third)["doc"]).error == "user stop"

    rebuilt_views = rebuilt(await store.read_all())
    assert await views_from_rows(engine) == (rebuilt_views.evaluations, rebuilt_views.items)


async def test_conflicting_append_leaves_read_models_unchanged(engine: AsyncEngine) -> None:
    store = EventStore(engine, in_transaction=Projector())
    command = create_command(3)
    eid = command.evaluation_id
    moving = command.items[1].item_id
    await append(store, ev.decide(None, {}, command), {}, at(0))

    stale = await load(store, eid)  # a command service loads ...
    await advance(
        store, eid, moving, happy_path(eid, moving, passed=True)[:1], 1
    )  # ... a worker claims
    before = await rows(engine)
    last = await store.last_position()

    cancel = ev.decide(stale.state, stale.item_states, ev.CancelEvaluation())
    with pytest.raises(ConcurrencyConflict):
        await append(store, cancel, stale.versions, at(5))

    assert await rows(engine) == before
    assert await store.last_position() == last
    evaluation_views, item_views = await views_from_rows(engine)
    assert evaluation_views[eid].status == "running"
    assert item_views[moving].status == "claiming"


async def test_concurrent_cancels_are_projected_once_and_neighbours_still_project(
    engine: AsyncEngine,
) -> None:
    store = EventStore(engine, in_transaction=Projector())
    command = create_command(3)
    eid = command.evaluation_id
    await append(store, ev.decide(None, {}, command), {}, at(0))
    loaded = await load(store, eid)
    cancel = ev.decide(loaded.state, loaded.item_states, ev.CancelEvaluation())
    fail = ev.decide(loaded.state, loaded.item_states, ev.FailEvaluation(error="boom"))
    other = create_command(2)

    # One group commit: the two closures of `eid` conflict, the unrelated create does not.
    results = await asyncio.gather(
        append(store, cancel, loaded.versions, at(1)),
        append(store, fail, loaded.versions, at(1)),
        append(store, ev.decide(None, {}, other), {}, at(1)),
        return_exceptions=True,
    )
    closures = results[:2]
    assert sum(isinstance(r, list) for r in closures) == 1, closures
    assert sum(isinstance(r, ConcurrencyConflict) for r in closures) == 1, closures
    assert isinstance(results[2], list), results[2]

    evaluation_views, item_views = await views_from_rows(engine)
    closed = evaluation_views[eid]
    assert closed.status in ("cancelled", "failed")
    assert closed.item_counts == {s: (3 if s == "cancelled" else 0) for s in it.ITEM_STATUSES}
    assert evaluation_views[other.evaluation_id].item_counts["queued"] == 2
    assert len(item_views) == 5

    rebuilt_views = rebuilt(await store.read_all())
    assert (evaluation_views, item_views) == (rebuilt_views.evaluations, rebuilt_views.items)


async def test_a_projection_failure_in_one_append_does_not_fail_its_group_commit_neighbours(
    engine: AsyncEngine,
) -> None:
    store = EventStore(engine, in_transaction=Projector())
    good = create_command(1)
    orphan = it.ItemClaimed(
        item_id=new_id(), evaluation_id=new_id(), worker_id="w", lease_expires_at=at(59)
    )
    results = await asyncio.gather(
        append(store, ev.decide(None, {}, good), {}, at(0)),
        append(store, [orphan], {}, at(0)),
        return_exceptions=True,
    )
    # The orphan has no item row to update, so its projection fails and it is not written ...
    assert isinstance(results[1], KeyError), results[1]
    assert await store.read_stream("item", orphan.item_id) == []
    # ... while the valid append coalesced with it commits and projects.
    assert isinstance(results[0], list), results[0]
    evaluation_views, item_views = await views_from_rows(engine)
    assert set(evaluation_views) == {good.evaluation_id}
    assert set(item_views) == {good.items[0].item_id}
