"""Task set routes behind `dn task-set push/list/info/add/remove/clone/delete/publish`, under
/api/v1/org/{org}/task-sets. Every change is an event of the set's stream."""

from __future__ import annotations

from collections import Counter
from typing import Any

import msgspec
from litestar import Controller, Request, delete, get, patch, post, put

from app.api.context import ListLimit, PageNumber, container_of, org_caller, request_id_of
from app.api.openapi import errors_for
from app.api.tasks import Facet, VisibilityRequest
from app.services.task_sets import TaskSetService, publish_warnings
from domain import task_sets as ts
from infrastructure.identity.records import Principal


class MemberResponse(msgspec.Struct, kw_only=True):
    task_name: str
    task_version_pinned: str | None
    task_version_resolved: str | None
    unresolvable_reason: str | None
    publicly_runnable: bool
    notes: str | None


class CreatedBy(msgspec.Struct, kw_only=True):
    id: str | None
    email: str | None
    name: str | None


class TaskSetResponse(msgspec.Struct, kw_only=True):
    id: str
    name: str
    org_key: str
    organization_id: str
    description: str | None
    source: str | None
    tags: list[str]
    is_public: bool
    member_count: int
    unresolvable_count: int
    members: list[MemberResponse]
    warnings: list[str] | None
    created_at: str
    updated_at: str
    created_by_user: CreatedBy | None


class TaskSetSummary(msgspec.Struct, kw_only=True):
    id: str
    name: str
    org_key: str
    description: str | None
    source: str | None
    tags: list[str]
    is_public: bool
    member_count: int
    created_at: str
    updated_at: str


class TaskSetList(msgspec.Struct, kw_only=True):
    task_sets: list[TaskSetSummary]
    total: int
    page: int
    limit: int


class TaskSetFacets(msgspec.Struct, kw_only=True):
    tags: list[Facet]
    source: list[Facet]


class TaskSetDeletedResponse(msgspec.Struct, kw_only=True):
    id: str
    name: str
    org_key: str
    deleted: bool


async def _viewer(request: Request[Any, Any, Any], org: str) -> tuple[Principal, str]:
    """For reads that may concern another org's public set: the caller and the id of the org
    it acts in (members resolve as that org would run them)."""
    container = container_of(request)
    principal = await container.authenticator.principal(request)
    target = await container.identity.get_org_by_key(org)
    if target is not None and principal.can_read_org(target.id):
        return principal, target.id
    home = principal.key_org_id or next(iter(sorted(principal.roles)), "")
    return principal, home


def _sets(request: Request[Any, Any, Any]) -> TaskSetService:
    return container_of(request).task_sets


def _summary(task_set: ts.TaskSet) -> TaskSetSummary:
    content = task_set.content
    return TaskSetSummary(
        id=task_set.id,
        name=task_set.name,
        org_key=task_set.org_key,
        description=content.description,
        source=content.source,
        tags=list(content.tags),
        is_public=task_set.is_public,
        member_count=len(content.members),
        created_at=task_set.created_at,
        updated_at=task_set.updated_at,
    )


async def _detail(
    request: Request[Any, Any, Any], caller_org_id: str, task_set: ts.TaskSet
) -> TaskSetResponse:
    statuses = await _sets(request).members(caller_org_id, task_set)
    content = task_set.content
    actor = task_set.created_by if isinstance(task_set.created_by, dict) else None
    if actor is None and task_set.created_by is not None:
        actor = msgspec.to_builtins(task_set.created_by)
    return TaskSetResponse(
        id=task_set.id,
        name=task_set.name,
        org_key=task_set.org_key,
        organization_id=task_set.org_id,
        description=content.description,
        source=content.source,
        tags=list(content.tags),
        is_public=task_set.is_public,
        member_count=len(content.members),
        unresolvable_count=sum(1 for s in statuses if s.reason is not None),
        members=[
            MemberResponse(
                task_name=s.member.task_name,
                task_version_pinned=s.member.task_version,
                task_version_resolved=s.resolved_version,
                unresolvable_reason=s.reason,
                publicly_runnable=s.publicly_runnable,
                notes=s.member.notes,
            )
            for s in statuses
        ],
        warnings=publish_warnings(task_set, statuses),
        created_at=task_set.created_at,
        updated_at=task_set.updated_at,
        created_by_user=CreatedBy(
            id=actor.get("user_id"),
            email=actor.get("email"),
            name=actor.get("full_name") or actor.get("username"),
        )
        if actor
        else None,
    )


