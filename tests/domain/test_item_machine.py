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
from datetime import UTC, datetime, timedelta
from typing import get_args

import msgspec
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
                task_name="t",
                task_ref="t@1",
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
IN_FLIGHT_STATUSES = ACTIVE_STATUSES[1:]
ENDED_STATUSES = ["passed", "failed", "timed_out", "cancelled", "infra_error", "errored"]
NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)

# ---- commands: what a worker asks of an item, written out from the documentation ----

# Every worker command, as a factory.
COMMANDS: dict[str, Callable[[], it.AnyItemCommand]] = {
    "claim": lambda: it.Claim(worker_id="w1", lease_expires_at="2026-01-01T12:01:00Z"),
    "start_agent": lambda: it.StartAgent(session_id="s", isolation={"level": "strict"}),
    "finish_agent": lambda: it.FinishAgent(agent_result={"steps": 2}),
    "start_verifying": lambda: it.StartVerifying(),
    "verdict_passed": lambda: it.RecordVerdict(passed=True),
    "verdict_failed": lambda: it.RecordVerdict(passed=False),
    "time_out": lambda: it.TimeOut(error="deadline"),
    "errored": lambda: it.EndErrored(error="checker broke"),
    "infra_failure": lambda: it.ReportInfraFailure(error="sandbox", at=NOW, backoff_seconds=2),
    "expire_lease": lambda: it.ExpireLease(at=NOW),
    "hand_back": lambda: it.HandBack(at=NOW),
    "keep_sandbox": lambda: it.KeepSandbox(location="/tmp/sandbox"),
    "discard_sandbox": lambda: it.DiscardSandbox(location="/tmp/sandbox"),
}

# status -> {command -> (event types, status after)} with no retries left; the rest is refused.
_ENDING_COMMANDS = {
    "time_out": (["item.timed_out"], "timed_out"),
    "errored": (["item.errored"], "errored"),
    "infra_failure": (["item.infra_failed"], "infra_error"),
}
_SANDBOX_COMMANDS = {
    "keep_sandbox": (["item.sandbox_kept"], None),
    "discard_sandbox": (["item.sandbox_discarded"], None),
}
_LEASE = {
    "expire_lease": (["item.infra_failed"], "infra_error"),
    "hand_back": (["item.infra_failed"], "infra_error"),
}
DECIDES: dict[str, dict[str, tuple[list[str], str | None]]] = {
    "queued": {
        "claim": (["item.claimed", "item.provisioning"], "provisioning"),
        **_ENDING_COMMANDS,
    },
    "claiming": {**_ENDING_COMMANDS, **_LEASE},
    "provisioning": {
        "start_agent": (["item.agent_started"], "agent_running"),
        **_ENDING_COMMANDS,
        **_LEASE,
    },
    "agent_running": {
        "finish_agent": (["item.agent_finished"], "agent_finished"),
        **_ENDING_COMMANDS,
        **_LEASE,
    },
    "agent_finished": {
        "start_verifying": (["item.verifying"], "verifying"),
        **_ENDING_COMMANDS,
        **_LEASE,
    },
    "verifying": {
        "verdict_passed": (["item.verdict"], "passed"),
        "verdict_failed": (["item.verdict"], "failed"),
        **_ENDING_COMMANDS,
        **_LEASE,
    },
    **{status: dict(_SANDBOX_COMMANDS) for status in ENDED_STATUSES},
}
COMMAND_TABLE = [(status, name) for status in STATUSES for name in COMMANDS]


def test_the_command_table_covers_every_status_and_every_command() -> None:
    assert set(DECIDES) == set(STATUSES)
    assert {type(make()) for make in COMMANDS.values()} == set(get_args(it.AnyItemCommand))


@pytest.mark.parametrize(
    ("status", "name"), COMMAND_TABLE, ids=[f"{s}-{n}" for s, n in COMMAND_TABLE]
)
def test_decide_turns_each_command_into_its_documented_events_and_refuses_the_rest(
    status: str, name: str
) -> None:
    current = state(status)
    expected = DECIDES[status].get(name)
    if expected is None:
        with pytest.raises(IllegalTransition):
            it.decide(current, COMMANDS[name]())
        return
    types, status_after = expected
    decided = it.decide(current, COMMANDS[name]())
    assert [it_type(e) for e in decided] == types
    after = it.replay_from(current, decided)
    assert after.status == (status_after or status)
    assert after.version == current.version + len(decided)
    assert all((e.item_id, e.evaluation_id) == (ITEM_ID, EVALUATION_ID) for e in decided)


def it_type(event: it.AnyItemEvent) -> str:
    return str(type(event).__struct_config__.tag)


