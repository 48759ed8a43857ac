"""The item state machine: one evaluation item, from queued to a verdict.

    queued -> claiming -> provisioning -> agent_running -> agent_finished -> verifying
           -> passed | failed

Any non-terminal state may also end in timed_out, cancelled, infra_error or errored. An infra
failure with retries left goes back to queued instead (counted in retry_count), and
`retry-failed` requeues failed, timed_out, cancelled and infra_error items.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, Literal, get_args

import msgspec

from domain.errors import IllegalTransition
from domain.timestamps import iso

ItemStatus = Literal[
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
ITEM_STATUSES: tuple[ItemStatus, ...] = get_args(ItemStatus)
IN_FLIGHT: frozenset[ItemStatus] = frozenset(
    {"claiming", "provisioning", "agent_running", "agent_finished", "verifying"}
)
ACTIVE: frozenset[ItemStatus] = IN_FLIGHT | {"queued"}
TERMINAL: frozenset[ItemStatus] = frozenset(ITEM_STATUSES) - ACTIVE
VERDICTS: frozenset[ItemStatus] = frozenset({"passed", "failed"})
RETRYABLE: frozenset[ItemStatus] = frozenset({"failed", "timed_out", "cancelled", "infra_error"})

# The happy path: which state each forward step requires.
FORWARD: dict[ItemStatus, ItemStatus] = {
    "claiming": "queued",
    "provisioning": "claiming",
    "agent_running": "provisioning",
    "agent_finished": "agent_running",
    "verifying": "agent_finished",
}

Variables = dict[str, str | int | float | bool | None]
# Which setting bounded an item: the evaluation's task_timeout_sec, the task's own
# timeout_sec, or the service default.
TimeoutSource = Literal["evaluation", "task", "default"]


# ---- events (each carries its evaluation so history can be gathered per evaluation) ----


class ItemEvent(msgspec.Struct, frozen=True, kw_only=True, tag_field="type"):
    item_id: str
    evaluation_id: str


class ItemQueued(ItemEvent, frozen=True, tag="item.queued"):
    position: int
    task_name: str
    task_ref: str
    model: str | None
    variables: Variables = {}
    max_retries: int = 0
    # sha256 of the task bundle's layer, fixed at create: every attempt runs these bytes.
    bundle_digest: str | None = None
    # None in items queued before timeouts were resolved per item: the evaluation's
    # task_timeout_sec applies to them.
    timeout_sec: int | None = None
    timeout_source: TimeoutSource | None = None


class ItemClaimed(ItemEvent, frozen=True, tag="item.claimed"):
    worker_id: str
    lease_expires_at: str


class ItemProvisioning(ItemEvent, frozen=True, tag="item.provisioning"):
    sandbox_id: str | None = None


class ItemAgentStarted(ItemEvent, frozen=True, tag="item.agent_started"):
    session_id: str | None = None
    # What the agent's sandbox really runs under (`level`: strict | weak, `provider`, and each
    # enforced feature): recorded with the item so a verdict is never taken for a stronger one.
    isolation: dict[str, Any] = {}


class ItemAgentFinished(ItemEvent, frozen=True, tag="item.agent_finished"):
    agent_result: dict[str, Any] = {}


class ItemVerifying(ItemEvent, frozen=True, tag="item.verifying"):
    pass


class ItemVerdict(ItemEvent, frozen=True, tag="item.verdict"):
    passed: bool
    result: dict[str, Any] = {}


class ItemTimedOut(ItemEvent, frozen=True, tag="item.timed_out"):
    error: str


class ItemCancelled(ItemEvent, frozen=True, tag="item.cancelled"):
    reason: str = "evaluation cancelled"


class ItemInfraFailed(ItemEvent, frozen=True, tag="item.infra_failed"):
    """A sandbox, provider or worker failure; `will_retry` says whether it goes back to queued."""

    error: str
    will_retry: bool
    retry_not_before: str | None = None


class ItemErrored(ItemEvent, frozen=True, tag="item.errored"):
    error: str


class ItemRequeued(ItemEvent, frozen=True, tag="item.requeued"):
    reason: str = "retry-failed"


class ItemLeaseRenewed(ItemEvent, frozen=True, tag="item.lease_renewed"):
    """The worker still held the item; no state change. No longer appended: a lease is renewed
    in the lease table, outside the log (it is bookkeeping, not history). Kept so that logs
    written before that still fold."""

    worker_id: str
    lease_expires_at: str


class ItemSandboxKept(ItemEvent, frozen=True, tag="item.sandbox_kept"):
    """cleanup_policy on_success kept the sandbox of an item that did not pass."""

    location: str


class ItemSandboxDiscarded(ItemEvent, frozen=True, tag="item.sandbox_discarded"):
    """The kept sandbox of an ended item was removed (`DELETE .../sandboxes/{id}`)."""

    location: str


ITEM_EVENTS = (
    ItemQueued,
    ItemClaimed,
    ItemProvisioning,
    ItemAgentStarted,
    ItemAgentFinished,
    ItemVerifying,
    ItemVerdict,
    ItemTimedOut,
    ItemCancelled,
    ItemInfraFailed,
    ItemErrored,
    ItemRequeued,
    ItemLeaseRenewed,
    ItemSandboxKept,
    ItemSandboxDiscarded,
)
AnyItemEvent = (
    ItemQueued
    | ItemClaimed
    | ItemProvisioning
    | ItemAgentStarted
    | ItemAgentFinished
    | ItemVerifying
    | ItemVerdict
    | ItemTimedOut
    | ItemCancelled
    | ItemInfraFailed
    | ItemErrored
    | ItemRequeued
    | ItemLeaseRenewed
    | ItemSandboxKept
    | ItemSandboxDiscarded
)


# ---- state ----


class ItemState(msgspec.Struct, frozen=True, kw_only=True):
    """One item as its own stream says: what deciding needs, and what a worker runs."""

    item_id: str
    evaluation_id: str
    status: ItemStatus = "queued"
    retry_count: int = 0
    max_retries: int = 0
    # The stream's version (its event count): the next append expects exactly this.
    version: int = 0
    # What to run, fixed at create (see ItemQueued).
    task_name: str = ""
    task_ref: str = ""
    variables: Variables = {}
    bundle_digest: str | None = None
    timeout_sec: int | None = None
    timeout_source: TimeoutSource | None = None
    # The worker holding it while in flight.
    worker_id: str | None = None
    # An automatic retry waits until then (backoff after an infra failure).
    retry_not_before: str | None = None


def evolve(state: ItemState | None, event: AnyItemEvent) -> ItemState:
    """The state after `event`; `state` is None before the item's first event."""
    if isinstance(event, ItemQueued):
        if state is not None:
            raise IllegalTransition(f"item {event.item_id} is already queued once")
        return ItemState(
            item_id=event.item_id,
            evaluation_id=event.evaluation_id,
            max_retries=event.max_retries,
            version=1,
            task_name=event.task_name,
            task_ref=event.task_ref,
            variables=event.variables,
            bundle_digest=event.bundle_digest,
            timeout_sec=event.timeout_sec,
            timeout_source=event.timeout_source,
        )
    if state is None:
        raise IllegalTransition(
            f"item {event.item_id} has no history before {type(event).__name__}"
        )
    status = status_after(state.status, event)
    changes: dict[str, Any] = {"status": status, "version": state.version + 1}
    if isinstance(event, ItemClaimed):
        changes |= {"worker_id": event.worker_id, "retry_not_before": None}
    elif status not in IN_FLIGHT:
        changes["worker_id"] = None
    if isinstance(event, ItemInfraFailed) and event.will_retry:
        changes |= {
            "retry_count": state.retry_count + 1,
            "retry_not_before": event.retry_not_before,
        }
    return msgspec.structs.replace(state, **changes)