def _matches(
    task_set: ts.TaskSet,
    search: str | None,
    tags: list[str] | None,
    source: list[str] | None,
    contains: str | None,
) -> bool:
    content = task_set.content
    if search:
        text = " ".join(
            filter(None, (task_set.name, content.description, content.source, *content.tags))
        )
        if search.lower() not in text.lower():
            return False
    if tags and not set(tags) & set(content.tags):
        return False
    if source and content.source not in source:
        return False
    if contains:
        name, sep, version = contains.partition("@")
        return any(
            m.task_name == name and (not sep or m.task_version == version) for m in content.members
        )
    return True


class TaskSetController(Controller):
    path = "/api/v1/org/{org:str}/task-sets"
    tags = ["task sets"]

    @get("/", responses=errors_for(400, 401, 404, 426, 429))
    async def list_sets(
        self,
        request: Request[Any, Any, Any],
        org: str,
        page: PageNumber = 1,
        limit: ListLimit = 50,
        search: str | None = None,
        tags: list[str] | None = None,
        source: list[str] | None = None,
        contains: str | None = None,
        include_public: bool = False,
        sort_by: str = "created_at",
        sort_dir: str = "desc",
    ) -> TaskSetList:
        principal, tenant = await org_caller(request, org)
        found = [
            s
            for s in await _sets(request).listing(principal, tenant, include_public=include_public)
            if _matches(s, search, tags, source, contains)
        ]
        key = sort_by if sort_by in ("name", "created_at", "updated_at") else "created_at"
        found.sort(key=lambda s: getattr(s, key), reverse=sort_dir != "asc")
        start = (page - 1) * limit
        return TaskSetList(
            task_sets=[_summary(s) for s in found[start : start + limit]],
            total=len(found),
            page=page,
            limit=limit,
        )

    @get("/facets", responses=errors_for(400, 401, 404, 426, 429))
    async def facets(
        self,
        request: Request[Any, Any, Any],
        org: str,
        search: str | None = None,
        tags: list[str] | None = None,
        source: list[str] | None = None,
        include_public: bool = False,
    ) -> TaskSetFacets:
        principal, tenant = await org_caller(request, org)
        found = [
            s
            for s in await _sets(request).listing(principal, tenant, include_public=include_public)
            if _matches(s, search, tags, source, None)
        ]
        tag_counts = Counter(t for s in found for t in s.content.tags)
        source_counts = Counter(s.content.source for s in found if s.content.source)
        return TaskSetFacets(
            tags=[Facet(value=v, count=n) for v, n in sorted(tag_counts.items())],
            source=[Facet(value=v, count=n) for v, n in sorted(source_counts.items())],
        )

    @post("/", status_code=201, responses=errors_for(400, 401, 403, 404, 409, 422, 426, 429))
    async def create_set(
        self, request: Request[Any, Any, Any], org: str, data: dict[str, Any]
    ) -> TaskSetResponse:
        """Create a set from a task-set.yaml manifest body."""
        principal, tenant = await org_caller(request, org)
        created = await _sets(request).create(principal, tenant.key, data, request_id_of(request))
        return await _detail(request, tenant.id, created)

    @get("/{name:str}", responses=errors_for(401, 404, 426, 429))
    async def get_set(
        self, request: Request[Any, Any, Any], org: str, name: str
    ) -> TaskSetResponse:
        """A set with each member resolved as the caller would run it."""
        principal, caller_org_id = await _viewer(request, org)
        found = await _sets(request).readable(principal, org, name)
        return await _detail(request, caller_org_id, found)

    @put("/{name:str}", responses=errors_for(400, 401, 403, 404, 422, 426, 429))
    async def replace_set(
        self, request: Request[Any, Any, Any], org: str, name: str, data: dict[str, Any]
    ) -> TaskSetResponse:
        """Replace members, description, source and tags (visibility has its own route)."""
        principal, tenant = await org_caller(request, org)
        replaced = await _sets(request).replace(
            principal, tenant.key, name, data, request_id_of(request)
        )
        return await _detail(request, tenant.id, replaced)

    @patch("/{name:str}/visibility", responses=errors_for(401, 403, 404, 422, 426, 429))
    async def visibility(
        self, request: Request[Any, Any, Any], org: str, name: str, data: VisibilityRequest
    ) -> TaskSetResponse:
        principal, tenant = await org_caller(request, org)
        changed = await _sets(request).set_visibility(
            principal, tenant.key, name, data.is_public, request_id_of(request)
        )
        return await _detail(request, tenant.id, changed)

    @delete("/{name:str}", status_code=200, responses=errors_for(401, 403, 404, 426, 429))
    async def delete_set(
        self, request: Request[Any, Any, Any], org: str, name: str
    ) -> TaskSetDeletedResponse:
        principal, tenant = await org_caller(request, org)
        gone = await _sets(request).delete(principal, tenant.key, name, request_id_of(request))
        return TaskSetDeletedResponse(
            id=gone.id, name=gone.name, org_key=gone.org_key, deleted=True
        )
