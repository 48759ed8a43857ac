"""Who is calling and which org/workspace they may act in.

API keys arrive as `X-API-Key` (the dn client) or `Authorization: Bearer` (the API reference).
A server process keeps a verified key for `auth_cache_seconds` so a hot GET does not pay a
database round trip; a revoked key therefore stops working within that bound.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

import msgspec
from litestar import Request

from app.errors import ApiError, not_found
from infrastructure.expiring import ExpiringMap
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
    if scheme.lower() == "basic" and token.strip():
        return _basic_password(token.strip())
    return None


# OCI registry clients (`dn task push`) send the API key as the password of basic auth.
REGISTRY_USER = "__token__"


def _basic_password(token: str) -> str | None:
    try:
        user, _, password = base64.b64decode(token, validate=True).decode("utf-8").partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return None
    return password if user == REGISTRY_USER and password else None


class Authenticator:
    def __init__(self, identity: IdentityStore, cache_seconds: float) -> None:
        self.identity = identity
        self._principals: ExpiringMap[str, Principal] = ExpiringMap(cache_seconds)
        self._orgs: ExpiringMap[str, Org] = ExpiringMap(cache_seconds)
        self._workspaces: ExpiringMap[tuple[str, str], Workspace] = ExpiringMap(cache_seconds)

    async def principal(self, request: Request[Any, Any, Any]) -> Principal:
        raw = raw_key_of(request)
        if raw is None:
            raise ApiError(
                401,
                "missing API key: send X-API-Key, Authorization: Bearer, or basic auth as "
                f"{REGISTRY_USER} with the key as password",
            )
        return await self.principal_of_key(raw)

    async def principal_of_key(self, raw: str) -> Principal:
        """The principal behind a raw key from anywhere (a header, the dashboard's session);
        401 when the key is unknown or revoked."""
        digest = hash_api_key(raw)
        principal = self._principals.get(digest)
        if principal is not None:
            return principal
        principal = await self.identity.authenticate(raw)
        if principal is None:
            self._principals.drop(digest)
            raise ApiError(401, "invalid or revoked API key")
        self._principals.put(digest, principal)
        return principal

    async def org(self, principal: Principal, org_key: str) -> Org:
        org = self._orgs.get(org_key)
        if org is None:
            org = await self.identity.get_org_by_key(org_key)
            if org is None:
                raise not_found(f"organization {org_key!r}")
            self._orgs.put(org_key, org)
        # Another tenant's org answers exactly like a missing one: existence is not disclosed.
        if not principal.can_read_org(org.id):
            raise not_found(f"organization {org_key!r}")
        return org

    async def scope(self, principal: Principal, org_key: str, workspace_key: str) -> Scope:
        org = await self.org(principal, org_key)
        workspace = self._workspaces.get((org.id, workspace_key))
        if workspace is None:
            workspace = await self.identity.get_workspace(org.id, workspace_key)
            if workspace is None:
                raise not_found(f"workspace {workspace_key!r}")
            self._workspaces.put((org.id, workspace_key), workspace)
        if not principal.can_use_workspace(workspace.id):
            raise not_found(f"workspace {workspace_key!r}")
        return Scope(principal=principal, org=org, workspace=workspace)
