"""The first org, workspace, owner and API key of a fresh installation (`assay admin bootstrap`).

Idempotent for what has a name: the org, workspace, user and membership are created only when
missing, so running it again is safe. It always issues a NEW API key, because keys are shown
only once and the previous one cannot be printed again.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

import msgspec

from infrastructure.identity.records import (
    AlreadyExists,
    ApiKeyInfo,
    Membership,
    Org,
    User,
    Workspace,
)
from infrastructure.identity.store import IdentityStore

T = TypeVar("T")


class BootstrapResult(msgspec.Struct, frozen=True, kw_only=True):
    org: Org
    workspace: Workspace
    user: User
    membership: Membership
    api_key: ApiKeyInfo
    raw_key: str
    # Which of "org", "workspace", "user", "membership" this run created.
    created: tuple[str, ...]

    def __repr__(self) -> str:
        # The raw key must not reach a log line through a stray repr.
        return (
            f"BootstrapResult(org={self.org.key!r}, workspace={self.workspace.key!r}, "
            f"user={self.user.email!r}, api_key={self.api_key.prefix!r}…, created={self.created!r})"
        )

    __str__ = __repr__


async def bootstrap(
    store: IdentityStore,
    org_key: str,
    workspace_key: str,
    email: str,
    *,
    username: str | None = None,
    full_name: str | None = None,
    org_name: str | None = None,
    workspace_name: str | None = None,
    key_name: str = "bootstrap",
) -> BootstrapResult:
    """Ensure org, workspace, user and membership exist; issue a fresh unscoped key.

    An existing membership keeps its role: bootstrap never changes anybody's rights. A new
    membership is `owner`.
    """
    created: list[str] = []

    async def ensure(
        what: str, get: Callable[[], Awaitable[T | None]], create: Callable[[], Awaitable[T]]
    ) -> T:
        found = await get()
        if found is not None:
            return found
        try:
            made = await create()
        except AlreadyExists:
            # Another bootstrap won the race between our lookup and our insert: use its row.
            again = await get()
            if again is None:
                raise
            return again
        created.append(what)
        return made

    org = await ensure(
        "org",
        lambda: store.get_org_by_key(org_key),
        lambda: store.create_org(org_key, org_name or org_key),
    )
    # The first workspace of an org becomes its default one.
    first_workspace = not await store.list_workspaces(org.id)
    workspace = await ensure(
        "workspace",
        lambda: store.get_workspace(org.id, workspace_key),
        lambda: store.create_workspace(
            org.id, workspace_key, workspace_name or workspace_key, is_default=first_workspace
        ),
    )
    user = await ensure(
        "user",
        lambda: store.get_user_by_email(email),
        # Without a username the store derives a free one from the email (owner, owner-2).
        lambda: store.create_user(email, username, full_name),
    )
    membership = await ensure(
        "membership",
        lambda: store.get_membership(org.id, user.id),
        lambda: store.add_membership(org.id, user.id, "owner"),
    )
    api_key, raw_key = await store.create_api_key(user.id, key_name)
    return BootstrapResult(
        org=org,
        workspace=workspace,
        user=user,
        membership=membership,
        api_key=api_key,
        raw_key=raw_key,
        created=tuple(created),
    )
