"""Who is calling and which org/workspace they may act in.

API keys arrive as `X-API-Key` (the dn client) or `Authorization: Bearer` (the API reference).
A server process keeps a verified key for `auth_cache_seconds` so a hot GET does not pay a
database round trip; a revoked key therefore stops working within that bound.
"""

from __future__ import annotations

import time
from typing import Any

import msgspec
from litestar import Request

from app.errors import ApiError, not_found
from infrastructure.identity.crypto import hash_api_key
from infrastructure.identity.records import Org, Principal, Workspace
from infrastructure.identity.store import IdentityStore


class Scope(msgspec.Struct, frozen=True):
    """The tenant a request acts in, after every membership and key-scope check."""

    principal: Principal
    org: Org
    workspace: Workspace


def raw_key_of(request: Request[Any, Any, Any]) -> str | None:
    # Straight from the ASGI headers: building Litestar's Headers object costs more than the
    # rest of an authenticated cached GET.
    authorization = ""
    for name, value in request.scope["headers"]:
        if name == b"x-api-key" and value.strip():
            return value.decode("latin-1").strip()
        if name == b"authorization":
            authorization = value.decode("latin-1")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return None


class Authenticator:
    def __init__(self, identity: IdentityStore, cache_seconds: float) -> None:
        self.identity = identity
        self.cache_seconds = cache_seconds
        self._principals: dict[str, tuple[float, Principal]] = {}
        self._orgs: dict[str, tuple[float, Org]] = {}
        self._workspaces: dict[tuple[str, str], tuple[float, Workspace]] = {}

    async def principal(self, request: Request[Any, Any, Any]) -> Principal:
        raw = raw_key_of(request)
        if raw is None:
            raise ApiError(401, "missing API key: send X-API-Key or Authorization: Bearer")
        digest = hash_api_key(raw)
        now = time.monotonic()
        cached = self._principals.get(digest)
        if cached is not None and cached[0] > now:
            return cached[1]
        principal = await self.identity.authenticate(raw)
        if principal is None:
            self._principals.pop(digest, None)
            raise ApiError(401, "invalid or revoked API key")
        if len(self._principals) > 10_000:
            self._principals.clear()
        self._principals[digest] = (now + self.cache_seconds, principal)
        return principal

    async def org(self, principal: Principal, org_key: str) -> Org:
        now = time.monotonic()
        cached = self._orgs.get(org_key)
        org = cached[1] if cached is not None and cached[0] > now else None
        if org is None:
            org = await self.identity.get_org_by_key(org_key)
            if org is None:
                raise not_found(f"organization {org_key!r}")
            self._orgs[org_key] = (now + self.cache_seconds, org)
        # Another tenant's org answers exactly like a missing one: existence is not disclosed.
        if not principal.can_read_org(org.id):
            raise not_found(f"organization {org_key!r}")
        return org

    async def scope(self, principal: Principal, org_key: str, workspace_key: str) -> Scope:
        org = await self.org(principal, org_key)
        now = time.monotonic()
        cached = self._workspaces.get((org.id, workspace_key))
        workspace = cached[1] if cached is not None and cached[0] > now else None
        if workspace is None:
            workspace = await self.identity.get_workspace(org.id, workspace_key)
            if workspace is None:
                raise not_found(f"workspace {workspace_key!r}")
            self._workspaces[(org.id, workspace_key)] = (now + self.cache_seconds, workspace)
        if not principal.can_use_workspace(workspace.id):
            raise not_found(f"workspace {workspace_key!r}")
        return Scope(principal=principal, org=org, workspace=workspace)