def test_a_claim_records_the_worker_and_its_lease_and_starts_provisioning_in_one_decision() -> None:
    claimed, provisioning = it.decide(state("queued"), COMMANDS["claim"]())
    assert isinstance(claimed, it.ItemClaimed)
    assert (claimed.worker_id, claimed.lease_expires_at) == ("w1", "2026-01-01T12:01:00Z")
    assert isinstance(provisioning, it.ItemProvisioning)
    assert it.replay_from(state("queued"), [claimed, provisioning]).worker_id == "w1"


@settings(max_examples=200, deadline=None)
@given(
    status=st.sampled_from(ACTIVE_STATUSES),
    max_retries=st.integers(0, 5),
    data=st.data(),
    backoff=st.floats(0.5, 30),
)
def test_infra_failure_requeues_after_a_doubling_backoff_while_retries_are_left_then_ends(
    status: str, max_retries: int, data: st.DataObject, backoff: float
) -> None:
    retry_count = data.draw(st.integers(0, max_retries), label="retry_count")
    current = state(status, retry_count=retry_count, max_retries=max_retries)
    (decided,) = it.decide(
        current, it.ReportInfraFailure(error="sandbox died", at=NOW, backoff_seconds=backoff)
    )
    assert isinstance(decided, it.ItemInfraFailed)
    after = it.evolve(current, decided)
    if retry_count < max_retries:
        assert decided.will_retry
        assert after.status == "queued"
        assert after.retry_count == retry_count + 1
        waited = datetime.fromisoformat(decided.retry_not_before or "") - NOW
        assert waited == timedelta(seconds=backoff * 2**retry_count)
        assert after.retry_not_before == decided.retry_not_before
    else:
        assert not decided.will_retry
        assert decided.retry_not_before is None
        assert after.status == "infra_error"
        assert after.retry_count == retry_count
    assert after.max_retries == max_retries
    assert decided.error == "sandbox died"


@pytest.mark.parametrize("status", IN_FLIGHT_STATUSES)
def test_an_expired_lease_names_its_worker_and_lets_the_retry_start_at_once(status: str) -> None:
    current = it.replay_from(
        state("queued", max_retries=1),
        it.decide(state("queued", max_retries=1), COMMANDS["claim"]()),
    )
    current = msgspec.structs.replace(current, status=status)
    (decided,) = it.decide(current, it.ExpireLease(at=NOW))
    assert isinstance(decided, it.ItemInfraFailed)
    assert decided.error == "worker w1 lost its lease"
    assert decided.will_retry
    assert decided.retry_not_before is not None
    assert datetime.fromisoformat(decided.retry_not_before) == NOW


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
        _events, current = it.execute(current, [COMMANDS["claim"](), COMMANDS["infra_failure"]()])
    assert attempts == max_retries + 1
    assert current.status == "infra_error"
    assert current.retry_count == max_retries


@pytest.mark.parametrize(
    ("policy", "status", "kept"),
    [
        ("on_success", "failed", True),
        ("on_success", "timed_out", True),
        ("on_success", "errored", True),
        ("on_success", "infra_error", True),
        ("on_success", "passed", False),
        ("on_success", "queued", False),  # going back for a retry, in a fresh sandbox
        ("always", "failed", False),
        ("always", "passed", False),
    ],
)
def test_keep_or_destroy_keeps_only_the_sandbox_of_an_item_that_ended_without_a_pass(
    policy: str, status: str, kept: bool
) -> None:
    assert it.keeps_sandbox(policy, status) is kept  # type: ignore[arg-type]


# ---- random walks through decide ----


@settings(max_examples=300, deadline=None)
@given(
    max_retries=st.integers(0, 3),
    proposals=st.lists(st.sampled_from(list(COMMANDS)), max_size=40),
)
def test_random_commands_are_either_refused_without_effect_or_applied_within_invariants(
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
    for name in proposals:
        before = current
        expected = DECIDES[current.status].get(name)
        retries_left = current.retry_count < max_retries
        retrying = name in ("infra_failure", "expire_lease", "hand_back")
        if retrying and expected is not None and retries_left:
            expected = (expected[0], "queued")
        try:
            decided, current = it.execute(current, [COMMANDS[name]()])
        except IllegalTransition:
            assert expected is None, f"{name} refused in {current.status}"
            assert current == before
            continue
        assert expected is not None, f"{name} accepted in {before.status}"
        history += decided
        assert current.status == (expected[1] or before.status)
        assert 0 <= current.retry_count <= max_retries
        assert current.version == len(history)
        assert (current.worker_id is not None) == (current.status in IN_FLIGHT_STATUSES)
        assert it.replay(history) == current
