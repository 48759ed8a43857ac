"""The item state machine: one evaluation item, from queued to a verdict.

    queued -> claiming -> provisioning -> agent_running -> agent_finished -> verifying
           -> passed | failed

Any non-terminal state may also end in timed_out, cancelled, infra_error or errored. An infra
failure with retries left goes back to queued instead (counted in retry_count), and
`retry-failed` requeues failed, timed_out, cancelled and infra_error items.
"""

from __future__ import annotations

from typing import Any, Literal, get_args

import msgspec

from domain.errors import IllegalTransition

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
    """The worker still holds the item; no state change."""

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
    item_id: str
    evaluation_id: str
    status: ItemStatus = "queued"
    retry_count: int = 0
    max_retries: int = 0
    version: int = 0


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
        )
    if state is None:
        raise IllegalTransition(
            f"item {event.item_id} has no history before {type(event).__name__}"
        )
    status = status_after(state.status, event)
    retries = state.retry_count + (
        1 if isinstance(event, ItemInfraFailed) and event.will_retry else 0
    )
    return msgspec.structs.replace(
        state, status=status, retry_count=retries, version=state.version + 1
    )


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


def decide(state: ItemState, event: AnyItemEvent) -> list[AnyItemEvent]:
    """Validate a proposed transition against the state; the event itself is the command.

    Item commands carry exactly the data of the event they produce, so the command is the
    proposed event; deciding means refusing it when the machine does not allow it, and
    turning an infra failure into a retry while retries are left.
    """
    if isinstance(event, ItemInfraFailed):
        event = msgspec.structs.replace(event, will_retry=state.retry_count < state.max_retries)
    status_after(state.status, event)
    return [event]


def replay(events: list[AnyItemEvent]) -> ItemState | None:
    state: ItemState | None = None
    for event in events:
        state = evolve(state, event)
    return state