def status_after(current: ItemStatus, event: AnyItemEvent) -> ItemStatus:
    """Where `event` takes an item in `current`; refuses what the machine does not allow."""
    if isinstance(event, ItemLeaseRenewed):
        if current not in IN_FLIGHT:
            raise IllegalTransition(f"item is {current}; only an item in flight has a lease")
        return current
    if isinstance(event, ItemSandboxKept | ItemSandboxDiscarded):
        if current not in TERMINAL:
            raise IllegalTransition(
                f"item is {current}; a sandbox is kept or discarded only once it ended"
            )
        return current
    target = _target_status(event)
    if target in FORWARD:
        allowed = current == FORWARD[target]
    elif isinstance(event, ItemVerdict):
        allowed = current == "verifying"
    elif isinstance(event, ItemRequeued):
        allowed = current in RETRYABLE
    elif isinstance(event, ItemQueued):
        allowed = False
    else:  # timed_out, cancelled, infra failure, errored: from any non-terminal state
        allowed = current in ACTIVE
    if not allowed:
        raise IllegalTransition(f"item is {current}; {event.__class__.__name__} does not apply")
    return target


def _target_status(event: AnyItemEvent) -> ItemStatus:
    match event:
        case ItemQueued() | ItemRequeued():
            return "queued"
        case ItemClaimed():
            return "claiming"
        case ItemProvisioning():
            return "provisioning"
        case ItemAgentStarted():
            return "agent_running"
        case ItemAgentFinished():
            return "agent_finished"
        case ItemVerifying():
            return "verifying"
        case ItemVerdict(passed=passed):
            return "passed" if passed else "failed"
        case ItemTimedOut():
            return "timed_out"
        case ItemCancelled():
            return "cancelled"
        case ItemInfraFailed(will_retry=will_retry):
            return "queued" if will_retry else "infra_error"
        case ItemErrored():
            return "errored"
        case ItemLeaseRenewed() | ItemSandboxKept() | ItemSandboxDiscarded():
            pass
    raise TypeError(f"not an item event: {event!r}")


