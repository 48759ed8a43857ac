"""Runtime routes under /api/v1/org/{org}/ws/{ws}: what `dn runtime list/get` call.

In Assay a runtime is where an evaluation's model is served (an OpenAI-compatible
`base_url`, registered with `assay admin add-runtime`), not an interactive sandbox: it has no
lifecycle to start or pause, so its status is always `idle` and the client's start, pause,
resume and reset commands have no route here. The client's `key` is the runtime's name.
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from litestar import Controller, Request, get
from litestar.params import Parameter

from app.api.context import ListLimit, container_of, resolve_scope
from app.api.openapi import errors_for
from app.errors import ApiError, not_found
from infrastructure.identity.records import Runtime
from infrastructure.ids import canonical_id

RUNTIME_STATES = ("idle", "running", "paused")


class RuntimeResponse(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    key: str
    name: str
    status: str
    base_url: str | None
    workspace_id: str
    project_id: str | None
    owned_by_me: bool
    created_at: str
    updated_at: str


class RuntimeList(msgspec.Struct, frozen=True):
    items: list[RuntimeResponse]
    total: int
    next_cursor: str | None


def _response(runtime: Runtime) -> RuntimeResponse:
    return RuntimeResponse(
        id=runtime.id,
        key=runtime.name,
        name=runtime.name,
        status="idle",
        base_url=runtime.base_url,
        workspace_id=runtime.workspace_id,
        project_id=None,
        # Runtimes belong to the workspace; anybody who can use it may use them.
        owned_by_me=True,
        created_at=runtime.created_at,
        updated_at=runtime.updated_at,
    )


class RuntimeController(Controller):
    path = "/api/v1/org/{org:str}/ws/{ws:str}/runtimes"
    tags = ["runtimes"]

    @get("/", responses=errors_for(400, 401, 404, 426, 429))
    async def list_runtimes(
        self,
        request: Request[Any, Any, Any],
        org: str,
        ws: str,
        state_filter: Annotated[
            str | None,
            Parameter(query="state", description="comma-separated; runtimes here are idle"),
        ] = None,
        project_id: str | None = None,
        owner: Annotated[str | None, Parameter(description="`me`: the same list here")] = None,
        limit: ListLimit = 50,
        cursor: str | None = None,
    ) -> RuntimeList:
        """The workspace's runtimes (model endpoints), by name."""
        tenant = await resolve_scope(request, org, ws)
        wanted = (
            {s.strip() for s in state_filter.split(",") if s.strip()} if state_filter else set()
        )
        if wanted - set(RUNTIME_STATES):
            raise ApiError(400, f"state must be among {', '.join(RUNTIME_STATES)}")
        if owner not in (None, "me"):
            raise ApiError(400, "owner must be `me` when given")
        try:
            offset = int(cursor) if cursor else 0
        except ValueError:
            raise ApiError(400, "cursor is not one this server gave out") from None
        runtimes = await container_of(request).identity.list_runtimes(tenant.workspace.id)
        rows = [
            _response(r)
            for r in runtimes
            if (not wanted or "idle" in wanted) and project_id is None
        ]
        page = rows[offset : offset + limit]
        more = offset + limit < len(rows)
        return RuntimeList(
            items=page, total=len(rows), next_cursor=str(offset + limit) if more else None
        )

    @get("/{runtime_id:str}", responses=errors_for(401, 404, 426, 429))
    async def get_runtime(
        self, request: Request[Any, Any, Any], org: str, ws: str, runtime_id: str
    ) -> RuntimeResponse:
        """One runtime by id or by name (the client's `key`)."""
        tenant = await resolve_scope(request, org, ws)
        identity = container_of(request).identity
        found = None
        whole_id = canonical_id(runtime_id)
        if whole_id is not None:
            found = await identity.get_runtime(tenant.workspace.id, whole_id)
        if found is None:
            found = await identity.get_runtime_by_name(tenant.workspace.id, runtime_id)
        if found is None:
            raise not_found(f"runtime {runtime_id!r}")
        return _response(found)
