"""What the identity store returns: frozen records, the authenticated principal, its errors.

Records mirror their table rows (field names are column names). None of them carries a
credential: a secret's value and an API key's raw text or hash never leave the store in a
record, so no repr, log line or exception can show one.
"""

from __future__ import annotations

from typing import Literal

import msgspec

Role = Literal["owner", "admin", "member", "viewer", "auditor"]
ROLE_NAMES: tuple[Role, ...] = ("owner", "admin", "member", "viewer", "auditor")
# Roles that may start work (create evaluations, projects, ...); viewers only read.
CREATOR_ROLES: frozenset[str] = frozenset({"owner", "admin", "member"})
# Roles that may manage (cancel, retry, ...) what anybody in the org created.
MANAGER_ROLES: frozenset[str] = frozenset({"owner", "admin"})
# Roles that may read the org-wide event feed (auditors read everything of the org, write
# nothing: they are in neither set above).
FEED_ROLES: frozenset[str] = frozenset({"owner", "admin", "auditor"})


class IdentityError(Exception):
    """Base of what the identity store refuses; messages never contain credentials."""


class AlreadyExists(IdentityError):
    """A unique name is taken (HTTP 409, CLI error)."""

    def __init__(self, what: str) -> None:
        super().__init__(f"{what} already exists")
        self.what = what


class NotFound(IdentityError):
    """The record (or the parent it needs) does not exist (HTTP 404, CLI error)."""

    def __init__(self, what: str) -> None:
        super().__init__(f"{what} not found")
        self.what = what


class InvalidValue(IdentityError, ValueError):
    """An input breaks a format rule: bad slug, unknown role, too long (HTTP 422)."""


class Org(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    key: str
    name: str
    max_sandbox_runtime_seconds: int | None
    default_sandbox_runtime_seconds: int | None
    created_at: str
    updated_at: str


class Workspace(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    org_id: str
    key: str
    name: str
    is_default: bool
    created_at: str
    updated_at: str


class User(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    email: str
    username: str
    full_name: str
    created_at: str
    updated_at: str


class Membership(msgspec.Struct, frozen=True, kw_only=True):
    org_id: str
    user_id: str
    role: Role
    created_at: str


class Project(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    workspace_id: str
    key: str
    name: str
    is_default: bool
    created_at: str
    updated_at: str


class Runtime(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    workspace_id: str
    name: str
    base_url: str | None
    created_at: str
    updated_at: str


class SecretInfo(msgspec.Struct, frozen=True, kw_only=True):
    """A secret as anybody may see it: no value, only `masked_value` (at most 4 last chars)."""

    id: str
    user_id: str
    name: str
    provider: str
    masked_value: str
    created_at: str
    updated_at: str


class ApiKeyInfo(msgspec.Struct, frozen=True, kw_only=True):
    """An API key as listings show it: its display prefix, never the key or its hash."""

    id: str
    user_id: str
    name: str
    prefix: str
    workspace_id: str | None
    created_at: str
    revoked_at: str | None
    last_used_at: str | None


class Principal(msgspec.Struct, frozen=True, kw_only=True):
    """Who a request acts as: a user, through one API key.

    `roles` maps org id -> role. For a workspace-scoped key it holds only the org of that
    workspace (the key can never act elsewhere, whatever the user's other memberships), and
    every check below also refuses workspaces other than `key_workspace_id`.
    """

    user: User
    roles: dict[str, Role]
    key_id: str
    key_workspace_id: str | None = None
    key_org_id: str | None = None

    def role_in(self, org_id: str) -> Role | None:
        return self.roles.get(org_id)

    def can_read_org(self, org_id: str) -> bool:
        """May see the org itself and list its workspaces (a scoped key: only its own)."""
        return self.role_in(org_id) is not None

    def can_use_workspace(self, workspace_id: str) -> bool:
        """False when the key is scoped to another workspace."""
        return self.key_workspace_id is None or self.key_workspace_id == workspace_id

    def can_read(self, org_id: str, workspace_id: str) -> bool:
        return self.can_read_org(org_id) and self.can_use_workspace(workspace_id)

    def can_create(self, org_id: str, workspace_id: str) -> bool:
        return self.can_read(org_id, workspace_id) and self.role_in(org_id) in CREATOR_ROLES

    def can_manage(self, org_id: str, workspace_id: str, created_by: str | None) -> bool:
        """Owners and admins manage anything; members only what they created; viewers nothing."""
        if not self.can_read(org_id, workspace_id):
            return False
        role = self.role_in(org_id)
        if role in MANAGER_ROLES:
            return True
        return role == "member" and created_by is not None and created_by == self.user.id

    def can_read_feed(self, org_id: str) -> bool:
        """The org-wide feed shows every workspace: owners, admins and auditors, with a key
        that is not scoped to one workspace."""
        return self.key_workspace_id is None and self.role_in(org_id) in FEED_ROLES
