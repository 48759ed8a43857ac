"""HTTP request and response bodies (msgspec), and the mapping from read-model views.

Field names follow the wire contract of Dreadnode's evaluation API (shared/spec/api.md) so the
published `dn` client reads them unchanged.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any, Literal

import msgspec

from domain.evaluation import (
    MAX_CONCURRENCY,
    TERMINAL_STATUSES,
    CleanupPolicy,
    EvaluationStatus,
)
from domain.item import ItemStatus
from domain.projections import EvaluationView, ItemView
from domain.task_sets import SkippedMember
from infrastructure import codec
from infrastructure.eventstore import RecordedEvent

Name = Annotated[str, msgspec.Meta(min_length=1, max_length=255)]


def _doc(description: str, **constraints: Any) -> msgspec.Meta:
    return msgspec.Meta(description=description, **constraints)


class CreateEvaluationRequest(msgspec.Struct, frozen=True, kw_only=True):
    """Unknown fields are ignored, never rejected: the client forwards manifest keys."""

    name: Annotated[Name, _doc("Evaluation name, 1-255 characters.")]
    model: Annotated[
        Name | None,
        _doc(
            "Model the agent uses (1-255 characters); required unless capability is given. "
            "A bare model selects the openai agent."
        ),
    ] = None
    kind: Annotated[str, _doc("Only security_task_benchmark.")] = "security_task_benchmark"
    task_names: Annotated[
        list[str] | None,
        _doc("Task refs [org/]name[@version], one item each; wins over dataset."),
    ] = None
    dataset: Annotated[
        dict[str, Any] | list[Any] | None,
        _doc(
            'One item per row: {"rows": [{"task_name": ..., <variable>: str|number|bool|null}]}'
            " or a bare list of rows. Other keys are the row's variables: they fill the task's "
            "{{ variable }} templates (instruction, setup) and are environment variables "
            "(upper-cased, e.g. folder -> FOLDER) of the item's sandbox, services and task "
            "scripts. A row lacking a variable its task's templates use is refused."
        ),
    ] = None
    task_set: Annotated[
        str | None, _doc("<org>/<name> of a task set; not available on this service.")
    ] = None
    task_config: Annotated[
        dict[str, Any] | None,
        _doc(
            "Variables for every item, under each dataset row's own (templates and, for "
            "scalar values, environment variables)."
        ),
    ] = None
    agent_type: Annotated[str | None, _doc("Agent that runs the items: oracle, nop or openai.")] = (
        None
    )
    capability: Annotated[
        str | None, _doc("Same as agent_type (what dn's --capability sends).")
    ] = None
    cleanup_policy: Annotated[
        CleanupPolicy,
        _doc("always (default), or on_success: keep the sandbox of items that did not pass."),
    ] = "always"
    concurrency: Annotated[
        int,
        _doc(
            f"Most items of this evaluation in flight at once, 1-{MAX_CONCURRENCY}.",
            ge=1,
            le=MAX_CONCURRENCY,
        ),
    ] = 1
    task_timeout_sec: Annotated[
        Annotated[int, msgspec.Meta(ge=1)] | None,
        _doc(
            "Wall-clock bound per item in seconds (>= 1). When absent each item uses its "
            "task's own timeout_sec, else the service default; the item's "
            "metadata_json.timeout says which applied."
        ),
    ] = None
    # Ids are decoded as UUIDs: any case is the same id, and one that is not a UUID is a 422
    # naming the field. `str()` of one is the canonical text ids are stored as.
    project_id: Annotated[
        uuid.UUID | None,
        _doc("Project of the workspace (uuid, any case); 404 when it is not there."),
    ] = None
    runtime_id: Annotated[
        uuid.UUID | None,
        _doc("Runtime of the workspace (uuid) whose base_url serves the openai agent's model."),
    ] = None
    sandbox_provider: Annotated[
        str | None, _doc("Registered sandbox provider: local (default) or docker.")
    ] = None
    secret_ids: Annotated[
        list[uuid.UUID] | None,
        _doc("Your secrets (uuids) injected into the sandbox environment, redacted from output."),
    ] = None
    engine: Annotated[str | None, _doc("Stored and shown; Assay does not act on it.")] = None
    max_steps: Annotated[
        Annotated[int, msgspec.Meta(ge=1)] | None,
        _doc("The openai agent's generation budget (>= 1)."),
    ] = None
    judge_model: Annotated[str | None, _doc("Stored and shown; Assay does not act on it.")] = None
    model_overrides: Annotated[
        dict[str, Any] | None, _doc("Stored and shown; Assay does not act on it.")
    ] = None
    egress_overrides: Annotated[
        Any,
        _doc(
            "Egress allow-list added to each task's egress.allow (FQDN, *.suffix, IP, CIDR); "
            "[] differs from absent."
        ),
    ] = None


class CreatedByUser(msgspec.Struct, frozen=True):
    id: str
    email: str
    username: str
    full_name: str | None


class AnalyticsStatus(msgspec.Struct, frozen=True):
    status: Literal["pending", "computing", "ready"]


class EvaluationResponse(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    name: str
    kind: str
    model: str | None
    capability: str | None
    agent_type: str | None
    project_id: str | None
    runtime_id: str | None
    sandbox_provider: str
    cleanup_policy: CleanupPolicy
    requested_concurrency: int
    effective_concurrency: int
    task_timeout_sec: int
    max_retries: int
    dataset_size: int
    status: EvaluationStatus
    job_status: EvaluationStatus
    item_counts: dict[str, int]
    # Items by the isolation level their sandbox ran under (strict | weak).
    sandbox_isolation: dict[str, int]
    analytics: AnalyticsStatus
    error_summary: str | None
    queued_at: str
    started_at: str | None
    completed_at: str | None
    created_at: str
    updated_at: str
    created_by: str | None
    created_by_email: str | None
    created_by_user: CreatedByUser | None


class EvaluationList(msgspec.Struct, frozen=True):
    items: list[EvaluationResponse]
    total: int
    page: int
    page_size: int


class CreatedEvaluationResponse(EvaluationResponse, frozen=True, kw_only=True):
    """Create's answer: the evaluation, and for a task set the members it left out
    (`[{task_name, task_version, reason}]`, which the dn client prints)."""

    skipped_members: list[SkippedMember] | None = None


class ItemResponse(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    evaluation_id: str
    position: int
    item_status: ItemStatus
    status: ItemStatus
    task_name_snapshot: str
    task_ref: str
    model: str | None
    # The dataset row's variables (template values and environment variables of the run).
    variables: dict[str, Any]
    passed: bool | None
    error: str | None
    result_json: dict[str, Any] | None
    metadata_json: dict[str, Any]
    retry_count: int
    max_retries: int
    worker_id: str | None
    lease_expires_at: str | None
    session_id: str | None
    queued_at: str
    started_at: str | None
    agent_finished_at: str | None
    verified_at: str | None
    completed_at: str | None
    created_at: str


class ItemList(msgspec.Struct, frozen=True):
    items: list[ItemResponse]
    total: int


class HistoryEvent(msgspec.Struct, frozen=True, kw_only=True):
    position: int
    event_id: str
    stream_type: str
    stream_id: str
    stream_version: int
    type: str
    schema_version: int
    data: dict[str, Any]
    actor: dict[str, Any] | None
    request_id: str | None
    recorded_at: str
    # The Idempotency-Key of the create request that appended it (evaluation.created).
    idempotency_key: str | None = None
    # shared/spec/audit.md: the whole metadata object and the hash chains, so an auditor can
    # recompute every hash from this answer alone (README, "For auditors").
    metadata: dict[str, Any] = msgspec.field(default_factory=dict)
    prev_hash: str = ""
    hash: str = ""
    chain_prev_hash: str = ""
    chain_hash: str = ""


class TranscriptSession(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    item_id: str
    evaluation_id: str
    agent: str
    model: str | None


class TranscriptMessageResponse(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    seq: int
    role: str
    content: str | None
    tool_calls: list[dict[str, Any]] | None
    tool_call_id: str | None
    metadata: dict[str, Any]
    created_at: str


class Transcript(msgspec.Struct, frozen=True):
    session: TranscriptSession
    messages: list[TranscriptMessageResponse]
    has_more: bool


class EvaluationHistory(msgspec.Struct, frozen=True):
    evaluation_id: str
    events: list[HistoryEvent]
    next_after: int | None


def evaluation_response(view: EvaluationView, capacity: int) -> EvaluationResponse:
    """`capacity`: item slots of the live workers, which bounds what the service grants."""
    config = view.config
    actor = view.created_by
    return EvaluationResponse(
        id=view.id,
        name=config.name,
        kind=config.kind,
        model=config.model,
        capability=config.capability,
        agent_type=config.agent_type,
        project_id=config.project_id,
        runtime_id=config.runtime_id,
        sandbox_provider=config.sandbox_provider,
        cleanup_policy=config.cleanup_policy,
        requested_concurrency=config.concurrency,
        effective_concurrency=min(config.concurrency, capacity),
        task_timeout_sec=config.task_timeout_sec,
        max_retries=config.max_retries,
        dataset_size=view.dataset_size,
        status=view.status,
        job_status=view.status,
        item_counts=view.item_counts,
        sandbox_isolation=view.isolation_counts,
        analytics=AnalyticsStatus("ready" if view.status in TERMINAL_STATUSES else "pending"),
        error_summary=view.error_summary,
        queued_at=view.queued_at,
        started_at=view.started_at,
        completed_at=view.completed_at,
        created_at=view.created_at,
        updated_at=view.updated_at,
        created_by=actor.user_id if actor else None,
        created_by_email=actor.email if actor else None,
        created_by_user=(
            CreatedByUser(actor.user_id, actor.email, actor.username, actor.full_name)
            if actor
            else None
        ),
    )


def item_response(view: ItemView) -> ItemResponse:
    return ItemResponse(
        id=view.id,
        evaluation_id=view.evaluation_id,
        position=view.position,
        item_status=view.status,
        status=view.status,
        task_name_snapshot=view.task_name_snapshot,
        task_ref=view.task_ref,
        model=view.model,
        variables=dict(view.variables),
        passed=view.passed,
        error=view.error,
        result_json=view.result_json,
        metadata_json=view.metadata_json,
        retry_count=view.retry_count,
        max_retries=view.max_retries,
        worker_id=view.worker_id,
        lease_expires_at=view.lease_expires_at,
        session_id=view.session_id,
        queued_at=view.queued_at,
        started_at=view.started_at,
        agent_finished_at=view.agent_finished_at,
        verified_at=view.verified_at,
        completed_at=view.completed_at,
        created_at=view.created_at,
    )


class FeedPage(msgspec.Struct, frozen=True):
    """The org feed: its events after a position, ascending; `next_after` continues a full
    page (null when this page was the last)."""

    events: list[HistoryEvent]
    next_after: int | None


def history_event(record: RecordedEvent) -> HistoryEvent:
    """One stored event as auditors read it (the API's history and the dashboard's)."""
    metadata = codec.decode_metadata(record)
    return HistoryEvent(
        position=record.position,
        event_id=record.event_id,
        stream_type=record.stream_type,
        stream_id=record.stream_id,
        stream_version=record.stream_version,
        type=record.event_type,
        schema_version=record.schema_version,
        data=msgspec.json.decode(record.data),
        actor=msgspec.to_builtins(metadata.actor) if metadata.actor else None,
        request_id=metadata.request_id,
        recorded_at=record.recorded_at,
        idempotency_key=metadata.idempotency_key,
        metadata=msgspec.json.decode(record.metadata),
        prev_hash=record.prev_hash,
        hash=record.hash,
        chain_prev_hash=record.chain_prev_hash,
        chain_hash=record.chain_hash,
    )
