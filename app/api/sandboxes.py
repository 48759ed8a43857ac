"""Sandbox routes under /api/v1/org/{org}: what `dn sandbox list/get/logs/usage/delete` call.

A sandbox here is the one an evaluation item's latest run used: one per item that got as far
as provisioning. Its id is the item's id (a unique prefix of 8+ hex characters works, and so
does the local provider's own sandbox id, `<item id>--<worker>--<hex>`, which starts with it).
States: `running` (its item is in flight), `kept` (cleanup_policy on_success kept it after the
item ended; `location` says where), `killed` (destroyed when the item ended, or deleted since).
Logs are what the sandbox's commands printed: the agent transcript's shell commands and their
output, between the item's lifecycle lines.
"""

from __future__ import annotations

import json
import uuid
from datetime import datetime
from typing import Annotated, Any

import msgspec
from litestar import Controller, Request, delete, get
from litestar.params import Parameter

from app.api.context import ListLimit, container_of, org_caller
from app.api.openapi import errors_for
from app.errors import ApiError, not_found
from app.services.evaluations import CommandContext
from app.services.sandboxes import sandbox_state
from domain.projections import EvaluationView, ItemView
from infrastructure.identity.records import Principal, Workspace
from infrastructure.ids import normalise_prefix

SANDBOX_STATES = ("running", "kept", "killed")
# Enough of a transcript for a log; the whole one is at .../items/{id}/transcript.
LOG_MESSAGES = 1000