# ---- commands: what a worker (or an operator) asks of one item ----


class ItemCommand(msgspec.Struct, frozen=True, kw_only=True):
    """A request to move one item; `decide` turns it into events or refuses it."""


class Claim(ItemCommand, frozen=True):
    """A worker takes a queued item; provisioning starts the moment the claim lands."""

    worker_id: str
    lease_expires_at: str


class StartAgent(ItemCommand, frozen=True):
    session_id: str
    # What the agent's sandbox really runs under, recorded with the item (see ItemAgentStarted).
    isolation: dict[str, Any] = {}


class FinishAgent(ItemCommand, frozen=True):
    agent_result: dict[str, Any] = {}


class StartVerifying(ItemCommand, frozen=True):
    pass


class RecordVerdict(ItemCommand, frozen=True):
    passed: bool
    result: dict[str, Any] = {}


class TimeOut(ItemCommand, frozen=True):
    error: str


class EndErrored(ItemCommand, frozen=True):
    """What no retry can change (a broken checker, an agent that crashed): errored at once."""

    error: str


class ReportInfraFailure(ItemCommand, frozen=True):
    """A sandbox, endpoint or worker failure at `at`; the retry policy says what follows."""

    error: str
    at: datetime
    # The wait before the first retry; it doubles with every retry already made.
    backoff_seconds: float


class ExpireLease(ItemCommand, frozen=True):
    """The worker holding the item stopped renewing its lease (it died) by `at`."""

    at: datetime


class HandBack(ItemCommand, frozen=True):
    """The holding worker shuts down at `at` and returns the item at once, rather than let
    its lease lapse; like an expiry it counts one retry."""

    at: datetime


class KeepSandbox(ItemCommand, frozen=True):
    location: str


class DiscardSandbox(ItemCommand, frozen=True):
    location: str


AnyItemCommand = (
    Claim
    | StartAgent
    | FinishAgent
    | StartVerifying
    | RecordVerdict
    | TimeOut
    | EndErrored
    | ReportInfraFailure
    | ExpireLease
    | HandBack
    | KeepSandbox
    | DiscardSandbox
)


def decide(state: ItemState, command: AnyItemCommand) -> list[AnyItemEvent]:
    """The events `command` produces on `state`, or IllegalTransition; never touches I/O."""
    events = _events_of(state, command)
    after = state
    for event in events:
        after = evolve(after, event)  # refuses what the machine does not allow
    return events


