"""Read models as pure folds over the event history.

`project(views, event, envelope)` advances a working set of views by one event. The inline
path folds each append's events into the rows it touches, inside the append's transaction; a
rebuild folds the whole log from position 1 through the same function, so both agree by
construction (and a property test checks it).
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec

from domain import evaluation as ev
from domain import item as it


class Actor(msgspec.Struct, frozen=True, kw_only=True):
    """Who issued the command that produced an event (never a credential)."""

    user_id: str
    email: str
    username: str
    full_name: str | None = None


class Envelope(msgspec.Struct, frozen=True, kw_only=True):
    position: int
    recorded_at: str
    actor: Actor | None = None


class ItemView(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    evaluation_id: str
    position: int
    status: it.ItemStatus
    task_name_snapshot: str
    task_ref: str
    model: str | None
    variables: it.Variables = {}
    passed: bool | None = None
    error: str | None = None
    result_json: dict[str, Any] | None = None
    metadata_json: dict[str, Any] = {}
    bundle_digest: str | None = None
    retry_count: int = 0
    max_retries: int = 0
    worker_id: str | None = None
    lease_expires_at: str | None = None
    session_id: str | None = None
    queued_at: str
    started_at: str | None = None
    agent_finished_at: str | None = None
    verified_at: str | None = None
    completed_at: str | None = None
    created_at: str
    updated_at: str
    last_position: int
    # An automatic retry waits until this time (backoff after an infra failure).
    retry_not_before: str | None = None


class EvaluationView(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    org_id: str
    workspace_id: str
    config: ev.EvaluationConfig
    dataset_size: int
    status: ev.EvaluationStatus
    item_counts: dict[str, int]
    closed_as: Literal["cancelled", "failed"] | None = None
    # Items by the isolation level their (latest) agent sandbox ran under.
    isolation_counts: dict[str, int] = {}
    claimed_since_open: bool = False
    error_summary: str | None = None
    created_by: Actor | None = None
    queued_at: str
    started_at: str | None = None
    completed_at: str | None = None
    created_at: str
    updated_at: str
    last_position: int


class Views:
    """The working set a fold reads and replaces rows in (ids -> frozen views)."""

    def __init__(
        self,
        evaluations: dict[str, EvaluationView] | None = None,
        items: dict[str, ItemView] | None = None,
    ) -> None:
        self.evaluations = evaluations if evaluations is not None else {}
        self.items = items if items is not None else {}


def project(views: Views, event: ev.AnyEvent, envelope: Envelope) -> Views:
    if isinstance(event, it.ITEM_EVENTS):
        _project_item(views, event, envelope)
    else:
        _project_evaluation(views, event, envelope)
    return views


def _project_evaluation(views: Views, event: ev.AnyEvaluationEvent, env: Envelope) -> None:
    if isinstance(event, ev.EvaluationCreated):
        counts = ev.item_counts(["queued"] * len(event.item_ids))
        views.evaluations[event.evaluation_id] = EvaluationView(
            id=event.evaluation_id,
            org_id=event.org_id,
            workspace_id=event.workspace_id,
            config=event.config,
            dataset_size=len(event.item_ids),
            status=ev.status_of(None, counts, False),
            item_counts=counts,
            created_by=env.actor,
            queued_at=env.recorded_at,
            created_at=env.recorded_at,
            updated_at=env.recorded_at,
            last_position=env.position,
        )
        return
    view = views.evaluations[event.evaluation_id]
    match event:
        case ev.EvaluationCancelled():
            view = msgspec.structs.replace(view, closed_as="cancelled")
        case ev.EvaluationFailed(error=error):
            view = msgspec.structs.replace(view, closed_as="failed", error_summary=error)
        case ev.EvaluationReopened():
            view = msgspec.structs.replace(
                view,
                closed_as=None,
                claimed_since_open=False,
                error_summary=None,
                queued_at=env.recorded_at,
                completed_at=None,
            )
    views.evaluations[view.id] = _restatus(view, env)


def _restatus(view: EvaluationView, env: Envelope) -> EvaluationView:
    status = ev.status_of(view.closed_as, view.item_counts, view.claimed_since_open)
    finished = status in ev.TERMINAL_STATUSES
    completed_at = (view.completed_at or env.recorded_at) if finished else None
    return msgspec.structs.replace(
        view,
        status=status,
        completed_at=completed_at,
        updated_at=env.recorded_at,
        last_position=env.position,
    )


def _project_item(views: Views, event: it.AnyItemEvent, env: Envelope) -> None:
    now = env.recorded_at
    if isinstance(event, it.ItemQueued):
        views.items[event.item_id] = ItemView(
            id=event.item_id,
            evaluation_id=event.evaluation_id,
            position=event.position,
            status="queued",
            task_name_snapshot=event.task_name,
            task_ref=event.task_ref,
            model=event.model,
            variables=event.variables,
            max_retries=event.max_retries,
            bundle_digest=event.bundle_digest,
            metadata_json={
                **({"bundle_digest": event.bundle_digest} if event.bundle_digest else {}),
                **(
                    {"timeout": {"seconds": event.timeout_sec, "source": event.timeout_source}}
                    if event.timeout_sec is not None
                    else {}
                ),
            },
            queued_at=now,
            created_at=now,
            updated_at=now,
            last_position=env.position,
        )
        return  # EvaluationCreated already counted it as queued
    old = views.items[event.item_id]
    new_status = it.status_after(old.status, event)
    changes: dict[str, Any] = {
        "status": new_status,
        "updated_at": now,
        "last_position": env.position,
    }
    match event:
        case it.ItemClaimed(worker_id=worker_id, lease_expires_at=lease):
            changes |= {"worker_id": worker_id, "lease_expires_at": lease, "started_at": now}
        case it.ItemAgentStarted(session_id=session_id, isolation=isolation):
            changes["session_id"] = session_id
            if isolation:
                metadata = dict(old.metadata_json)
                before = metadata.get("sandbox", {}).get("isolation", {}).get("level")
                metadata["sandbox"] = {**metadata.get("sandbox", {}), "isolation": isolation}
                changes["metadata_json"] = metadata
                _count_isolation(views, old.evaluation_id, before, isolation.get("level"))
        case it.ItemAgentFinished(agent_result=result):
            metadata = dict(old.metadata_json)
            metadata["_dreadnode"] = {**metadata.get("_dreadnode", {}), "agent_result": result}
            changes |= {"agent_finished_at": now, "metadata_json": metadata}
        case it.ItemVerdict(passed=passed, result=result):
            changes |= {"passed": passed, "result_json": result, "verified_at": now}
        case it.ItemTimedOut(error=error) | it.ItemErrored(error=error):
            changes["error"] = error
        case it.ItemCancelled(reason=reason):
            changes["error"] = reason
        case it.ItemInfraFailed(error=error, will_retry=will_retry, retry_not_before=not_before):
            changes["error"] = error
            if will_retry:
                changes["retry_count"] = old.retry_count + 1
                changes["retry_not_before"] = not_before
        case it.ItemLeaseRenewed(lease_expires_at=lease):
            changes["lease_expires_at"] = lease
        case it.ItemSandboxKept(location=location):
            metadata = dict(old.metadata_json)
            metadata["sandbox"] = {
                **metadata.get("sandbox", {}),
                "kept": True,
                "location": location,
            }
            changes["metadata_json"] = metadata
        case it.ItemSandboxDiscarded(location=location):
            metadata = dict(old.metadata_json)
            metadata["sandbox"] = {
                **metadata.get("sandbox", {}),
                "kept": False,
                "location": location,
                "discarded_at": now,
            }
            changes["metadata_json"] = metadata
        case it.ItemRequeued():
            changes |= {
                "passed": None,
                "error": None,
                "result_json": None,
                "started_at": None,
                "agent_finished_at": None,
                "verified_at": None,
                "queued_at": now,
            }
    # No transition to count:
    if isinstance(event, it.ItemLeaseRenewed | it.ItemSandboxKept | it.ItemSandboxDiscarded):
        views.items[old.id] = msgspec.structs.replace(old, **changes)
        return
    if new_status == "queued" or new_status in it.TERMINAL:
        changes |= {"worker_id": None, "lease_expires_at": None}
    if new_status in it.TERMINAL:
        changes["completed_at"] = now
    elif new_status == "queued":
        changes["completed_at"] = None
    if new_status == "claiming":
        changes["retry_not_before"] = None
    views.items[old.id] = msgspec.structs.replace(old, **changes)
    _count_transition(views, old.evaluation_id, old.status, new_status, env)


def _count_isolation(views: Views, evaluation_id: str, before: object, after: object) -> None:
    """An item's sandbox isolation moves from `before` (a retry's earlier run) to `after`."""
    if before == after:
        return
    view = views.evaluations[evaluation_id]
    counts = dict(view.isolation_counts)
    if isinstance(before, str) and counts.get(before, 0) > 0:
        counts[before] -= 1
        if counts[before] == 0:
            del counts[before]
    if isinstance(after, str):
        counts[after] = counts.get(after, 0) + 1
    views.evaluations[evaluation_id] = msgspec.structs.replace(view, isolation_counts=counts)


def _count_transition(
    views: Views, evaluation_id: str, old: it.ItemStatus, new: it.ItemStatus, env: Envelope
) -> None:
    view = views.evaluations[evaluation_id]
    counts = dict(view.item_counts)
    counts[old] -= 1
    counts[new] += 1
    view = msgspec.structs.replace(
        view,
        item_counts=counts,
        claimed_since_open=view.claimed_since_open or new == "claiming",
        started_at=view.started_at or (env.recorded_at if new == "claiming" else None),
    )
    views.evaluations[evaluation_id] = _restatus(view, env)
