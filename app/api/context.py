"""What every controller needs from a request: the process's container, the caller in an org
or in an org's workspace, and the request id. One module, so controllers share these through
it rather than through each other."""

from __future__ import annotations

from typing import Annotated, Any

from litestar import Request
from litestar.params import Parameter

from app.auth import Scope
from app.container import Container
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
