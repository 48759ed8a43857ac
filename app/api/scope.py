"""The scope endpoints the dn client validates before every command: user, org, workspace."""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Controller, Request, get

from app.api.context import container_of, resolve_scope
from app.api.openapi import errors_for
from app.auth import Scope
from app.errors import not_found
from infrastructure.identity.records import Principal, SecretInfo


class UserResponse(msgspec.Struct, frozen=True):
    id: str
    email_address: str
    username: str
    full_name: str | None


class OrgResponse(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    name: str
    key: str
    created_at: str
    updated_at: str
    effective_max_sandbox_runtime_seconds: int
    max_sandbox_runtime_source_level: str
    effective_default_sandbox_runtime_seconds: int
    default_sandbox_runtime_source_level: str
    platform_max_sandbox_runtime_seconds: int
    platform_default_sandbox_runtime_seconds: int


class WorkspaceResponse(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    name: str
    key: str
    org_id: str
    created_at: str
    updated_at: str
    is_default: bool


class WorkspaceList(msgspec.Struct, frozen=True):
    workspaces: list[WorkspaceResponse]


class ProjectResponse(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    key: str
    name: str
    created_at: str
    updated_at: str


class SecretList(msgspec.Struct, frozen=True):
    secrets: list[SecretInfo]
    total: int


async def _principal(request: Request[Any, Any, Any]) -> Principal:
    return await container_of(request).authenticator.principal(request)


class ScopeController(Controller):
    path = "/api/v1"
    tags = ["scope"]

    @get("/user", responses=errors_for(401, 426, 429))
    async def current_user(self, request: Request[Any, Any, Any]) -> UserResponse:
        """The user behind the API key."""
        user = (await _principal(request)).user
        return UserResponse(user.id, user.email, user.username, user.full_name)

    @get("/user/secrets", responses=errors_for(401, 426, 429))
    async def list_secrets(self, request: Request[Any, Any, Any]) -> SecretList:
        """The caller's secrets, masked: values never leave the service."""
        principal = await _principal(request)
        secrets = await container_of(request).identity.list_secrets(principal.user.id)
        return SecretList(secrets=secrets, total=len(secrets))

    @get("/org/{org:str}", responses=errors_for(401, 404, 426, 429))
    async def get_org(self, request: Request[Any, Any, Any], org: str) -> OrgResponse:
        """An organization you belong to, with its sandbox runtime limits."""
        container = container_of(request)
        found = await container.authenticator.org(await _principal(request), org)
        platform_max = container.settings.default_task_timeout_sec * 4
        platform_default = container.settings.default_task_timeout_sec
        max_runtime = found.max_sandbox_runtime_seconds
        default_runtime = found.default_sandbox_runtime_seconds
        return OrgResponse(
            id=found.id,
            name=found.name,
            key=found.key,
            created_at=found.created_at,
            updated_at=found.updated_at,
            effective_max_sandbox_runtime_seconds=max_runtime or platform_max,
            max_sandbox_runtime_source_level="organization" if max_runtime else "platform",
            effective_default_sandbox_runtime_seconds=default_runtime or platform_default,
            default_sandbox_runtime_source_level="organization" if default_runtime else "platform",
            platform_max_sandbox_runtime_seconds=platform_max,
            platform_default_sandbox_runtime_seconds=platform_default,
        )

    @get("/org/{org:str}/ws", responses=errors_for(401, 404, 426, 429))
    async def list_workspaces(self, request: Request[Any, Any, Any], org: str) -> WorkspaceList:
        """Workspaces of the org that your key may use."""
        container = container_of(request)
        principal = await _principal(request)
        found = await container.authenticator.org(principal, org)
        workspaces = await container.identity.list_workspaces(found.id)
        return WorkspaceList(
            [_workspace(w) for w in workspaces if principal.can_use_workspace(w.id)]
        )

    @get("/org/{org:str}/ws/{ws:str}", responses=errors_for(401, 404, 426, 429))
    async def get_workspace(
        self, request: Request[Any, Any, Any], org: str, ws: str
    ) -> WorkspaceResponse:
        """One workspace."""
        scope: Scope = await resolve_scope(request, org, ws)
        return _workspace(scope.workspace)

    @get("/org/{org:str}/ws/{ws:str}/projects/{key:str}", responses=errors_for(401, 404, 426, 429))
    async def get_project(
        self, request: Request[Any, Any, Any], org: str, ws: str, key: str
    ) -> ProjectResponse:
        """A project of the workspace by key (every workspace has `default`)."""
        scope = await resolve_scope(request, org, ws)
        project = await container_of(request).identity.get_project_by_key(scope.workspace.id, key)
        if project is None:
            raise not_found(f"project {key!r}")
        return ProjectResponse(
            id=project.id,
            key=project.key,
            name=project.name,
            created_at=project.created_at,
            updated_at=project.updated_at,
        )


def _workspace(w: Any) -> WorkspaceResponse:
    return WorkspaceResponse(
        id=w.id,
        name=w.name,
        key=w.key,
        org_id=w.org_id,
        created_at=w.created_at,
        updated_at=w.updated_at,
        is_default=w.is_default,
    )
