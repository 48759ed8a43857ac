"""The evaluation aggregate: create, cancel, fail and retry-failed, and its status machine.

An evaluation's own stream holds only what happens to the evaluation as a whole; every item
is its own stream (see `domain.item`), so items of one evaluation move without contending.
Status is derived, never stored by a command:

    queued (nothing claimed since (re)opening) -> running -> completed | partial
    any non-terminal -> cancelled | failed;   terminal -> (retry-failed) -> queued
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal, get_args

import msgspec

from domain import item as items
from domain.errors import CapacityExceeded, IllegalTransition, InvalidCommand

EvaluationStatus = Literal["queued", "running", "completed", "partial", "failed", "cancelled"]
EVALUATION_STATUSES: tuple[EvaluationStatus, ...] = get_args(EvaluationStatus)
TERMINAL_STATUSES: frozenset[EvaluationStatus] = frozenset(
    {"completed", "partial", "failed", "cancelled"}
)
CleanupPolicy = Literal["always", "on_success"]
MAX_CONCURRENCY = 100


class EvaluationConfig(msgspec.Struct, frozen=True, kw_only=True):
    """What the caller asked for, as validated and resolved at creation."""

    name: str
    kind: str = "security_task_benchmark"
    model: str | None = None
    capability: str | None = None
    agent_type: str | None = None
    project_id: str | None = None
    runtime_id: str | None = None
    sandbox_provider: str = "local"
    cleanup_policy: CleanupPolicy = "always"
    concurrency: int = 1
    task_timeout_sec: int = 1800
    max_retries: int = 2
    secret_ids: tuple[str, ...] = ()
    task_config: dict[str, Any] = {}
    engine: str | None = None
    max_steps: int | None = None
    judge_model: str | None = None
    model_overrides: dict[str, Any] | None = None
    egress_overrides: Any = None
    task_set: str | None = None


def chosen_agent(agent_type: str | None, capability: str | None) -> str:
    """The agent that runs an evaluation's items: named by agent_type or capability, else the
    model-driven `openai` agent."""
    return agent_type or capability or "openai"


class ItemSpec(msgspec.Struct, frozen=True, kw_only=True):
    item_id: str
    task_name: str
    task_ref: str
    variables: items.Variables = {}
    # sha256 of the task bundle's layer: the exact bytes every attempt of the item runs.
    bundle_digest: str | None = None
    # The item's wall-clock bound and which setting gave it (resolved at create).
    timeout_sec: int | None = None
    timeout_source: items.TimeoutSource | None = None


# ---- commands ----


class CreateEvaluation(msgspec.Struct, frozen=True, kw_only=True):
    evaluation_id: str
    org_id: str
    workspace_id: str
    config: EvaluationConfig
    items: tuple[ItemSpec, ...]


class CancelEvaluation(msgspec.Struct, frozen=True, kw_only=True):
    reason: str = "cancelled by user"


class FailEvaluation(msgspec.Struct, frozen=True, kw_only=True):
    error: str


class RetryFailed(msgspec.Struct, frozen=True, kw_only=True):
    pass


Command = CreateEvaluation | CancelEvaluation | FailEvaluation | RetryFailed


# ---- events (evaluation stream) ----


class EvaluationEvent(msgspec.Struct, frozen=True, kw_only=True, tag_field="type"):
    evaluation_id: str


class EvaluationCreated(EvaluationEvent, frozen=True, tag="evaluation.created"):
    org_id: str
    workspace_id: str
    config: EvaluationConfig
    item_ids: tuple[str, ...]


class EvaluationCancelled(EvaluationEvent, frozen=True, tag="evaluation.cancelled"):
    reason: str


class EvaluationFailed(EvaluationEvent, frozen=True, tag="evaluation.failed"):
    error: str


class EvaluationReopened(EvaluationEvent, frozen=True, tag="evaluation.reopened"):
    item_ids: tuple[str, ...]


EVALUATION_EVENTS = (EvaluationCreated, EvaluationCancelled, EvaluationFailed, EvaluationReopened)
AnyEvaluationEvent = EvaluationCreated | EvaluationCancelled | EvaluationFailed | EvaluationReopened
AnyEvent = AnyEvaluationEvent | items.AnyItemEvent


# ---- state ----


class EvaluationState(msgspec.Struct, frozen=True, kw_only=True):
    evaluation_id: str
    org_id: str
    workspace_id: str
    config: EvaluationConfig
    item_ids: tuple[str, ...]
    # Set by cancel/fail, cleared by retry-failed.
    closed_as: Literal["cancelled", "failed"] | None = None
    version: int = 0


def evolve(state: EvaluationState | None, event: AnyEvaluationEvent) -> EvaluationState:
    if isinstance(event, EvaluationCreated):
        if state is not None:
            raise IllegalTransition(f"evaluation {event.evaluation_id} already exists")
        return EvaluationState(
            evaluation_id=event.evaluation_id,
            org_id=event.org_id,
            workspace_id=event.workspace_id,
            config=event.config,
            item_ids=event.item_ids,
            version=1,
        )
    if state is None:
        raise IllegalTransition(f"evaluation {event.evaluation_id} has no history")
    closed_as: Literal["cancelled", "failed"] | None
    match event:
        case EvaluationCancelled():
            closed_as = "cancelled"
        case EvaluationFailed():
            closed_as = "failed"
        case EvaluationReopened():
            closed_as = None
    return msgspec.structs.replace(state, closed_as=closed_as, version=state.version + 1)


def item_counts(
    item_states: Mapping[str, items.ItemState] | list[items.ItemStatus],
) -> dict[str, int]:
    """All twelve statuses, always present, counting each item once."""
    statuses = (
        [s.status for s in item_states.values()]
        if isinstance(item_states, Mapping)
        else item_states
    )
    counts: dict[str, int] = dict.fromkeys(items.ITEM_STATUSES, 0)
    for status in statuses:
        counts[status] += 1
    return counts


def in_flight(counts: Mapping[str, int]) -> int:
    """Items between claiming and verifying: what `concurrency` bounds."""
    return sum(counts[s] for s in items.IN_FLIGHT)


def check_concurrency(evaluation_id: str, in_flight_after: int, concurrency: int) -> None:
    """The concurrency bound: a claim may not put more of an evaluation's items in flight than
    its `concurrency`. Checked in the claim's own append transaction, where every worker's
    claims are serialised, so workers on several machines never jointly exceed it."""
    if in_flight_after > concurrency:
        raise CapacityExceeded(
            f"evaluation {evaluation_id} has {concurrency} item(s) in flight, its concurrency"
        )


def status_of(
    closed_as: Literal["cancelled", "failed"] | None,
    counts: Mapping[str, int],
    claimed_since_open: bool,
) -> EvaluationStatus:
    """The evaluation's status from its own closure and its items' counts."""
    if closed_as is not None:
        return closed_as
    active = sum(counts[s] for s in items.ACTIVE)
    if active == 0:
        no_verdict = sum(counts[s] for s in items.TERMINAL - items.VERDICTS)
        return "completed" if no_verdict == 0 else "partial"
    if not claimed_since_open and active == counts["queued"]:
        return "queued"
    return "running"


def is_terminal(state: EvaluationState, item_states: Mapping[str, items.ItemState]) -> bool:
    if state.closed_as is not None:
        return True
    return all(s.status in items.TERMINAL for s in item_states.values())


def decide(
    state: EvaluationState | None,
    item_states: Mapping[str, items.ItemState],
    command: Command,
) -> list[AnyEvent]:
    """The events `command` produces, or a refusal; never touches I/O."""
    if isinstance(command, CreateEvaluation):
        return _create(state, command)
    if state is None:
        raise IllegalTransition("evaluation does not exist")
    if isinstance(command, CancelEvaluation | FailEvaluation):
        if is_terminal(state, item_states):
            verb = "cancel" if isinstance(command, CancelEvaluation) else "fail"
            raise IllegalTransition(f"evaluation is already finished; cannot {verb} it")
        head: AnyEvent = (
            EvaluationCancelled(evaluation_id=state.evaluation_id, reason=command.reason)
            if isinstance(command, CancelEvaluation)
            else EvaluationFailed(evaluation_id=state.evaluation_id, error=command.error)
        )
        reason = command.reason if isinstance(command, CancelEvaluation) else command.error
        return [head] + [
            items.ItemCancelled(item_id=i, evaluation_id=state.evaluation_id, reason=reason)
            for i in state.item_ids
            if item_states[i].status in items.ACTIVE
        ]
    if isinstance(command, RetryFailed):
        if not is_terminal(state, item_states):
            raise IllegalTransition(
                "evaluation is still running; retry-failed needs a finished one"
            )
        retry = tuple(i for i in state.item_ids if item_states[i].status in items.RETRYABLE)
        if not retry:
            raise IllegalTransition("no failed, timed-out, cancelled or infra-error items to retry")
        reopened: list[AnyEvent] = [
            EvaluationReopened(evaluation_id=state.evaluation_id, item_ids=retry)
        ]
        return reopened + [
            items.ItemRequeued(item_id=i, evaluation_id=state.evaluation_id) for i in retry
        ]
    raise TypeError(f"unknown command {command!r}")


def _create(state: EvaluationState | None, command: CreateEvaluation) -> list[AnyEvent]:
    if state is not None:
        raise IllegalTransition(f"evaluation {command.evaluation_id} already exists")
    config = command.config
    if not command.items:
        raise InvalidCommand("an evaluation needs at least one item")
    if not 1 <= config.concurrency <= MAX_CONCURRENCY:
        raise InvalidCommand(f"concurrency must be between 1 and {MAX_CONCURRENCY}")
    if config.task_timeout_sec < 1:
        raise InvalidCommand("task_timeout_sec must be at least 1")
    if config.max_retries < 0:
        raise InvalidCommand("max_retries must not be negative")
    ids = [spec.item_id for spec in command.items]
    if len(set(ids)) != len(ids):
        raise InvalidCommand("item ids must be unique")
    created: AnyEvent = EvaluationCreated(
        evaluation_id=command.evaluation_id,
        org_id=command.org_id,
        workspace_id=command.workspace_id,
        config=config,
        item_ids=tuple(ids),
    )
    return [created] + [
        items.ItemQueued(
            item_id=spec.item_id,
            evaluation_id=command.evaluation_id,
            position=position,
            task_name=spec.task_name,
            task_ref=spec.task_ref,
            model=config.model,
            variables=spec.variables,
            max_retries=config.max_retries,
            bundle_digest=spec.bundle_digest,
            timeout_sec=spec.timeout_sec,
            timeout_source=spec.timeout_source,
        )
        for position, spec in enumerate(command.items, start=1)
    ]


def stream_of(event: AnyEvent) -> tuple[str, str]:
    """The (stream_type, stream_id) an event belongs to."""
    if isinstance(event, items.ITEM_EVENTS):
        return ("item", event.item_id)
    return ("evaluation", event.evaluation_id)
