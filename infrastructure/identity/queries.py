"""Every statement of the identity store, built once at import; callers bind `p_*` parameters.

Parameters are named `p_<column>` so they never collide with the column names SQLAlchemy
reserves for the SET clause of an UPDATE.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from infrastructure.identity.tables import (
    api_keys,
    memberships,
    orgs,
    projects,
    runtimes,
    secrets,
    users,
    workspaces,
)

_b = sa.bindparam


def _one_by(table: sa.Table, *columns: str) -> sa.Select[Any]:
    return sa.select(table).where(*(table.c[name] == _b(f"p_{name}") for name in columns))


INSERT_ORG = orgs.insert()
INSERT_WORKSPACE = workspaces.insert()
INSERT_USER = users.insert()
INSERT_API_KEY = api_keys.insert()
INSERT_PROJECT = projects.insert()
INSERT_RUNTIME = runtimes.insert()
INSERT_SECRET = secrets.insert()

ORG_BY_ID = _one_by(orgs, "id")
ORG_BY_KEY = _one_by(orgs, "key")
WS_BY_ID = _one_by(workspaces, "id")
WS_BY_KEY = _one_by(workspaces, "org_id", "key")
WS_OF_ORG = _one_by(workspaces, "org_id").order_by(workspaces.c.is_default.desc(), workspaces.c.key)
CLEAR_DEFAULT_WS = (
    sa.update(workspaces)
    .where(workspaces.c.org_id == _b("p_org_id"), workspaces.c.is_default.is_(True))
    .values(is_default=False, updated_at=_b("p_now"))
)
USER_BY_ID = _one_by(users, "id")
USER_BY_EMAIL = _one_by(users, "email")
# Usernames a derived one could collide with; bind `like_prefix(...)` (usernames hold no "/").
USERNAMES_LIKE = sa.select(users.c.username).where(
    users.c.username.like(_b("p_pattern"), escape="/")
)


def like_prefix(prefix: str) -> str:
    """A LIKE pattern for values starting with `prefix`, its `_` and `%` taken literally."""
    return prefix.replace("/", "//").replace("_", "/_").replace("%", "/%") + "%"


MEMBERSHIP = _one_by(memberships, "org_id", "user_id")
ROLES_OF_USER = sa.select(memberships.c.org_id, memberships.c.role).where(
    memberships.c.user_id == _b("p_user_id")
)
PROJECT_BY_ID = _one_by(projects, "workspace_id", "id")
PROJECT_BY_KEY = _one_by(projects, "workspace_id", "key")
RUNTIME_BY_ID = _one_by(runtimes, "workspace_id", "id")
RUNTIME_BY_NAME = _one_by(runtimes, "workspace_id", "name")
RUNTIMES_OF_WS = _one_by(runtimes, "workspace_id").order_by(runtimes.c.name)
# Listings never select the hash: nothing derived from a key leaves the store.
KEY_COLUMNS = [c for c in api_keys.c if c.name != "key_hash"]
KEYS_OF_USER = (
    sa.select(*KEY_COLUMNS)
    .where(api_keys.c.user_id == _b("p_user_id"))
    .order_by(api_keys.c.created_at, api_keys.c.id)
)
KEY_BY_ID = sa.select(*KEY_COLUMNS).where(api_keys.c.id == _b("p_id"))
AUTHENTICATE = (
    sa.select(
        users,
        api_keys.c.id.label("key_id"),
        api_keys.c.workspace_id.label("key_workspace_id"),
        api_keys.c.last_used_at.label("key_last_used_at"),
        workspaces.c.org_id.label("key_org_id"),
    )
    .select_from(
        api_keys.join(users, users.c.id == api_keys.c.user_id).outerjoin(
            workspaces, workspaces.c.id == api_keys.c.workspace_id
        )
    )
    .where(api_keys.c.key_hash == _b("p_key_hash"), api_keys.c.revoked_at.is_(None))
)
TOUCH_KEY = (
    sa.update(api_keys)
    .where(
        api_keys.c.id == _b("p_id"),
        sa.or_(api_keys.c.last_used_at.is_(None), api_keys.c.last_used_at < _b("p_stale")),
    )
    .values(last_used_at=_b("p_now"))
)
REVOKE_KEY = (
    sa.update(api_keys)
    .where(api_keys.c.id == _b("p_id"), api_keys.c.revoked_at.is_(None))
    .values(revoked_at=_b("p_now"))
)
# Likewise, only reveal_secret reads the ciphertext.
SECRET_INFO_COLUMNS = [c for c in secrets.c if c.name != "ciphertext"]
SECRETS_OF_USER = (
    sa.select(*SECRET_INFO_COLUMNS)
    .where(secrets.c.user_id == _b("p_user_id"))
    .order_by(secrets.c.name)
)
SECRETS_BY_IDS = (
    sa.select(*SECRET_INFO_COLUMNS)
    .where(secrets.c.user_id == _b("p_user_id"), secrets.c.id.in_(_b("p_ids", expanding=True)))
    .order_by(secrets.c.name)
)
SECRET_CIPHERTEXT = sa.select(secrets.c.ciphertext).where(secrets.c.id == _b("p_id"))


def _upsert_membership(dialect: Any) -> Any:
    stmt = dialect.insert(memberships)
    return stmt.on_conflict_do_update(
        index_elements=[memberships.c.org_id, memberships.c.user_id],
        set_={"role": stmt.excluded.role},
    )


# Both dialects spell "insert or update the role" the same way, but through their own Insert.
UPSERT_MEMBERSHIP = {
    "sqlite": _upsert_membership(sqlite),
    "postgresql": _upsert_membership(postgresql),
}
