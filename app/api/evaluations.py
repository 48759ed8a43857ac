"""Evaluation routes under /api/v1/org/{org}/ws/{ws}: create, list, get, cancel, retry, items."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

import msgspec
from litestar import Controller, Request, get, post
from litestar.params import Parameter

from app.api.context import (
    PageNumber,
    container_of,
    evaluation_id_in,
    evaluation_in,
    item_in,
    resolve_scope,
)
from app.api.context import command_context as _context
from app.api.openapi import errors_for
from app.api.schemas import (
    CreatedEvaluationResponse,
    CreateEvaluationRequest,
    EvaluationHistory,
    EvaluationList,
    EvaluationResponse,
    ItemList,
    ItemResponse,
    Transcript,
    TranscriptMessageResponse,
    TranscriptSession,
    evaluation_response,
    history_event,
    item_response,
)
from app.errors import ApiError, not_found
from app.services.time_travel import PastEvaluation, evaluation_as_of, parse_as_of
from domain import analytics
from domain.evaluation import EVALUATION_STATUSES, chosen_agent
from domain.item import ITEM_STATUSES
from domain.projections import EvaluationView


class _Responses:
    """Each evaluation's wire object, kept while its view and the capacity stay the same.

    Cached views are shared frozen objects (infrastructure.view_cache), so a list page of 50
    asks for the same 50 objects poll after poll; building each answer again is most of what
    such a page costs past its fixed overhead. Keyed by id, valid only for the very view
    object (identity) and capacity it was built from: any change is a new view object."""

    def __init__(self, max_entries: int = 10_000) -> None:
        self._built: dict[str, tuple[EvaluationView, int, EvaluationResponse]] = {}
        self._max_entries = max_entries

    def of(self, view: EvaluationView, capacity: int) -> EvaluationResponse:
        entry = self._built.get(view.id)
        if entry is not None and entry[0] is view and entry[1] == capacity:
            return entry[2]
        if len(self._built) >= self._max_entries:
            self._built.clear()
        response = evaluation_response(view, capacity)
        self._built[view.id] = (view, capacity, response)
        return response


_responses = _Responses()


AsOfParam = Annotated[
    str | None,
    Parameter(
        description="the answer as it was at this event position or RFC 3339 time (the last "
        "event recorded at or before it)"
    ),
]


async def _as_of(request: Request[Any, Any, Any], view: EvaluationView, raw: str) -> PastEvaluation:
    return await evaluation_as_of(container_of(request).queries, view.id, parse_as_of(raw))


PageSize = Annotated[int, Parameter(ge=1, le=200, description="items per page (max 200)")]


class EvaluationController(Controller):
    path = "/api/v1/org/{org:str}/ws/{ws:str}"
    tags = ["evaluations"]

    @post(
        "/evaluation",
        status_code=201,
        responses=errors_for(400, 401, 403, 404, 409, 413, 415, 422, 426, 429),
    )
    async def create_evaluation(
        self,
        request: Request[Any, Any, Any],
        org: str,
        ws: str,
        data: CreateEvaluationRequest,
        idempotency_key: Annotated[
            str | None,
            Parameter(
                header="Idempotency-Key",
                description="Same key and body within 24 h: the first evaluation again (201); "
                "same key, other body: 409 already_exists.",
            ),
        ] = None,
    ) -> EvaluationResponse:
        """Create an evaluation: one queued item per task name, dataset row, or runnable
        member of a task set (then the members it skipped are listed in `skipped_members`)."""
        tenant = await resolve_scope(request, org, ws)
        container = container_of(request)
        view, report = await container.evaluations.create_reporting(
            _context(request, tenant), data, idempotency_key
        )
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
        project_id: uuid.UUID | None = None,
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
            project_id=None if project_id is None else str(project_id),
        )
        capacity = await container_of(request).capacity()
        return EvaluationList(
            items=[_responses.of(v, capacity) for v in found.items],
            total=found.total,
            page=page,
            page_size=page_size,
        )

    @get("/evaluation/{evaluation_id:str}", responses=errors_for(401, 404, 409, 422, 426, 429))
    async def get_evaluation(
        self,
        request: Request[Any, Any, Any],
        org: str,
        ws: str,
        evaluation_id: str,
        as_of: AsOfParam = None,
    ) -> EvaluationResponse:
        """One evaluation by id or unique id prefix (at least 8 hex characters)."""
        tenant = await resolve_scope(request, org, ws)
        view = await evaluation_in(request, tenant, evaluation_id)
        if as_of is not None:
            view = (await _as_of(request, view, as_of)).evaluation
        return evaluation_response(view, await container_of(request).capacity())

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
        full_id = await evaluation_id_in(request, tenant, evaluation_id)
        container = container_of(request)
        cancelled = await container.evaluations.cancel(_context(request, tenant), full_id)
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
        full_id = await evaluation_id_in(request, tenant, evaluation_id)
        container = container_of(request)
        reopened = await container.evaluations.retry_failed(_context(request, tenant), full_id)
        return evaluation_response(reopened, await container.capacity())

    @get(
        "/evaluation/{evaluation_id:str}/analytics",
        responses=errors_for(401, 404, 409, 422, 426, 429),
    )
    async def get_analytics(
        self,
        request: Request[Any, Any, Any],
        org: str,
        ws: str,
        evaluation_id: str,
        as_of: AsOfParam = None,
    ) -> analytics.Analytics:
        """Pass rate, counts, per-task breakdown, durations and grouped errors."""
        tenant = await resolve_scope(request, org, ws)
        view = await evaluation_in(request, tenant, evaluation_id)
        if as_of is not None:
            past = await _as_of(request, view, as_of)
            return analytics.compute(past.evaluation, past.items)
        items = await container_of(request).queries.items(view.id)
        return analytics.compute(view, items)

    @get(
        "/evaluation/{evaluation_id:str}/items",
        responses=errors_for(400, 401, 404, 409, 422, 426, 429),
    )
    async def list_items(
        self,
        request: Request[Any, Any, Any],
        org: str,
        ws: str,
        evaluation_id: str,
        status: str | None = None,
        as_of: AsOfParam = None,
    ) -> ItemList:
        """The evaluation's items in position order, optionally filtered by status."""
        tenant = await resolve_scope(request, org, ws)
        if status is not None and status not in ITEM_STATUSES:
            raise ApiError(400, f"status must be one of {', '.join(ITEM_STATUSES)}")
        view = await evaluation_in(request, tenant, evaluation_id)
        if as_of is not None:
            past = await _as_of(request, view, as_of)
            items = [i for i in past.items if status is None or i.status == status]
        else:
            items = await container_of(request).queries.items(view.id, status=status)
        return ItemList(items=[item_response(i) for i in items], total=len(items))

    @get(
        "/evaluation/{evaluation_id:str}/items/{item_id:str}",
        responses=errors_for(401, 404, 409, 422, 426, 429),
    )
    async def get_item(
        self,
        request: Request[Any, Any, Any],
        org: str,
        ws: str,
        evaluation_id: str,
        item_id: str,
        as_of: AsOfParam = None,
    ) -> ItemResponse:
        """One item by id or unique id prefix."""
        tenant = await resolve_scope(request, org, ws)
        view = await evaluation_in(request, tenant, evaluation_id)
        item = await item_in(request, view, item_id)
        if as_of is not None:
            found = (await _as_of(request, view, as_of)).item(item.id)
            if found is None:
                raise not_found(f"item {item_id!r} as of {as_of!r} (it did not exist yet)")
            item = found
        return item_response(item)

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
        view = await evaluation_in(request, tenant, evaluation_id)
        item = await item_in(request, view, item_id)
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
        view = await evaluation_in(request, tenant, evaluation_id)
        records = await container_of(request).queries.evaluation_history(
            view.id, after_position=after, limit=limit
        )
        events = [history_event(record) for record in records]
        next_after = records[-1].position if len(records) == limit else None
        return EvaluationHistory(evaluation_id=view.id, events=events, next_after=next_after)
