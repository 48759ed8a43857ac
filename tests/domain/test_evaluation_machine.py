"""The evaluation aggregate under random command sequences, against the documented machine.

    queued (nothing claimed since (re)opening) -> running -> completed | partial
    any non-terminal -> cancelled | failed;   terminal -> (retry-failed) -> queued

`World` below plays the command services: it decides evaluation commands through
`evaluation.decide`, and plays a worker moving one item a step at a time (each step an event the
item machine, `item.evolve`, must accept, an infra failure retried per `item.retries_left`;
`tests.domain.test_item_machine` checks the worker's commands themselves), and evolves the
accepted events. The expectations (what must be refused, what status follows) are written from the
documentation, not from the code under test. `tests.domain.test_projection_properties` reuses
`World` and `steps` to produce histories.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from domain import evaluation as ev
from domain import item as it
from domain.errors import DomainError, IllegalTransition, InvalidCommand
from tests.domain.test_item_machine import KINDS, LEGAL, STATUSES

EVALUATION_ID = "evaluation-1"
TERMINAL = {"passed", "failed", "timed_out", "cancelled", "infra_error", "errored"}
VERDICTS = {"passed", "failed"}
RETRYABLE = {"failed", "timed_out", "cancelled", "infra_error"}
FORWARD_KIND = {
    "queued": "claimed",
    "claiming": "provisioning",
    "provisioning": "agent_started",
    "agent_running": "agent_finished",
    "agent_finished": "verifying",
    "verifying": "verdict_passed",
}
# Worker events a random step may propose. `requeued` is left out: it is what retry-failed
# emits, not something a worker proposes for a single item.
ITEM_KINDS = [k for k in KINDS if k not in ("queued", "requeued", "infra_failed_final")]


class Create(msgspec.Struct, frozen=True):
    item_count: int = 3
    max_retries: int = 1
    concurrency: int = 2
    task_timeout_sec: int = 60
    duplicate_ids: bool = False

    @property
    def valid(self) -> bool:
        return (
            self.item_count >= 1
            and 1 <= self.concurrency <= 100
            and self.task_timeout_sec >= 1
            and self.max_retries >= 0
            and not (self.duplicate_ids and self.item_count >= 2)
        )

    def command(self) -> ev.CreateEvaluation:
        ids = [f"item-{n}" for n in range(self.item_count)]
        if self.duplicate_ids and len(ids) >= 2:
            ids[-1] = ids[0]
        return ev.CreateEvaluation(
            evaluation_id=EVALUATION_ID,
            org_id="org-1",
            workspace_id="ws-1",
            config=ev.EvaluationConfig(
                name="machine",
                max_retries=self.max_retries,
                concurrency=self.concurrency,
                task_timeout_sec=self.task_timeout_sec,
            ),
            items=tuple(ev.ItemSpec(item_id=i, task_name="t", task_ref="t@1") for i in ids),
        )


class Cancel(msgspec.Struct, frozen=True):
    pass


class Fail(msgspec.Struct, frozen=True):
    pass


class Retry(msgspec.Struct, frozen=True):
    pass


class ItemStep(msgspec.Struct, frozen=True):
    index: int
    kind: str  # a KINDS key, or "forward" / "forward_fail" for the next happy-path step


Step = Create | Cancel | Fail | Retry | ItemStep


def expected_status(
    closed_as: str | None, statuses: Sequence[str], claimed_since_open: bool
) -> str:
    """The documented status rule, written independently of `evaluation.status_of`."""
    if closed_as is not None:
        return closed_as
    if all(s in TERMINAL for s in statuses):
        return "completed" if all(s in VERDICTS for s in statuses) else "partial"
    return "running" if claimed_since_open else "queued"


class Snapshot(msgspec.Struct, frozen=True):
    closed_as: str | None
    statuses: dict[str, str]
    retry_counts: dict[str, int]
    claimed_since_open: bool

    @property
    def status(self) -> str:
        return expected_status(
            self.closed_as, list(self.statuses.values()), self.claimed_since_open
        )


class World:
    """Decides steps and evolves accepted events, checking each decision against the spec."""

    def __init__(self) -> None:
        self.state: ev.EvaluationState | None = None
        self.items: dict[str, it.ItemState] = {}
        self.claimed_since_open = False
        self.batches: list[list[ev.AnyEvent]] = []
        self.snapshots: list[Snapshot] = []
        self.stream_lengths: Counter[tuple[str, str]] = Counter()

    # ---- the spec's view of the current state ----

    @property
    def finished(self) -> bool:
        assert self.state is not None
        return self.state.closed_as is not None or all(
            s.status in TERMINAL for s in self.items.values()
        )

    def snapshot(self) -> Snapshot:
        assert self.state is not None
        return Snapshot(
            closed_as=self.state.closed_as,
            statuses={i: s.status for i, s in self.items.items()},
            retry_counts={i: s.retry_count for i, s in self.items.items()},
            claimed_since_open=self.claimed_since_open,
        )

    def refusal_expected(self, step: Step) -> type[DomainError] | None:
        """Which refusal the documentation demands for `step` now (None: must be accepted)."""
        if isinstance(step, Create):
            if self.state is not None:
                return IllegalTransition
            return None if step.valid else InvalidCommand
        if self.state is None:
            return IllegalTransition
        if isinstance(step, Cancel | Fail):
            return IllegalTransition if self.finished else None
        if isinstance(step, Retry):
            retryable = any(s.status in RETRYABLE for s in self.items.values())
            return None if self.finished and retryable else IllegalTransition
        item = self.items[self.item_id(step)]
        return None if self.kind_of(step) in LEGAL[item.status] else IllegalTransition

    def item_id(self, step: ItemStep) -> str:
        assert self.state is not None
        return self.state.item_ids[step.index % len(self.state.item_ids)]

    def kind_of(self, step: ItemStep) -> str:
        status = self.items[self.item_id(step)].status
        if step.kind in ("forward", "forward_fail"):
            kind = FORWARD_KIND.get(status, "claimed")
            return (
                "verdict_failed"
                if kind == "verdict_passed" and step.kind == "forward_fail"
                else kind
            )
        return step.kind

    # ---- deciding and applying ----

    def decide(self, step: Step) -> list[ev.AnyEvent]:
        if isinstance(step, ItemStep):
            if self.state is None:
                raise IllegalTransition("no evaluation, so no item")
            proposed = msgspec.structs.replace(
                KINDS[self.kind_of(step)](),
                item_id=self.item_id(step),
                evaluation_id=self.state.evaluation_id,
            )
            current = self.items[self.item_id(step)]
            if isinstance(proposed, it.ItemInfraFailed):
                proposed = msgspec.structs.replace(proposed, will_retry=it.retries_left(current))
            it.evolve(current, proposed)  # refuses what the machine does not allow
            return [proposed]
        command: ev.Command
        match step:
            case Create():
                command = step.command()
            case Cancel():
                command = ev.CancelEvaluation(reason="stop")
            case Fail():
                command = ev.FailEvaluation(error="provider down")
            case Retry():
                command = ev.RetryFailed()
        return ev.decide(self.state, self.items, command)

    def apply(self, events: Sequence[ev.AnyEvent]) -> None:
        for event in events:
            self.stream_lengths[ev.stream_of(event)] += 1
            if isinstance(event, it.ITEM_EVENTS):
                self.items[event.item_id] = it.evolve(self.items.get(event.item_id), event)
                if isinstance(event, it.ItemClaimed):
                    self.claimed_since_open = True
            else:
                self.state = ev.evolve(self.state, event)
                if isinstance(event, ev.EvaluationCreated | ev.EvaluationReopened):
                    self.claimed_since_open = False
        self.batches.append(list(events))
        self.snapshots.append(self.snapshot())

    def run(self, step: Step) -> list[ev.AnyEvent] | DomainError:
        """Decide and apply `step`, asserting the documented outcome; returns events or refusal."""
        expected_refusal = self.refusal_expected(step)
        before = (self.state, dict(self.items), self.claimed_since_open, len(self.batches))
        items_seen_by_decide = dict(self.items)
        try:
            events = self.decide(step)
        except DomainError as refusal:
            assert expected_refusal is not None, f"{step} refused: {refusal}"
            assert isinstance(refusal, expected_refusal), f"{step} refused with {refusal!r}"
            assert (self.state, self.items, self.claimed_since_open, len(self.batches)) == before
            return refusal
        assert expected_refusal is None, f"{step} accepted: {events}"
        assert self.items == items_seen_by_decide, "decide mutated the item states"
        assert events, f"{step} was accepted but produced no events"
        for event in events:
            assert event.evaluation_id == EVALUATION_ID
        self.apply(events)
        return events


# ---- strategies ----


def finish_item(index: int, *, passed: bool = True) -> list[Step]:
    forward: list[Step] = [ItemStep(index, "forward")] * 5
    return [*forward, ItemStep(index, "forward" if passed else "forward_fail")]


creates = st.builds(
    Create,
    item_count=st.integers(0, 4),
    max_retries=st.sampled_from([-1, 0, 1, 2]),
    concurrency=st.sampled_from([0, 1, 5, 100, 101]),
    task_timeout_sec=st.sampled_from([0, 1, 60]),
    duplicate_ids=st.booleans(),
)
valid_creates = st.builds(Create, item_count=st.integers(1, 4), max_retries=st.integers(0, 2))
item_steps = st.builds(
    ItemStep,
    index=st.integers(0, 7),
    kind=st.sampled_from(
        ["forward"] * 6 + ["forward_fail"] + ["infra_failed_will_retry"] * 4 + ITEM_KINDS
    ),
)
finishes = st.builds(
    lambda index, passed: finish_item(index, passed=passed), st.integers(0, 7), st.booleans()
)
steps = st.one_of(
    item_steps.map(lambda step: [step]),
    item_steps.map(lambda step: [step]),
    finishes,
    st.sampled_from([Cancel(), Fail(), Retry(), Retry()]).map(lambda step: [step]),
    creates.map(lambda step: [step]),
)
# A history that starts with a valid create, so most examples exercise a live evaluation.
histories = st.tuples(valid_creates, st.lists(steps, max_size=25)).map(
    lambda pair: [pair[0], *(step for group in pair[1] for step in group)]
)


def check_invariants(world: World) -> None:
    state = world.state
    assert state is not None
    assert set(world.items) == set(state.item_ids)
    assert len(state.item_ids) == len(set(state.item_ids))
    assert state.version == world.stream_lengths[("evaluation", state.evaluation_id)]
    for item_id, item in world.items.items():
        assert item.status in STATUSES
        assert item.evaluation_id == state.evaluation_id
        assert 0 <= item.retry_count <= item.max_retries == state.config.max_retries
        assert item.version == world.stream_lengths[("item", item_id)]
    counts = ev.item_counts(world.items)
    assert set(counts) == set(STATUSES)
    assert sum(counts.values()) == len(state.item_ids)
    assert counts == {s: sum(i.status == s for i in world.items.values()) for s in STATUSES}
    assert ev.is_terminal(state, world.items) == world.finished
    assert ev.status_of(state.closed_as, counts, world.claimed_since_open) == expected_status(
        state.closed_as, [i.status for i in world.items.values()], world.claimed_since_open
    )


@settings(max_examples=150, deadline=None)
@given(history=histories)
def test_random_command_sequences_refuse_as_documented_and_keep_invariants(
    history: list[Step],
) -> None:
    world = World()
    for step in history:
        before = world.snapshot() if world.state is not None else None
        outcome = world.run(step)
        if isinstance(outcome, DomainError):
            continue
        check_invariants(world)
        after = world.snapshot()
        if isinstance(step, Cancel | Fail):
            assert before is not None
            assert after.closed_as == ("cancelled" if isinstance(step, Cancel) else "failed")
            for item_id, status in before.statuses.items():
                was_active = status not in TERMINAL
                assert after.statuses[item_id] == ("cancelled" if was_active else status)
            assert after.status == after.closed_as
        elif isinstance(step, Retry):
            assert before is not None
            assert after.closed_as is None
            for item_id, status in before.statuses.items():
                assert after.statuses[item_id] == ("queued" if status in RETRYABLE else status)
            assert after.status == "queued"
        elif isinstance(step, ItemStep):
            assert before is not None
            changed = {i for i in after.statuses if after.statuses[i] != before.statuses[i]}
            changed |= {
                i for i in after.retry_counts if after.retry_counts[i] != before.retry_counts[i]
            }
            assert changed <= {world.item_id(step)}


@settings(max_examples=100, deadline=None)
@given(create=creates)
def test_create_is_accepted_exactly_when_the_command_is_well_formed(create: Create) -> None:
    world = World()
    outcome = world.run(create)
    if not create.valid:
        assert isinstance(outcome, InvalidCommand)
        return
    assert isinstance(outcome, list)
    created, *queued = outcome
    assert isinstance(created, ev.EvaluationCreated)
    assert created.item_ids == tuple(f"item-{n}" for n in range(create.item_count))
    assert [type(e) for e in queued] == [it.ItemQueued] * create.item_count
    assert [e.position for e in queued if isinstance(e, it.ItemQueued)] == list(
        range(1, create.item_count + 1)
    )
    assert all(s.max_retries == create.max_retries for s in world.items.values())
    assert world.snapshot().status == "queued"
    assert isinstance(world.run(Create()), IllegalTransition)


# ---- the documented refusals, one by one ----


def world_with(*steps_: Step, create: Create | None = None) -> World:
    world = World()
    for step in [create or Create(item_count=2, max_retries=0), *steps_]:
        outcome = world.run(step)
        assert not isinstance(outcome, DomainError), (step, outcome)
    return world


def test_commands_on_an_evaluation_that_does_not_exist_are_refused() -> None:
    for command in (ev.CancelEvaluation(), ev.FailEvaluation(error="x"), ev.RetryFailed()):
        with pytest.raises(IllegalTransition):
            ev.decide(None, {}, command)


@pytest.mark.parametrize(
    ("name", "history"),
    [
        ("completed", [*finish_item(0), *finish_item(1)]),
        ("partial", [*finish_item(0), ItemStep(1, "errored")]),
        ("cancelled", [Cancel()]),
        ("failed", [Fail()]),
    ],
)
@pytest.mark.parametrize("command", [Cancel(), Fail()], ids=["cancel", "fail"])
def test_cancel_and_fail_of_a_finished_evaluation_are_refused(
    name: str, history: list[Step], command: Step
) -> None:
    world = world_with(*history)
    assert world.snapshot().status == name
    with pytest.raises(IllegalTransition):
        world.decide(command)


@pytest.mark.parametrize(
    ("name", "history"),
    [
        ("queued", []),
        ("running", [ItemStep(0, "forward")]),
        ("running", [*finish_item(0, passed=False)]),
        ("completed", [*finish_item(0), *finish_item(1)]),
        ("partial", [ItemStep(0, "errored"), ItemStep(1, "errored")]),
    ],
)
def test_retry_failed_of_an_unfinished_or_nothing_to_retry_evaluation_is_refused(
    name: str, history: list[Step]
) -> None:
    world = world_with(*history)
    assert world.snapshot().status == name
    with pytest.raises(IllegalTransition):
        world.decide(Retry())


def test_retry_failed_reopens_a_finished_evaluation_requeueing_only_retryable_items() -> None:
    world = world_with(
        *finish_item(0),
        ItemStep(1, "errored"),
        ItemStep(2, "timed_out"),
        *finish_item(3, passed=False),
        create=Create(item_count=5, max_retries=0),
    )
    # item-4 is still queued: cancel ends it as cancelled.
    world.run(Cancel())
    events = world.run(Retry())
    assert isinstance(events, list)
    reopened, *requeued = events
    assert reopened == ev.EvaluationReopened(
        evaluation_id=EVALUATION_ID, item_ids=("item-2", "item-3", "item-4")
    )
    assert requeued == [
        it.ItemRequeued(item_id=i, evaluation_id=EVALUATION_ID) for i in reopened.item_ids
    ]
    snapshot = world.snapshot()
    assert snapshot.statuses == {
        "item-0": "passed",
        "item-1": "errored",
        "item-2": "queued",
        "item-3": "queued",
        "item-4": "queued",
    }
    assert snapshot.status == "queued"
    assert ev.status_of(None, ev.item_counts(world.items), False) == "queued"


def test_cancel_cancels_only_the_active_items_with_the_reason() -> None:
    world = world_with(*finish_item(0), ItemStep(1, "forward"), create=Create(item_count=3))
    assert world.state is not None
    events = ev.decide(world.state, world.items, ev.CancelEvaluation(reason="budget"))
    assert events == [
        ev.EvaluationCancelled(evaluation_id=EVALUATION_ID, reason="budget"),
        it.ItemCancelled(item_id="item-1", evaluation_id=EVALUATION_ID, reason="budget"),
        it.ItemCancelled(item_id="item-2", evaluation_id=EVALUATION_ID, reason="budget"),
    ]


def test_events_are_routed_to_the_evaluation_stream_or_their_item_stream() -> None:
    world = world_with()
    routes: dict[Any, tuple[str, str]] = {}
    for event in world.batches[0]:
        routes[type(event).__name__ + getattr(event, "item_id", "")] = ev.stream_of(event)
    assert routes == {
        "EvaluationCreated": ("evaluation", EVALUATION_ID),
        "ItemQueueditem-0": ("item", "item-0"),
        "ItemQueueditem-1": ("item", "item-1"),
    }


@pytest.mark.parametrize(
    ("statuses", "closed_as", "claimed", "expected"),
    [
        (["queued", "queued"], None, False, "queued"),
        (["queued", "timed_out"], None, False, "queued"),
        (["claiming", "queued"], None, True, "running"),
        (["queued", "queued"], None, True, "running"),  # claimed, then infra retry back to queued
        (["passed", "failed"], None, True, "completed"),
        (["passed", "errored"], None, True, "partial"),
        (["infra_error", "passed"], None, True, "partial"),
        (["cancelled", "passed"], None, True, "partial"),
        (["timed_out", "timed_out"], None, False, "partial"),
        (["cancelled", "passed"], "cancelled", True, "cancelled"),
        (["cancelled", "cancelled"], "failed", False, "failed"),
    ],
)
def test_status_of_follows_the_documented_rule(
    statuses: list[str], closed_as: Any, claimed: bool, expected: str
) -> None:
    assert expected_status(closed_as, statuses, claimed) == expected
    assert ev.status_of(closed_as, ev.item_counts(statuses), claimed) == expected  # type: ignore[arg-type]


def test_item_counts_reports_all_twelve_statuses_from_a_mapping_or_a_list() -> None:
    counts = ev.item_counts(["queued", "passed", "passed"])
    assert counts == {s: {"queued": 1, "passed": 2}.get(s, 0) for s in STATUSES}
    world = world_with(*finish_item(0))
    assert ev.item_counts(world.items) == {
        s: {"queued": 1, "passed": 1}.get(s, 0) for s in STATUSES
    }
