"""What every controller needs from a request: the process's container, the caller in an org
or in an org's workspace, and the request id. One module, so controllers share these through
it rather than through each other."""

from __future__ import annotations

from typing import Annotated, Any

from litestar import Request
from litestar.params import Parameter

from app.auth import Scope
from app.container import Container
from app.errors import not_found
from app.services.evaluations import CommandContext
from domain.projections import EvaluationView, ItemView
from infrastructure.identity.records import Org, Principal


def container_of(request: Request[Any, Any, Any]) -> Container:
    container: Container = request.app.state.container
    return container


async def org_caller(request: Request[Any, Any, Any], org: str) -> tuple[Principal, Org]:
    """The authenticated caller and the org named in the path, which it must belong to
    (another tenant's org answers 404)."""
    container = container_of(request)
    principal = await container.authenticator.principal(request)
    return principal, await container.authenticator.org(principal, org)


async def resolve_scope(request: Request[Any, Any, Any], org: str, ws: str) -> Scope:
    container = container_of(request)
    principal = await container.authenticator.principal(request)
    return await container.authenticator.scope(principal, org, ws)


def request_id_of(request: Request[Any, Any, Any]) -> str | None:
    """The id the request middleware gave this request (echoed in errors and events)."""
    request_id: str | None = request.scope.get("state", {}).get("request_id")
    return request_id


# Paging of the list routes (tasks, task sets, capabilities, runtimes, sandboxes): one bound.
MAX_LIST_LIMIT = 500
PageNumber = Annotated[int, Parameter(ge=1, description="1-based page number")]
ListLimit = Annotated[
    int, Parameter(ge=1, le=MAX_LIST_LIMIT, description=f"at most {MAX_LIST_LIMIT} per page")
]


async def evaluation_id_in(request: Request[Any, Any, Any], tenant: Scope, raw_id: str) -> str:
    """The full id of the workspace's evaluation that `raw_id` names, or 404: for commands,
    which load the evaluation itself from its streams."""
    found = await container_of(request).queries.resolve_evaluation_id(tenant.workspace.id, raw_id)
    if found is None:
        raise not_found(f"evaluation {raw_id!r}")
    return found


async def evaluation_in(
    request: Request[Any, Any, Any], tenant: Scope, raw_id: str
) -> EvaluationView:
    """The workspace's evaluation that `raw_id` names (an id or unique prefix), or 404."""
    queries = container_of(request).queries
    evaluation_id = await queries.resolve_evaluation_id(tenant.workspace.id, raw_id)
    view = await queries.evaluation(evaluation_id) if evaluation_id else None
    if view is None or view.workspace_id != tenant.workspace.id:
        raise not_found(f"evaluation {raw_id!r}")
    return view


async def item_in(
    request: Request[Any, Any, Any], evaluation: EvaluationView, raw_id: str
) -> ItemView:
    queries = container_of(request).queries
    item_id = await queries.resolve_item_id(evaluation.id, raw_id)
    item = await queries.item(evaluation.id, item_id) if item_id else None
    if item is None:
        raise not_found(f"item {raw_id!r}")
    return item


def command_context(request: Request[Any, Any, Any], tenant: Scope) -> CommandContext:
    """Who acts, where, under which request id: what every command handler takes."""
    return CommandContext(
        principal=tenant.principal,
        org_id=tenant.org.id,
        workspace_id=tenant.workspace.id,
        request_id=request_id_of(request),
    )
