"""The org-wide event feed, for owners, admins and auditors: `GET /api/v1/org/{org}/events`."""

from __future__ import annotations

from typing import Annotated, Any

from litestar import Controller, Request, get
from litestar.params import Parameter

from app.api.context import container_of, org_caller
from app.api.openapi import errors_for
from app.api.schemas import FeedPage, history_event
from app.errors import ApiError
from infrastructure.identity.records import Org
from infrastructure.live.routing import org_events


async def feed_org(request: Request[Any, Any, Any], org: str) -> Org:
    """The org named in the path, if the caller may read its whole feed (else 403)."""
    principal, found = await org_caller(request, org)
    if not principal.can_read_feed(found.id):
        raise ApiError(
            403,
            "the org feed is for owners, admins and auditors of the org, with a key that is "
            "not scoped to one workspace; members read each evaluation's history instead",
        )
    return found


class FeedController(Controller):
    path = "/api/v1/org/{org:str}"
    tags = ["audit"]

    @get("/events", responses=errors_for(400, 401, 403, 404, 426, 429))
    async def get_feed(
        self,
        request: Request[Any, Any, Any],
        org: str,
        after: Annotated[int, Parameter(ge=0, description="only events after this position")] = 0,
        limit: Annotated[int, Parameter(ge=1, le=1000)] = 1000,
    ) -> FeedPage:
        """Every event of the org (evaluations, items, task registry), in commit order."""
        found = await feed_org(request, org)
        records = await org_events(container_of(request).engine, found.id, after=after, limit=limit)
        next_after = records[-1].position if len(records) == limit else None
        return FeedPage(events=[history_event(r) for r in records], next_after=next_after)
