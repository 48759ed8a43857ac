"""The read-model fold (`domain.projections.project`) over random but legal histories.

Histories come from `World` in `test_evaluation_machine`: random commands and worker events,
decided and applied by the domain, one batch of events per accepted decision. The fold must
keep `item_counts` consistent with the items at every event boundary, agree with the domain's
item states and the documented status rule after every decision, and give the same views
whether it runs from scratch or one stored batch at a time (as the inline path does).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta

import msgspec
import pytest
from hypothesis import given, settings

from domain import evaluation as ev
from domain.projections import Actor, Envelope, EvaluationView, ItemView, Views, project
from tests.domain.test_evaluation_machine import (
    EVALUATION_ID,
    Cancel,
    Create,
    Fail,
    ItemStep,
    Retry,
    Step,
    World,
    finish_item,
    histories,
)
from tests.domain.test_item_machine import STATUSES

ACTOR = Actor(user_id="user-1", email="ada@example.com", username="ada")
EPOCH = datetime(2026, 11, 26, 12, 0, tzinfo=UTC)
CLOSED_STATUSES = {"completed", "partial", "cancelled", "failed"}


def envelopes(batches: Sequence[Sequence[ev.AnyEvent]]) -> Iterator[list[Envelope]]:
    position = 0
    for batch in batches:
        out = []
        for _ in batch:
            position += 1
            recorded_at = (EPOCH + timedelta(seconds=position)).isoformat()
            out.append(Envelope(position=position, recorded_at=recorded_at, actor=ACTOR))
        yield out


def stored(views: Views) -> Views:
    """Views as the inline path keeps them: written as JSON rows, read back for the next append."""
    return Views(
        {
            k: msgspec.json.decode(msgspec.json.encode(v), type=EvaluationView)
            for k, v in views.evaluations.items()
        },
        {
            k: msgspec.json.decode(msgspec.json.encode(v), type=ItemView)
            for k, v in views.items.items()
        },
    )


def replay(batches: Sequence[Sequence[ev.AnyEvent]]) -> Views:
    views = Views()
    for batch, batch_envelopes in zip(batches, envelopes(batches), strict=True):
        for event, envelope in zip(batch, batch_envelopes, strict=True):
            project(views, event, envelope)
    return views


def play(history: Sequence[Step]) -> World:
    world = World()
    for step in history:
        world.run(step)
    return world


def check_counts(view: EvaluationView, views: Views) -> None:
    assert set(view.item_counts) == set(STATUSES)
    assert all(n >= 0 for n in view.item_counts.values())
    assert sum(view.item_counts.values()) == view.dataset_size
    mine = [i for i in views.items.values() if i.evaluation_id == view.id]
    if len(mine) == view.dataset_size:  # within the create batch the item rows follow
        assert view.item_counts == {s: sum(i.status == s for i in mine) for s in STATUSES}


@settings(max_examples=120, deadline=None)
@given(history=histories)
def test_fold_keeps_counts_and_status_consistent_and_replay_equals_incremental(
    history: list[Step],
) -> None:
    world = play(history)
    incremental = Views()
    for batch, batch_envelopes, snapshot in zip(
        world.batches, envelopes(world.batches), world.snapshots, strict=True
    ):
        incremental = stored(incremental)
        for event, envelope in zip(batch, batch_envelopes, strict=True):
            project(incremental, event, envelope)
            check_counts(incremental.evaluations[EVALUATION_ID], incremental)

        # After every decision the views agree with the domain and the documented status rule.
        view = incremental.evaluations[EVALUATION_ID]
        assert view.dataset_size == len(snapshot.statuses)
        assert view.item_counts == {
            s: sum(v == s for v in snapshot.statuses.values()) for s in STATUSES
        }
        assert {i: incremental.items[i].status for i in snapshot.statuses} == snapshot.statuses
        assert {i: incremental.items[i].retry_count for i in snapshot.statuses} == (
            snapshot.retry_counts
        )
        assert view.closed_as == snapshot.closed_as
        assert view.status == snapshot.status
        assert (view.completed_at is not None) == (view.status in CLOSED_STATUSES)
        assert view.last_position <= batch_envelopes[-1].position

    assert replay(world.batches).evaluations == incremental.evaluations
    assert replay(world.batches).items == incremental.items


def views_of(world: World) -> Views:
    return replay(world.batches)


def status(world: World) -> str:
    return views_of(world).evaluations[EVALUATION_ID].status


def run(world: World, *steps: Step) -> None:
    for step in steps:
        outcome = world.run(step)
        assert isinstance(outcome, list), (step, outcome)


def test_view_status_walks_queued_running_completed_on_the_happy_path() -> None:
    world = play([Create(item_count=2, max_retries=1)])
    assert status(world) == "queued"
    run(world, ItemStep(0, "forward"))
    assert status(world) == "running"
    run(world, ItemStep(0, "infra_failed_will_retry"))  # back to queued, but it ran
    view = views_of(world)
    assert view.items["item-0"].status == "queued"
    assert view.items["item-0"].retry_count == 1
    assert view.evaluations[EVALUATION_ID].status == "running"
    run(world, *finish_item(0, passed=False), *finish_item(1))
    view = views_of(world)
    evaluation = view.evaluations[EVALUATION_ID]
    assert evaluation.status == "completed"
    assert evaluation.item_counts == {s: {"passed": 1, "failed": 1}.get(s, 0) for s in STATUSES}
    assert evaluation.completed_at is not None
    assert evaluation.started_at is not None


@pytest.mark.parametrize("ending", ["errored", "timed_out", "infra_failed_will_retry", "cancelled"])
def test_view_status_is_partial_when_an_item_ends_without_a_verdict(ending: str) -> None:
    world = play([Create(item_count=2, max_retries=0), *finish_item(0), ItemStep(1, "forward")])
    run(world, ItemStep(1, ending))  # with no retries left an infra failure is final
    assert status(world) == "partial"


@pytest.mark.parametrize(("command", "expected"), [(Cancel(), "cancelled"), (Fail(), "failed")])
def test_view_status_is_closed_after_cancel_or_fail_and_reopens_to_queued_on_retry(
    command: Step, expected: str
) -> None:
    world = play([Create(item_count=3, max_retries=0), *finish_item(0), ItemStep(1, "forward")])
    run(world, command)
    view = views_of(world).evaluations[EVALUATION_ID]
    assert view.status == expected
    assert view.item_counts == {s: {"passed": 1, "cancelled": 2}.get(s, 0) for s in STATUSES}
    if expected == "failed":
        assert view.error_summary == "provider down"

    run(world, Retry())
    reopened = views_of(world).evaluations[EVALUATION_ID]
    assert reopened.status == "queued"
    assert reopened.closed_as is None
    assert reopened.completed_at is None
    assert reopened.error_summary is None
    assert reopened.item_counts == {s: {"passed": 1, "queued": 2}.get(s, 0) for s in STATUSES}
    run(world, ItemStep(1, "forward"))
    assert status(world) == "running"
