"""The item state machine, checked against the machine documented in `domain.item`.

The expected table below is written out by hand from the module docstring:

    queued -> claiming -> provisioning -> agent_running -> agent_finished -> verifying
           -> passed | failed
    any non-terminal state may also end in timed_out, cancelled, infra_error or errored;
    an infra failure with retries left goes back to queued (counted in retry_count);
    retry-failed requeues failed, timed_out, cancelled and infra_error items;
    a lease is renewed only while in flight, and a sandbox is kept only once the item ended
    (both leave the status as it is).

It is deliberately not derived from the constants of the code under test.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from domain import item as it
from domain.errors import IllegalTransition

ITEM_ID = "item-1"
EVALUATION_ID = "evaluation-1"

STATUSES = [
    "queued",
    "claiming",
    "provisioning",
    "agent_running",
    "agent_finished",
    "verifying",
    "passed",
    "failed",
    "timed_out",
    "cancelled",
    "infra_error",
    "errored",
]

# Every kind of item event, as a factory of the proposed event.
KINDS: dict[str, Callable[[], it.AnyItemEvent]] = {
    "queued": lambda: it.ItemQueued(
        item_id=ITEM_ID,
        evaluation_id=EVALUATION_ID,
        position=1,
        task_name="t",
        task_ref="t@1",
        model=None,
        max_retries=2,
    ),
    "claimed": lambda: it.ItemClaimed(
        item_id=ITEM_ID,
        evaluation_id=EVALUATION_ID,
        worker_id="w1",
        lease_expires_at="2026-01-01T00:01Z",
    ),
    "provisioning": lambda: it.ItemProvisioning(
        item_id=ITEM_ID, evaluation_id=EVALUATION_ID, sandbox_id="sbx"
    ),
    "agent_started": lambda: it.ItemAgentStarted(
        item_id=ITEM_ID, evaluation_id=EVALUATION_ID, session_id="s"
    ),
    "agent_finished": lambda: it.ItemAgentFinished(
        item_id=ITEM_ID, evaluation_id=EVALUATION_ID, agent_result={"ok": True}
    ),
    "verifying": lambda: it.ItemVerifying(item_id=ITEM_ID, evaluation_id=EVALUATION_ID),
    "verdict_passed": lambda: it.ItemVerdict(
        item_id=ITEM_ID, evaluation_id=EVALUATION_ID, passed=True
    ),
    "verdict_failed": lambda: it.ItemVerdict(
        item_id=ITEM_ID, evaluation_id=EVALUATION_ID, passed=False
    ),
    "timed_out": lambda: it.ItemTimedOut(
        item_id=ITEM_ID, evaluation_id=EVALUATION_ID, error="deadline"
    ),
    "cancelled": lambda: it.ItemCancelled(item_id=ITEM_ID, evaluation_id=EVALUATION_ID),
    "infra_failed_will_retry": lambda: it.ItemInfraFailed(
        item_id=ITEM_ID, evaluation_id=EVALUATION_ID, error="sandbox", will_retry=True
    ),
    "infra_failed_final": lambda: it.ItemInfraFailed(
        item_id=ITEM_ID, evaluation_id=EVALUATION_ID, error="sandbox", will_retry=False
    ),
    "errored": lambda: it.ItemErrored(item_id=ITEM_ID, evaluation_id=EVALUATION_ID, error="bug"),
    "requeued": lambda: it.ItemRequeued(item_id=ITEM_ID, evaluation_id=EVALUATION_ID),
    "lease_renewed": lambda: it.ItemLeaseRenewed(
        item_id=ITEM_ID, evaluation_id=EVALUATION_ID, worker_id="w1", lease_expires_at="later"
    ),
    "sandbox_kept": lambda: it.ItemSandboxKept(
        item_id=ITEM_ID, evaluation_id=EVALUATION_ID, location="/tmp/sandbox"
    ),
    "sandbox_discarded": lambda: it.ItemSandboxDiscarded(
        item_id=ITEM_ID, evaluation_id=EVALUATION_ID, location="/tmp/sandbox"
    ),
}

_ENDINGS = {
    "timed_out": "timed_out",
    "cancelled": "cancelled",
    "infra_failed_will_retry": "queued",
    "infra_failed_final": "infra_error",
    "errored": "errored",
}
_REQUEUE = {"requeued": "queued"}

# status -> {event kind -> status after}; every pair not listed must be refused.
LEGAL: dict[str, dict[str, str]] = {
    "queued": {"claimed": "claiming", **_ENDINGS},
    "claiming": {"provisioning": "provisioning", "lease_renewed": "claiming", **_ENDINGS},
    "provisioning": {
        "agent_started": "agent_running",
        "lease_renewed": "provisioning",
        **_ENDINGS,
    },
    "agent_running": {
        "agent_finished": "agent_finished",
        "lease_renewed": "agent_running",
        **_ENDINGS,
    },
    "agent_finished": {"verifying": "verifying", "lease_renewed": "agent_finished", **_ENDINGS},
    "verifying": {
        "verdict_passed": "passed",
        "verdict_failed": "failed",
        "lease_renewed": "verifying",
        **_ENDINGS,
    },
    "passed": {"sandbox_kept": "passed", "sandbox_discarded": "passed"},
    "failed": {"sandbox_kept": "failed", "sandbox_discarded": "failed", **_REQUEUE},
    "timed_out": {"sandbox_kept": "timed_out", "sandbox_discarded": "timed_out", **_REQUEUE},
    "cancelled": {"sandbox_kept": "cancelled", "sandbox_discarded": "cancelled", **_REQUEUE},
    "infra_error": {"sandbox_kept": "infra_error", "sandbox_discarded": "infra_error", **_REQUEUE},
    "errored": {"sandbox_kept": "errored", "sandbox_discarded": "errored"},
}

TABLE = [(status, kind) for status in STATUSES for kind in KINDS]


def state(status: str, *, retry_count: int = 0, max_retries: int = 0) -> it.ItemState:
    return it.ItemState(
        item_id=ITEM_ID,
        evaluation_id=EVALUATION_ID,
        status=status,  # type: ignore[arg-type]
        retry_count=retry_count,
        max_retries=max_retries,
        version=5,
    )


def test_the_table_covers_the_twelve_documented_statuses_and_every_event_type() -> None:
    assert len(STATUSES) == 12
    assert set(STATUSES) == set(it.ITEM_STATUSES)
    assert set(LEGAL) == set(STATUSES)
    assert {type(make()) for make in KINDS.values()} == set(it.ITEM_EVENTS)
    assert len(TABLE) == 12 * 17


@pytest.mark.parametrize(("status", "kind"), TABLE, ids=[f"{s}-{k}" for s, k in TABLE])
def test_status_after_accepts_exactly_the_documented_transitions(status: str, kind: str) -> None:
    event = KINDS[kind]()
    expected = LEGAL[status].get(kind)
    if expected is None:
        with pytest.raises(IllegalTransition):
            it.status_after(status, event)  # type: ignore[arg-type]
    else:
        assert it.status_after(status, event) == expected  # type: ignore[arg-type]


@pytest.mark.parametrize(("status", "kind"), TABLE, ids=[f"{s}-{k}" for s, k in TABLE])
def test_decide_accepts_documented_transitions_and_refuses_the_rest(status: str, kind: str) -> None:
    # Retries left exactly when the proposed infra failure says it will retry, so decide's own
    # retry decision agrees with the kind under test.
    retries_left = kind == "infra_failed_will_retry"
    current = state(status, retry_count=0, max_retries=1 if retries_left else 0)
    event = KINDS[kind]()
    expected = LEGAL[status].get(kind)
    if expected is None:
        with pytest.raises(IllegalTransition):
            it.decide(current, event)
        return
    decided = it.decide(current, event)
    assert decided == [event]
    after = it.evolve(current, decided[0])
    assert after.status == expected
    assert after.version == current.version + 1
    assert (after.item_id, after.evaluation_id) == (ITEM_ID, EVALUATION_ID)


ILLEGAL = [(s, k) for s, k in TABLE if k not in LEGAL[s]]


@pytest.mark.parametrize(("status", "kind"), ILLEGAL, ids=[f"{s}-{k}" for s, k in ILLEGAL])
def test_evolve_refuses_undocumented_transitions(status: str, kind: str) -> None:
    # Includes a second item.queued for an item that already exists (it must not reset it).
    with pytest.raises(IllegalTransition):
        it.evolve(state(status, retry_count=1, max_retries=2), KINDS[kind]())


def test_evolve_refuses_any_first_event_other_than_item_queued() -> None:
    for kind, make in KINDS.items():
        if kind == "queued":
            first = it.evolve(None, make())
            assert first == it.ItemState(
                item_id=ITEM_ID,
                evaluation_id=EVALUATION_ID,
                status="queued",
                max_retries=2,
                version=1,
            )
        else:
            with pytest.raises(IllegalTransition):
                it.evolve(None, make())


ACTIVE_STATUSES = [
    "queued",
    "claiming",
    "provisioning",
    "agent_running",
    "agent_finished",
    "verifying",
]


@settings(max_examples=200, deadline=None)
@given(
    status=st.sampled_from(ACTIVE_STATUSES),
    max_retries=st.integers(0, 5),
    data=st.data(),
    claimed_will_retry=st.booleans(),
)
def test_infra_failure_requeues_while_retries_are_left_and_ends_in_infra_error_after(
    status: str, max_retries: int, data: st.DataObject, claimed_will_retry: bool
) -> None:
    retry_count = data.draw(st.integers(0, max_retries), label="retry_count")
    current = state(status, retry_count=retry_count, max_retries=max_retries)
    # Whatever the proposer claims, decide chooses will_retry from the retries left.
    proposed = it.ItemInfraFailed(
        item_id=ITEM_ID,
        evaluation_id=EVALUATION_ID,
        error="sandbox died",
        will_retry=claimed_will_retry,
    )
    (decided,) = it.decide(current, proposed)
    assert isinstance(decided, it.ItemInfraFailed)
    after = it.evolve(current, decided)
    if retry_count < max_retries:
        assert decided.will_retry
        assert after.status == "queued"
        assert after.retry_count == retry_count + 1
    else:
        assert not decided.will_retry
        assert after.status == "infra_error"
        assert after.retry_count == retry_count
    assert after.max_retries == max_retries
    assert decided.error == "sandbox died"


@pytest.mark.parametrize("max_retries", [0, 1, 3])
def test_an_item_failing_infra_every_attempt_is_retried_max_retries_times_then_ends(
    max_retries: int,
) -> None:
    queued = it.ItemQueued(
        item_id=ITEM_ID,
        evaluation_id=EVALUATION_ID,
        position=1,
        task_name="t",
        task_ref="t@1",
        model=None,
        max_retries=max_retries,
    )
    current = it.evolve(None, queued)
    attempts = 0
    while current.status == "queued":
        attempts += 1
        assert attempts <= max_retries + 1
        for event in it.decide(current, KINDS["claimed"]()):
            current = it.evolve(current, event)
        for event in it.decide(
            current,
            it.ItemInfraFailed(
                item_id=ITEM_ID, evaluation_id=EVALUATION_ID, error="x", will_retry=False
            ),
        ):
            current = it.evolve(current, event)
    assert attempts == max_retries + 1
    assert current.status == "infra_error"
    assert current.retry_count == max_retries


# ---- random walks through decide ----

PROPOSALS = [k for k in KINDS if k not in ("queued", "infra_failed_final")]


@settings(max_examples=300, deadline=None)
@given(
    max_retries=st.integers(0, 3),
    proposals=st.lists(st.sampled_from(PROPOSALS), max_size=40),
)
def test_random_proposals_are_either_refused_without_effect_or_applied_within_invariants(
    max_retries: int, proposals: list[str]
) -> None:
    queued = it.ItemQueued(
        item_id=ITEM_ID,
        evaluation_id=EVALUATION_ID,
        position=1,
        task_name="t",
        task_ref="t@1",
        model=None,
        max_retries=max_retries,
    )
    history: list[it.AnyItemEvent] = [queued]
    current = it.evolve(None, queued)
    for kind in proposals:
        before = current
        expected = LEGAL[current.status].get(kind)
        if kind == "infra_failed_will_retry" and expected is not None:
            expected = "queued" if current.retry_count < max_retries else "infra_error"
        try:
            decided = it.decide(current, KINDS[kind]())
        except IllegalTransition:
            assert expected is None, f"{kind} refused in {current.status}"
            assert current == before
            continue
        assert expected is not None, f"{kind} accepted in {current.status}"
        for event in decided:
            current = it.evolve(current, event)
            history.append(event)
        assert current.status == expected
        assert current.status in STATUSES
        assert 0 <= current.retry_count <= max_retries
        assert current.version == len(history)
        assert it.replay(history) == current