class SandboxResponse(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    provider_sandbox_id: str | None
    state: str
    sandbox_kind: str
    provider: str
    isolation: dict[str, Any] | None
    location: str | None
    evaluation_id: str
    evaluation_name: str
    item_id: str
    item_status: str
    task_ref: str
    workspace_id: str
    project_id: str | None
    created_at: str | None
    updated_at: str
    ended_at: str | None
    runtime_seconds: int


class SandboxList(msgspec.Struct, frozen=True):
    items: list[SandboxResponse]
    total: int
    next_cursor: str | None


class SandboxUsage(msgspec.Struct, frozen=True, kw_only=True):
    sessions_count: int
    running_count: int
    kept_count: int
    total_runtime_seconds: int
    current_month_seconds: int


class SandboxLogs(msgspec.Struct, frozen=True):
    logs: str


def _epoch(timestamp: str) -> float:
    return datetime.fromisoformat(timestamp).timestamp()


def _runtime_seconds(item: ItemView, now: float, since: float = 0.0) -> int:
    if item.started_at is None:
        return 0
    start = max(_epoch(item.started_at), since)
    end = _epoch(item.completed_at) if item.completed_at else now
    return max(0, int(end - start))


def sandbox_response(evaluation: EvaluationView, item: ItemView, now: float) -> SandboxResponse:
    recorded = item.metadata_json.get("sandbox", {})
    location = recorded.get("location")
    state = sandbox_state(item)
    return SandboxResponse(
        id=item.id,
        provider_sandbox_id=(location.rstrip("/").rsplit("/", 1)[-1] if location else None),
        state=state,
        sandbox_kind="evaluation_item",
        provider=evaluation.config.sandbox_provider,
        isolation=recorded.get("isolation"),
        location=location if state == "kept" else None,
        evaluation_id=evaluation.id,
        evaluation_name=evaluation.config.name,
        item_id=item.id,
        item_status=item.status,
        task_ref=item.task_ref,
        workspace_id=evaluation.workspace_id,
        project_id=evaluation.config.project_id,
        created_at=item.started_at,
        updated_at=item.updated_at,
        ended_at=item.completed_at,
        runtime_seconds=_runtime_seconds(item, now),
    )


async def _visible_workspaces(
    request: Request[Any, Any, Any], org: str
) -> tuple[Principal, str, list[Workspace]]:
    principal, found = await org_caller(request, org)
    container = container_of(request)
    workspaces = await container.identity.list_workspaces(found.id)
    return principal, found.id, [w for w in workspaces if principal.can_use_workspace(w.id)]


async def _sandbox(
    request: Request[Any, Any, Any], workspaces: list[Workspace], raw_id: str
) -> tuple[EvaluationView, ItemView]:
    # The local provider's own id starts with the item's id.
    prefix = normalise_prefix(raw_id.split("--", 1)[0])
    if prefix is None or not workspaces:
        raise not_found(f"sandbox {raw_id!r}")
    found = await container_of(request).queries.sandbox_items(
        [w.id for w in workspaces], id_prefix=prefix, limit=2
    )
    if len(found) > 1:
        raise ApiError(
            409, f"id prefix {raw_id!r} matches more than one sandbox", type="ambiguous_id"
        )
    if not found:
        raise not_found(f"sandbox {raw_id!r}")
    return found[0]


def _log_text(evaluation: EvaluationView, item: ItemView, messages: list[Any]) -> str:
    recorded = item.metadata_json.get("sandbox", {})
    level = recorded.get("isolation", {}).get("level", "unknown")
    lines = [
        f"# sandbox of item {item.id} (task {item.task_ref}, evaluation {evaluation.id})",
        f"# provider {evaluation.config.sandbox_provider}, isolation {level}",
    ]
    if item.started_at:
        lines.append(f"[{item.started_at}] provisioned (attempt {item.retry_count + 1})")
    for message in messages:
        for call in message.tool_calls or []:
            function = call.get("function", {})
            arguments = function.get("arguments", "")
            try:
                command = json.loads(arguments).get("command", arguments)
            except (ValueError, AttributeError):
                command = arguments
            lines.append(f"[{message.created_at}] $ {command}")
        if message.role == "tool" and message.content:
            lines.append(message.content.rstrip("\n"))
    if item.completed_at:
        ending = item.status + (f": {item.error}" if item.error else "")
        lines.append(f"[{item.completed_at}] item {ending}")
    if recorded.get("kept"):
        lines.append(f"# kept at {recorded.get('location')}")
    elif recorded.get("discarded_at"):
        lines.append(f"[{recorded['discarded_at']}] kept sandbox deleted")
    return "\n".join(lines) + "\n"


class SandboxController(Controller):
    path = "/api/v1/org/{org:str}/sandboxes"
    tags = ["sandboxes"]

    @get("/", responses=errors_for(400, 401, 404, 426, 429))
    async def list_sandboxes(
        self,
        request: Request[Any, Any, Any],
        org: str,
        # `state` is a name Litestar reserves for the application state: bound by alias.
        state_filter: Annotated[
            str | None,
            Parameter(query="state", description="comma-separated: running, kept, killed"),
        ] = None,
        project_id: uuid.UUID | None = None,
        limit: ListLimit = 50,
        cursor: Annotated[
            str | None, Parameter(description="next_cursor of the previous page")
        ] = None,
    ) -> SandboxList:
        """Sandboxes of evaluation items in the workspaces your key may use, most recently
        changed first."""
        _principal, _org_id, workspaces = await _visible_workspaces(request, org)
        wanted = (
            {s.strip() for s in state_filter.split(",") if s.strip()} if state_filter else set()
        )
        unknown = wanted - set(SANDBOX_STATES)
        if unknown:
            raise ApiError(400, f"state must be among {', '.join(SANDBOX_STATES)}")
        try:
            offset = int(cursor) if cursor else 0
        except ValueError:
            raise ApiError(400, "cursor is not one this server gave out") from None
        if offset < 0:
            raise ApiError(400, "cursor is not one this server gave out")
        container = container_of(request)
        found = await container.queries.sandbox_items([w.id for w in workspaces])
        now = container.clock().timestamp()
        rows = [
            sandbox_response(e, i, now)
            for e, i in found
            if (not wanted or sandbox_state(i) in wanted)
            and (project_id is None or e.config.project_id == str(project_id))
        ]
        page = rows[offset : offset + limit]
        more = offset + limit < len(rows)
        return SandboxList(
            items=page, total=len(rows), next_cursor=str(offset + limit) if more else None
        )

    @get("/usage", responses=errors_for(401, 404, 426, 429))
    async def sandbox_usage(self, request: Request[Any, Any, Any], org: str) -> SandboxUsage:
        """Sandbox time of the org's evaluation items (started to ended, or to now)."""
        _principal, _org_id, workspaces = await _visible_workspaces(request, org)
        container = container_of(request)
        found = await container.queries.sandbox_items([w.id for w in workspaces])
        now_dt = container.clock()
        now = now_dt.timestamp()
        month = now_dt.replace(day=1, hour=0, minute=0, second=0, microsecond=0).timestamp()
        states = [sandbox_state(i) for _e, i in found]
        return SandboxUsage(
            sessions_count=len(found),
            running_count=states.count("running"),
            kept_count=states.count("kept"),
            total_runtime_seconds=sum(_runtime_seconds(i, now) for _e, i in found),
            current_month_seconds=sum(
                _runtime_seconds(i, now, since=month)
                for _e, i in found
                if not i.completed_at or _epoch(i.completed_at) >= month
            ),
        )

    @get("/{sandbox_id:str}", responses=errors_for(401, 404, 409, 426, 429))
    async def get_sandbox(
        self, request: Request[Any, Any, Any], org: str, sandbox_id: str
    ) -> SandboxResponse:
        """One sandbox by item id, id prefix, or the provider's sandbox id."""
        _principal, _org_id, workspaces = await _visible_workspaces(request, org)
        evaluation, item = await _sandbox(request, workspaces, sandbox_id)
        return sandbox_response(evaluation, item, container_of(request).clock().timestamp())

    @get("/{sandbox_id:str}/logs", responses=errors_for(401, 404, 409, 426, 429))
    async def sandbox_logs(
        self, request: Request[Any, Any, Any], org: str, sandbox_id: str
    ) -> SandboxLogs:
        """What the sandbox's commands printed: the agent's shell commands and their output
        (secrets redacted), between the item's lifecycle lines."""
        _principal, _org_id, workspaces = await _visible_workspaces(request, org)
        evaluation, item = await _sandbox(request, workspaces, sandbox_id)
        messages: list[Any] = []
        if item.session_id is not None:
            messages = await container_of(request).queue.transcript(
                item.session_id, limit=LOG_MESSAGES
            )
        return SandboxLogs(logs=_log_text(evaluation, item, messages))

    @delete(
        "/{sandbox_id:str}", status_code=204, responses=errors_for(401, 403, 404, 409, 426, 429)
    )
    async def delete_sandbox(
        self, request: Request[Any, Any, Any], org: str, sandbox_id: str
    ) -> None:
        """Remove a kept sandbox; 409 while its item is in flight (cancel the evaluation
        instead) or when it is already gone."""
        principal, org_id, workspaces = await _visible_workspaces(request, org)
        evaluation, item = await _sandbox(request, workspaces, sandbox_id)
        context = CommandContext(
            principal=principal,
            org_id=org_id,
            workspace_id=evaluation.workspace_id,
            request_id=request.scope.get("state", {}).get("request_id"),
        )
        await container_of(request).sandboxes.discard(context, evaluation, item)
