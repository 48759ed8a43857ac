"""API keys: issued once in the clear, stored as a hash, turned into a principal per request."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import sqlalchemy as sa

from infrastructure.clock import iso, utc_now
from infrastructure.identity import crypto
from infrastructure.identity import queries as q
from infrastructure.identity import validation as check
from infrastructure.identity.base import StoreBase, as_row, new_id
from infrastructure.identity.records import ApiKeyInfo, NotFound, Principal, Role, User

# last_used_at is refreshed at most this often per key: a write on every request would put
# every authenticated read behind SQLite's single writer lock.
LAST_USED_RESOLUTION = timedelta(minutes=5)
# Anything longer cannot be one of our keys; refuse it without touching the database.
MAX_RAW_KEY_LENGTH = 128


class KeyStore(StoreBase):
    async def create_api_key(
        self, user_id: str, name: str, workspace_id: str | None = None
    ) -> tuple[ApiKeyInfo, str]:
        """A new key for `user_id`: its record and the raw key, which exists only in this
        return value (only its SHA-256 is stored), so show it once and drop it."""
        raw_key = crypto.generate_api_key()
        info = ApiKeyInfo(
            id=new_id(),
            user_id=user_id,
            name=check.text(name, "key name"),
            prefix=crypto.display_prefix(raw_key),
            workspace_id=workspace_id,
            created_at=utc_now(),
            revoked_at=None,
            last_used_at=None,
        )
        async with self._write("api key") as conn:
            await self._require(conn, q.USER_BY_ID, "user", p_id=user_id)
            if workspace_id is not None:
                await self._require(conn, q.WS_BY_ID, "workspace", p_id=workspace_id)
            await conn.execute(
                q.INSERT_API_KEY, {**as_row(info), "key_hash": crypto.hash_api_key(raw_key)}
            )
        return info, raw_key

    async def revoke_api_key(self, key_id: str) -> ApiKeyInfo:
        """Revoke a key (idempotent: an already revoked key keeps its first revocation time)."""
        async with self._write("api key") as conn:
            await conn.execute(q.REVOKE_KEY, {"p_id": key_id, "p_now": utc_now()})
            row = (await conn.execute(q.KEY_BY_ID, {"p_id": key_id})).mappings().first()
        if row is None:
            raise NotFound(f"api key {key_id!r}")
        return ApiKeyInfo(**row)

    async def list_api_keys(self, user_id: str) -> list[ApiKeyInfo]:
        return [
            ApiKeyInfo(**row) for row in await self._fetch_all(q.KEYS_OF_USER, p_user_id=user_id)
        ]

    async def authenticate(self, raw_key: str) -> Principal | None:
        """The principal behind a raw key; None for an unknown, revoked or malformed key."""
        if not raw_key.startswith(crypto.API_KEY_PREFIX) or len(raw_key) > MAX_RAW_KEY_LENGTH:
            return None
        async with self._read() as conn:
            found = await conn.execute(q.AUTHENTICATE, {"p_key_hash": crypto.hash_api_key(raw_key)})
            row = found.mappings().first()
            if row is None:
                return None
            role_rows = await conn.execute(q.ROLES_OF_USER, {"p_user_id": row["id"]})
            roles: dict[str, Role] = {org_id: role for org_id, role in role_rows}
        key_org_id = row["key_org_id"]
        if row["key_workspace_id"] is not None:
            # A scoped key acts only in its workspace's org, whatever else its user may do.
            roles = {key_org_id: roles[key_org_id]} if key_org_id in roles else {}
        await self._touch(row["key_id"], row["key_last_used_at"])
        return Principal(
            user=User(**{name: row[name] for name in User.__struct_fields__}),
            roles=roles,
            key_id=row["key_id"],
            key_workspace_id=row["key_workspace_id"],
            key_org_id=key_org_id,
        )

    async def _touch(self, key_id: str, last_used_at: str | None) -> None:
        now = datetime.now(UTC)
        stale = iso(now - LAST_USED_RESOLUTION)
        if last_used_at is not None and last_used_at >= stale:
            return
        try:
            async with self._write() as conn:
                await conn.execute(
                    q.TOUCH_KEY,
                    {
                        "p_id": key_id,
                        "p_stale": stale,
                        "p_now": iso(now),
                    },
                )
        except sa.exc.OperationalError:
            # Bookkeeping only: a busy database must not turn a valid key into a failed request.
            pass