def execute(
    state: ItemState, commands: tuple[AnyItemCommand, ...] | list[AnyItemCommand]
) -> tuple[list[AnyItemEvent], ItemState]:
    """Decide several commands in order, each on the state the previous left: the events of
    one append, and the state after them."""
    events: list[AnyItemEvent] = []
    for command in commands:
        decided = decide(state, command)
        for event in decided:
            state = evolve(state, event)
        events += decided
    return events, state


def _events_of(state: ItemState, command: AnyItemCommand) -> list[AnyItemEvent]:
    ids = {"item_id": state.item_id, "evaluation_id": state.evaluation_id}
    match command:
        case Claim(worker_id=worker_id, lease_expires_at=lease):
            return [
                ItemClaimed(**ids, worker_id=worker_id, lease_expires_at=lease),
                ItemProvisioning(**ids),
            ]
        case StartAgent(session_id=session_id, isolation=isolation):
            return [ItemAgentStarted(**ids, session_id=session_id, isolation=isolation)]
        case FinishAgent(agent_result=agent_result):
            return [ItemAgentFinished(**ids, agent_result=agent_result)]
        case StartVerifying():
            return [ItemVerifying(**ids)]
        case RecordVerdict(passed=passed, result=result):
            return [ItemVerdict(**ids, passed=passed, result=result)]
        case TimeOut(error=error):
            return [ItemTimedOut(**ids, error=error)]
        case EndErrored(error=error):
            return [ItemErrored(**ids, error=error)]
        case ReportInfraFailure(error=error, at=at, backoff_seconds=backoff):
            return [_infra_failure(state, error, retry_at(state, at, backoff))]
        case ExpireLease(at=at):
            if state.status not in IN_FLIGHT:
                raise IllegalTransition(
                    f"item is {state.status}; only an item in flight has a lease"
                )
            # The worker died, not the item's work: the retry may start at once.
            return [_infra_failure(state, f"worker {state.worker_id} lost its lease", iso(at))]
        case HandBack(at=at):
            if state.status not in IN_FLIGHT:
                raise IllegalTransition(f"item is {state.status}; only an item in flight is held")
            error = f"worker {state.worker_id} shut down; item handed back"
            return [_infra_failure(state, error, iso(at))]
        case KeepSandbox(location=location):
            return [ItemSandboxKept(**ids, location=location)]
        case DiscardSandbox(location=location):
            return [ItemSandboxDiscarded(**ids, location=location)]
    raise TypeError(f"not an item command: {command!r}")


# ---- policies ----


def retries_left(state: ItemState) -> bool:
    """The retry policy: an infra failure goes back to the queue while retries are left."""
    return state.retry_count < state.max_retries


def retry_at(state: ItemState, at: datetime, backoff_seconds: float) -> str:
    """When the next automatic retry may start: exponential backoff from the first wait."""
    return iso(at + timedelta(seconds=backoff_seconds * (2**state.retry_count)))


def _infra_failure(state: ItemState, error: str, not_before: str) -> ItemInfraFailed:
    will_retry = retries_left(state)
    return ItemInfraFailed(
        item_id=state.item_id,
        evaluation_id=state.evaluation_id,
        error=error,
        will_retry=will_retry,
        retry_not_before=not_before if will_retry else None,
    )


def keeps_sandbox(cleanup_policy: str, status_after_ending: ItemStatus) -> bool:
    """Keep-or-destroy: `on_success` keeps the sandbox of an item that ended without a pass,
    for a look inside; everything else (a pass, `always`, an item going back to the queue for
    a retry in a fresh sandbox) destroys it."""
    return (
        cleanup_policy == "on_success"
        and status_after_ending in TERMINAL
        and status_after_ending != "passed"
    )


def replay(events: list[AnyItemEvent]) -> ItemState | None:
    state: ItemState | None = None
    for event in events:
        state = evolve(state, event)
    return state


def replay_from(state: ItemState, events: list[AnyItemEvent]) -> ItemState:
    """`state` advanced by `events`, in order."""
    for event in events:
        state = evolve(state, event)
    return state
