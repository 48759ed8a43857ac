"""Evaluation routes under /api/v1/org/{org}/ws/{ws}: create, list, get, cancel, retry, items."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from litestar import Controller, Request, get, post
from litestar.params import Parameter

from app.api.context import container_of, request_id_of, resolve_scope
from app.api.openapi import errors_for
from app.api.schemas import (
    CreatedEvaluationResponse,
    CreateEvaluationRequest,
    EvaluationHistory,
    EvaluationList,
    EvaluationResponse,
    HistoryEvent,
    ItemList,
    ItemResponse,
    Transcript,
    TranscriptMessageResponse,
    TranscriptSession,
    evaluation_response,
    item_response,
)
from app.auth import Scope
from app.errors import ApiError, not_found
from app.services.evaluations import CommandContext
from domain import analytics
from domain.evaluation import EVALUATION_STATUSES, chosen_agent
from domain.item import ITEM_STATUSES
from domain.projections import EvaluationView, ItemView
from infrastructure import codec


def _context(request: Request[Any, Any, Any], tenant: Scope) -> CommandContext:
    return CommandContext(
        principal=tenant.principal,
        org_id=tenant.org.id,
        workspace_id=tenant.workspace.id,
        request_id=request_id_of(request),
    )


async def _evaluation(
    request: Request[Any, Any, Any], tenant: Scope, raw_id: str
) -> EvaluationView:
    queries = container_of(request).queries
    evaluation_id = await queries.resolve_evaluation_id(tenant.workspace.id, raw_id)
    view = await queries.evaluation(evaluation_id) if evaluation_id else None
    if view is None or view.workspace_id != tenant.workspace.id:
        raise not_found(f"evaluation {raw_id!r}")
    return view


async def _item(
    request: Request[Any, Any, Any], evaluation: EvaluationView, raw_id: str
) -> ItemView:
    queries = container_of(request).queries
    item_id = await queries.resolve_item_id(evaluation.id, raw_id)
    item = await queries.item(evaluation.id, item_id) if item_id else None
    if item is None:
        raise not_found(f"item {raw_id!r}")
    return item


PageNumber = Annotated[int, Parameter(ge=1, description="1-based page number")]
PageSize = Annotated[int, Parameter(ge=1, le=200, description="items per page (max 200)")]


class EvaluationController(Controller):
    path = "/api/v1/org/{org:str}/ws/{ws:str}"
    tags = ["evaluations"]

    @post(
        "/evaluation",
        status_code=201,
        responses=errors_for(400, 401, 403, 404, 413, 415, 422, 426, 429),
    )
    async def create_evaluation(
        self, request: Request[Any, Any, Any], org: str, ws: str, data: CreateEvaluationRequest
    ) -> EvaluationResponse:
        """Create an evaluation: one queued item per task name, dataset row, or runnable
        member of a task set (then the members it skipped are listed in `skipped_members`)."""
        tenant = await resolve_scope(request, org, ws)
        container = container_of(request)
        view, report = await container.evaluations.create_reporting(_context(request, tenant), data)
        created = evaluation_response(view, await container.capacity())
        if report.skipped_members is None:
            return created
        return CreatedEvaluationResponse(
            **msgspec.structs.asdict(created), skipped_members=report.skipped_members
        )

    @get("/evaluations", responses=errors_for(400, 401, 404, 426, 429))
    async def list_evaluations(
        self,
        request: Request[Any, Any, Any],
        org: str,
        ws: str,
        page: PageNumber = 1,
        page_size: PageSize = 50,
        status: str | None = None,
        project_id: str | None = None,
    ) -> EvaluationList:
        """Evaluations of the workspace, newest first."""
        tenant = await resolve_scope(request, org, ws)
        if status is not None and status not in EVALUATION_STATUSES:
            raise ApiError(400, f"status must be one of {', '.join(EVALUATION_STATUSES)}")
        found = await container_of(request).queries.list_evaluations(
            tenant.workspace.id,
            page=page,
            page_size=page_size,
            status=status,
            project_id=project_id,
        )
        capacity = await container_of(request).capacity()
        return EvaluationList(
            items=[evaluation_response(v, capacity) for v in found.items],
            total=found.total,
            page=page,
            page_size=page_size,
        )

    @get("/evaluation/{evaluation_id:str}", responses=errors_for(401, 404, 409, 426, 429))
    async def get_evaluation(
        self, request: Request[Any, Any, Any], org: str, ws: str, evaluation_id: str
    ) -> EvaluationResponse:
        """One evaluation by id or unique id prefix (at least 8 hex characters)."""
        tenant = await resolve_scope(request, org, ws)
        return evaluation_response(
            await _evaluation(request, tenant, evaluation_id),
            await container_of(request).capacity(),
        )

    @post(
        "/evaluation/{evaluation_id:str}/cancel",
        status_code=200,
        responses=errors_for(401, 403, 404, 409, 426, 429),
    )
    async def cancel_evaluation(
        self, request: Request[Any, Any, Any], org: str, ws: str, evaluation_id: str
    ) -> EvaluationResponse:
        """Cancel: every item not yet finished becomes cancelled; 409 when already finished."""
        tenant = await resolve_scope(request, org, ws)
        view = await _evaluation(request, tenant, evaluation_id)
        container = container_of(request)
        cancelled = await container.evaluations.cancel(_context(request, tenant), view.id)
        return evaluation_response(cancelled, await container.capacity())

    @post(
        "/evaluation/{evaluation_id:str}/retry-failed",
        status_code=200,
        responses=errors_for(401, 403, 404, 409, 426, 429),
    )
    async def retry_failed(
        self, request: Request[Any, Any, Any], org: str, ws: str, evaluation_id: str
    ) -> EvaluationResponse:
        """Requeue failed, timed-out, cancelled and infra-error items of a finished evaluation."""
        tenant = await resolve_scope(request, org, ws)
        view = await _evaluation(request, tenant, evaluation_id)
        container = container_of(request)
        reopened = await container.evaluations.retry_failed(_context(request, tenant), view.id)
        return evaluation_response(reopened, await container.capacity())

    @get("/evaluation/{evaluation_id:str}/analytics", responses=errors_for(401, 404, 409, 426, 429))
    async def get_analytics(
        self, request: Request[Any, Any, Any], org: str, ws: str, evaluation_id: str
    ) -> analytics.Analytics:
        """Pass rate, counts, per-task breakdown, durations and grouped errors."""
        tenant = await resolve_scope(request, org, ws)
        view = await _evaluation(request, tenant, evaluation_id)
        items = await container_of(request).queries.items(view.id)
        return analytics.compute(view, items)

    @get(
        "/evaluation/{evaluation_id:str}/items", responses=errors_for(400, 401, 404, 409, 426, 429)
    )
    async def list_items(
        self,
        request: Request[Any, Any, Any],
        org: str,
        ws: str,
        evaluation_id: str,
        status: str | None = None,
    ) -> ItemList:
        """The evaluation's items in position order, optionally filtered by status."""
        tenant = await resolve_scope(request, org, ws)
        if status is not None and status not in ITEM_STATUSES:
            raise ApiError(400, f"status must be one of {', '.join(ITEM_STATUSES)}")
        view = await _evaluation(request, tenant, evaluation_id)
        items = await container_of(request).queries.items(view.id, status=status)
        return ItemList(items=[item_response(i) for i in items], total=len(items))

    @get(
        "/evaluation/{evaluation_id:str}/items/{item_id:str}",
        responses=errors_for(401, 404, 409, 426, 429),
    )
    async def get_item(
        self, request: Request[Any, Any, Any], org: str, ws: str, evaluation_id: str, item_id: str
    ) -> ItemResponse:
        """One item by id or unique id prefix."""
        tenant = await resolve_scope(request, org, ws)
        view = await _evaluation(request, tenant, evaluation_id)
        return item_response(await _item(request, view, item_id))

    @get(
        "/evaluation/{evaluation_id:str}/items/{item_id:str}/transcript",
        responses=errors_for(400, 401, 404, 409, 426, 429),
    )
    async def get_transcript(
        self,
        request: Request[Any, Any, Any],
        org: str,
        ws: str,
        evaluation_id: str,
        item_id: str,
        after_seq: Annotated[int, Parameter(ge=0)] = 0,
        limit: Annotated[int, Parameter(ge=1, le=1000)] = 500,
    ) -> Transcript:
        """What the agent said and did in the item's latest attempt (secrets redacted);
        404 when the item never started an agent."""
        tenant = await resolve_scope(request, org, ws)
        view = await _evaluation(request, tenant, evaluation_id)
        item = await _item(request, view, item_id)
        if item.session_id is None:
            raise not_found(f"transcript of item {item_id!r} (its agent never started)")
        messages = await container_of(request).queue.transcript(
            item.session_id, after_seq=after_seq, limit=limit + 1
        )
        return Transcript(
            session=TranscriptSession(
                id=item.session_id,
                item_id=item.id,
                evaluation_id=view.id,
                agent=chosen_agent(view.config.agent_type, view.config.capability),
                model=view.config.model,
            ),
            messages=[
                TranscriptMessageResponse(
                    id=f"{item.session_id}:{m.seq}",
                    seq=m.seq,
                    role=m.role,
                    content=m.content,
                    tool_calls=m.tool_calls,
                    tool_call_id=m.tool_call_id,
                    metadata=m.metadata,
                    created_at=m.created_at,
                )
                for m in messages[:limit]
            ],
            has_more=len(messages) > limit,
        )

    @get(
        "/evaluation/{evaluation_id:str}/events", responses=errors_for(400, 401, 404, 409, 426, 429)
    )
    async def get_history(
        self,
        request: Request[Any, Any, Any],
        org: str,
        ws: str,
        evaluation_id: str,
        after: Annotated[int, Parameter(ge=0, description="only events after this position")] = 0,
        limit: Annotated[int, Parameter(ge=1, le=1000)] = 1000,
    ) -> EvaluationHistory:
        """The evaluation's history in commit order, for auditors: who did what, when."""
        tenant = await resolve_scope(request, org, ws)
        view = await _evaluation(request, tenant, evaluation_id)
        records = await container_of(request).queries.evaluation_history(
            view.id, after_position=after, limit=limit
        )
        events = []
        for record in records:
            metadata = codec.decode_metadata(record)
            events.append(
                HistoryEvent(
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
                    metadata=msgspec.json.decode(record.metadata),
                    prev_hash=record.prev_hash,
                    hash=record.hash,
                    chain_prev_hash=record.chain_prev_hash,
                    chain_hash=record.chain_hash,
                )
            )
        next_after = records[-1].position if len(records) == limit else None
        return EvaluationHistory(evaluation_id=view.id, events=events, next_after=next_after)
