"""Task catalog routes behind `dn task list/info/delete/publish`, under /api/v1/org/{org}.

Pushed versions of the org (and, with `include_public`, other orgs' public ones) are listed
beside the service's built-in tasks (shipped and ASSAY_TASK_PATHS bundles: public, source
`built-in`). A name the org pushed hides the built-in task of the same name in that org, as it
does when an evaluation resolves the name.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import msgspec
from litestar import Controller, Request, delete, get, patch

from app.api.context import ListLimit, PageNumber, container_of, org_caller, request_id_of
from app.api.openapi import errors_for
from app.errors import not_found
from app.services.registry import RegistryService, TaskEntry
from domain.registry import TaskFamily
from infrastructure.identity.records import Org, Principal


class TaskResponse(msgspec.Struct, kw_only=True):
    id: str
    name: str
    version: str
    org_key: str
    is_public: bool
    source: str
    description: str | None
    instruction: str | None
    tags: list[str]
    difficulty: str | None
    author: str | None
    license: str | None
    sandbox_provider: str
    oci_digest: str | None
    manifest_digest: str | None
    created_at: str | None
    updated_at: str | None
    created_by: str | None
    versions: list[str] | None = None


class TaskList(msgspec.Struct, kw_only=True):
    tasks: list[TaskResponse]
    total: int
    page: int
    limit: int


class VersionList(msgspec.Struct, kw_only=True):
    name: str
    org_key: str
    versions: list[str]


class Facet(msgspec.Struct, kw_only=True):
    value: str
    count: int


class TaskFacets(msgspec.Struct, kw_only=True):
    tags: list[Facet]
    source: list[Facet]
    author: list[Facet]
    difficulty: list[Facet]


class Readme(msgspec.Struct, kw_only=True):
    name: str
    version: str
    content: str


class Instruction(msgspec.Struct, kw_only=True):
    name: str
    version: str
    instruction: str


class VisibilityRequest(msgspec.Struct, kw_only=True):
    is_public: bool


class VisibilityResponse(msgspec.Struct, kw_only=True):
    name: str
    org_key: str
    is_public: bool
    versions: list[str]
    updated_at: str


def response_of(entry: TaskEntry, versions: list[str] | None = None) -> TaskResponse:
    return TaskResponse(
        id=f"{entry.org_key}/{entry.name}@{entry.version}",
        name=entry.name,
        version=entry.version,
        org_key=entry.org_key,
        is_public=entry.is_public,
        source=entry.source,
        description=entry.description,
        instruction=entry.instruction,
        tags=list(entry.tags),
        difficulty=entry.difficulty,
        author=entry.author,
        license=entry.license,
        sandbox_provider="local",
        oci_digest=entry.bundle_digest,
        manifest_digest=entry.manifest_digest,
        created_at=entry.created_at,
        updated_at=entry.updated_at,
        created_by=entry.created_by,
        versions=versions,
    )


async def _reader(request: Request[Any, Any, Any], org: str) -> tuple[Principal, Org]:
    """For reads of one task: another org's public tasks are readable by anyone (the
    service then shows only what is public); an org that does not exist is a 404."""
    container = container_of(request)
    principal = await container.authenticator.principal(request)
    target = await container.identity.get_org_by_key(org)
    if target is None:
        raise not_found(f"organization {org!r}")  # the words a non-member gets, too
    return principal, target


def _registry(request: Request[Any, Any, Any]) -> RegistryService:
    return container_of(request).registry


def _matches(entry: TaskEntry, search: str | None, tags: list[str] | None) -> bool:
    if search:
        needle = search.lower()
        text = " ".join(filter(None, (entry.name, entry.description, entry.instruction)))
        if needle not in text.lower():
            return False
    return not tags or bool(set(tags) & set(entry.tags))


def _facet(values: list[str]) -> list[Facet]:
    return [Facet(value=v, count=n) for v, n in sorted(Counter(values).items())]


class TaskController(Controller):
    path = "/api/v1/org/{org:str}/tasks"
    tags = ["tasks"]

    @get("/", responses=errors_for(400, 401, 404, 426, 429))
    async def list_tasks(
        self,
        request: Request[Any, Any, Any],
        org: str,
        page: PageNumber = 1,
        limit: ListLimit = 50,
        search: str | None = None,
        tags: list[str] | None = None,
        include_public: bool = False,
    ) -> TaskList:
        """The latest version of each task: the org's pushed ones and the built-in ones."""
        principal, tenant = await org_caller(request, org)
        entries = [
            e
            for e in await _registry(request).entries(
                principal, tenant, include_public=include_public
            )
            if _matches(e, search, tags)
        ]
        start = (page - 1) * limit
        return TaskList(
            tasks=[response_of(e) for e in entries[start : start + limit]],
            total=len(entries),
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
        include_public: bool = False,
    ) -> TaskFacets:
        principal, tenant = await org_caller(request, org)
        entries = [
            e
            for e in await _registry(request).entries(
                principal, tenant, include_public=include_public
            )
            if _matches(e, search, tags)
        ]
        return TaskFacets(
            tags=_facet([t for e in entries for t in e.tags]),
            source=_facet([e.source for e in entries]),
            author=_facet([e.author for e in entries if e.author]),
            difficulty=_facet([e.difficulty for e in entries if e.difficulty]),
        )

    @get("/{name:str}", responses=errors_for(401, 404, 426, 429))
    async def latest(self, request: Request[Any, Any, Any], org: str, name: str) -> TaskResponse:
        principal, tenant = await _reader(request, org)
        versions = await _registry(request).versions(principal, tenant, name)
        return response_of(versions[0], [v.version for v in versions])

    @get("/{name:str}/versions", responses=errors_for(401, 404, 426, 429))
    async def versions(self, request: Request[Any, Any, Any], org: str, name: str) -> VersionList:
        """Versions, newest first (the client takes the first as the latest)."""
        principal, tenant = await _reader(request, org)
        found = await _registry(request).versions(principal, tenant, name)
        return VersionList(name=name, org_key=tenant.key, versions=[v.version for v in found])

    @get("/{name:str}/readme", responses=errors_for(401, 404, 426, 429))
    async def readme(self, request: Request[Any, Any, Any], org: str, name: str) -> Readme:
        principal, tenant = await _reader(request, org)
        registry = _registry(request)
        entry = await registry.entry(principal, tenant, name, None)
        content = await registry.readme(entry)
        if content is None:
            raise not_found(f"README of {tenant.key}/{name}")
        return Readme(name=name, version=entry.version, content=content)

    @get("/{name:str}/instruction", responses=errors_for(401, 404, 426, 429))
    async def instruction(
        self, request: Request[Any, Any, Any], org: str, name: str
    ) -> Instruction:
        principal, tenant = await _reader(request, org)
        entry = await _registry(request).entry(principal, tenant, name, None)
        return Instruction(name=name, version=entry.version, instruction=entry.instruction or "")

    @patch("/{name:str}/visibility", responses=errors_for(401, 403, 404, 422, 426, 429))
    async def visibility(
        self, request: Request[Any, Any, Any], org: str, name: str, data: VisibilityRequest
    ) -> VisibilityResponse:
        """Publish (public: every org may list, pull and run it) or unpublish a task name."""
        principal, tenant = await org_caller(request, org)
        family: TaskFamily = await _registry(request).set_visibility(
            principal, tenant.key, name, data.is_public, request_id_of(request)
        )
        return VisibilityResponse(
            name=family.name,
            org_key=family.org_key,
            is_public=family.is_public,
            versions=sorted(family.versions),
            updated_at=family.updated_at,
        )

    @get("/{name:str}/{version:str}", responses=errors_for(401, 404, 426, 429))
    async def version(
        self, request: Request[Any, Any, Any], org: str, name: str, version: str
    ) -> TaskResponse:
        principal, tenant = await _reader(request, org)
        return response_of(await _registry(request).entry(principal, tenant, name, version))

    @delete("/{name:str}/{version:str}", responses=errors_for(401, 403, 404, 426, 429))
    async def delete_version(
        self, request: Request[Any, Any, Any], org: str, name: str, version: str
    ) -> None:
        """Delete a pushed version (its digest is kept in the log; the version may be
        pushed again)."""
        principal, tenant = await org_caller(request, org)
        await _registry(request).delete_version(
            principal, tenant.key, name, version, request_id_of(request)
        )
