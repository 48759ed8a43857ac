"""The identity store: tenants, people, credentials, and what evaluations refer to.

Split by concern: transactions in `base`, API keys in `keys`, secrets in `vault`, statements in
`queries`; this class adds tenants, people, projects and runtimes and is the one to construct.
"""

from __future__ import annotations

from infrastructure.clock import utc_now
from infrastructure.identity import queries as q
from infrastructure.identity import validation as check
from infrastructure.identity.base import as_row, new_id
from infrastructure.identity.keys import KeyStore
from infrastructure.identity.records import (
    AlreadyExists,
    Membership,
    Org,
    Project,
    Runtime,
    User,
    Workspace,
)
from infrastructure.identity.vault import SecretVault

# Rounds of read-free-name-then-insert when concurrent inserts keep taking the name.
USERNAME_RACE_RETRIES = 5


class IdentityStore(KeyStore, SecretVault):
    """Orgs, workspaces, users, memberships, API keys, projects, runtimes and secrets.

    Lookups return None when nothing matches; writes raise `NotFound` for a missing parent,
    `AlreadyExists` for a taken unique name and `InvalidValue` for malformed input. `cipher`
    may be None for callers that never touch secret values (most CLI commands).
    """

    # -- orgs and workspaces ------------------------------------------------------------

    async def create_org(
        self,
        key: str,
        name: str,
        *,
        max_sandbox_runtime_seconds: int | None = None,
        default_sandbox_runtime_seconds: int | None = None,
    ) -> Org:
        now = utc_now()
        org = Org(
            id=new_id(),
            key=check.slug(key, "org key"),
            name=check.text(name, "org name"),
            max_sandbox_runtime_seconds=check.seconds(max_sandbox_runtime_seconds, "max runtime"),
            default_sandbox_runtime_seconds=check.seconds(
                default_sandbox_runtime_seconds, "default runtime"
            ),
            created_at=now,
            updated_at=now,
        )
        async with self._write(f"org {key!r}") as conn:
            await conn.execute(q.INSERT_ORG, as_row(org))
        return org

    async def get_org_by_key(self, key: str) -> Org | None:
        row = await self._fetch_one(q.ORG_BY_KEY, p_key=key)
        return None if row is None else Org(**row)

    async def get_org(self, org_id: str) -> Org | None:
        row = await self._fetch_one(q.ORG_BY_ID, p_id=org_id)
        return None if row is None else Org(**row)

    async def create_workspace(
        self, org_id: str, key: str, name: str, is_default: bool = False
    ) -> Workspace:
        """A workspace and its default project (key `default`); one default workspace per org."""
        now = utc_now()
        ws = Workspace(
            id=new_id(),
            org_id=org_id,
            key=check.slug(key, "workspace key"),
            name=check.text(name, "workspace name"),
            is_default=is_default,
            created_at=now,
            updated_at=now,
        )
        project = _default_project(ws.id, now)
        async with self._write(f"workspace {key!r}") as conn:
            await self._require(conn, q.ORG_BY_ID, "org", p_id=org_id)
            if is_default:
                await conn.execute(q.CLEAR_DEFAULT_WS, {"p_org_id": org_id, "p_now": now})
            await conn.execute(q.INSERT_WORKSPACE, as_row(ws))
            await conn.execute(q.INSERT_PROJECT, as_row(project))
        return ws

    async def get_workspace(self, org_id: str, key: str) -> Workspace | None:
        row = await self._fetch_one(q.WS_BY_KEY, p_org_id=org_id, p_key=key)
        return None if row is None else Workspace(**row)

    async def get_workspace_by_id(self, workspace_id: str) -> Workspace | None:
        row = await self._fetch_one(q.WS_BY_ID, p_id=workspace_id)
        return None if row is None else Workspace(**row)

    async def list_workspaces(self, org_id: str) -> list[Workspace]:
        """The default workspace first, then by key."""
        return [Workspace(**row) for row in await self._fetch_all(q.WS_OF_ORG, p_org_id=org_id)]

    # -- users and memberships ----------------------------------------------------------

    async def create_user(
        self, email: str, username: str | None = None, full_name: str | None = None
    ) -> User:
        """A new user. A username given is taken as it is (`AlreadyExists` when another user
        has it); without one it is derived from the email's local part, with the first free
        numeric suffix when another user has that (`owner`, `owner-2`, ...), so two orgs can
        each have an `owner@` user. `full_name` defaults to the username."""
        if username is not None:
            return await self._insert_user(email, check.username(username), full_name)
        base = check.username_from_email(email)
        for _attempt in range(USERNAME_RACE_RETRIES):
            # base[:56]: a long base is cut to make room for its suffix (see free_username).
            rows = await self._fetch_all(q.USERNAMES_LIKE, p_pattern=q.like_prefix(base[:56]))
            taken = {str(row["username"]) for row in rows}
            try:
                return await self._insert_user(email, check.free_username(base, taken), full_name)
            except AlreadyExists:
                # The unique constraint refused it: either the email is taken (final) or a
                # concurrent insert took the same username between our read and our write.
                if await self.get_user_by_email(email) is not None:
                    raise
        raise AlreadyExists(f"a username derived from {email!r} (kept being taken; try again)")

    async def _insert_user(self, email: str, username: str, full_name: str | None) -> User:
        now = utc_now()
        user = User(
            id=new_id(),
            email=check.email(email),
            username=username,
            full_name=check.text(
                full_name if full_name is not None else username, "full name", allow_empty=True
            ),
            created_at=now,
            updated_at=now,
        )
        async with self._write(f"user with email {user.email!r} or username {username!r}") as conn:
            await conn.execute(q.INSERT_USER, as_row(user))
        return user

    async def get_user(self, user_id: str) -> User | None:
        row = await self._fetch_one(q.USER_BY_ID, p_id=user_id)
        return None if row is None else User(**row)

    async def get_user_by_email(self, email: str) -> User | None:
        row = await self._fetch_one(q.USER_BY_EMAIL, p_email=email.strip().lower())
        return None if row is None else User(**row)

    async def add_membership(self, org_id: str, user_id: str, role: str) -> Membership:
        """Make `user_id` a member of `org_id` with `role`; an existing role is replaced."""
        membership = Membership(
            org_id=org_id, user_id=user_id, role=check.role(role), created_at=utc_now()
        )
        async with self._write("membership") as conn:
            await self._require(conn, q.ORG_BY_ID, "org", p_id=org_id)
            await self._require(conn, q.USER_BY_ID, "user", p_id=user_id)
            await conn.execute(q.UPSERT_MEMBERSHIP[conn.dialect.name], as_row(membership))
            row = await conn.execute(q.MEMBERSHIP, {"p_org_id": org_id, "p_user_id": user_id})
            return Membership(**row.mappings().one())

    async def get_membership(self, org_id: str, user_id: str) -> Membership | None:
        row = await self._fetch_one(q.MEMBERSHIP, p_org_id=org_id, p_user_id=user_id)
        return None if row is None else Membership(**row)

    # -- projects and runtimes ----------------------------------------------------------

    async def create_project(self, workspace_id: str, key: str, name: str) -> Project:
        now = utc_now()
        project = Project(
            id=new_id(),
            workspace_id=workspace_id,
            key=check.slug(key, "project key"),
            name=check.text(name, "project name"),
            is_default=False,
            created_at=now,
            updated_at=now,
        )
        async with self._write(f"project {key!r}") as conn:
            await self._require(conn, q.WS_BY_ID, "workspace", p_id=workspace_id)
            await conn.execute(q.INSERT_PROJECT, as_row(project))
        return project

    async def get_project_by_key(self, workspace_id: str, key: str) -> Project | None:
        row = await self._fetch_one(q.PROJECT_BY_KEY, p_workspace_id=workspace_id, p_key=key)
        return None if row is None else Project(**row)

    async def get_project(self, workspace_id: str, project_id: str) -> Project | None:
        row = await self._fetch_one(q.PROJECT_BY_ID, p_workspace_id=workspace_id, p_id=project_id)
        return None if row is None else Project(**row)

    async def create_runtime(
        self, workspace_id: str, name: str, base_url: str | None = None
    ) -> Runtime:
        now = utc_now()
        runtime = Runtime(
            id=new_id(),
            workspace_id=workspace_id,
            name=check.text(name, "runtime name"),
            base_url=check.base_url(base_url),
            created_at=now,
            updated_at=now,
        )
        async with self._write(f"runtime {runtime.name!r}") as conn:
            await self._require(conn, q.WS_BY_ID, "workspace", p_id=workspace_id)
            await conn.execute(q.INSERT_RUNTIME, as_row(runtime))
        return runtime

    async def get_runtime(self, workspace_id: str, runtime_id: str) -> Runtime | None:
        row = await self._fetch_one(q.RUNTIME_BY_ID, p_workspace_id=workspace_id, p_id=runtime_id)
        return None if row is None else Runtime(**row)

    async def get_runtime_by_name(self, workspace_id: str, name: str) -> Runtime | None:
        row = await self._fetch_one(q.RUNTIME_BY_NAME, p_workspace_id=workspace_id, p_name=name)
        return None if row is None else Runtime(**row)

    async def list_runtimes(self, workspace_id: str) -> list[Runtime]:
        """The workspace's runtimes by name."""
        return [
            Runtime(**row)
            for row in await self._fetch_all(q.RUNTIMES_OF_WS, p_workspace_id=workspace_id)
        ]


def _default_project(workspace_id: str, now: str) -> Project:
    return Project(
        id=new_id(),
        workspace_id=workspace_id,
        key="default",
        name="Default",
        is_default=True,
        created_at=now,
        updated_at=now,
    )
