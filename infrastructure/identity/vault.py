"""Secrets: values encrypted with Fernet at rest, shown masked, revealed only to the worker."""

from __future__ import annotations

from collections.abc import Sequence

from cryptography.fernet import Fernet, InvalidToken

from infrastructure.clock import utc_now
from infrastructure.identity import crypto
from infrastructure.identity import queries as q
from infrastructure.identity import validation as check
from infrastructure.identity.base import StoreBase, as_row, new_id
from infrastructure.identity.records import IdentityError, NotFound, SecretInfo


class SecretVault(StoreBase):
    def _require_cipher(self) -> Fernet:
        if self._cipher is None:
            raise IdentityError("no secret encryption key is configured for this store")
        return self._cipher

    async def create_secret(self, user_id: str, name: str, provider: str, value: str) -> SecretInfo:
        """Store `value` encrypted; the returned record (and every listing) shows only a mask."""
        cipher = self._require_cipher()
        check.secret_value(value)
        now = utc_now()
        info = SecretInfo(
            id=new_id(),
            user_id=user_id,
            name=check.secret_name(name),
            provider=check.provider(provider),
            masked_value=crypto.mask_value(value),
            created_at=now,
            updated_at=now,
        )
        ciphertext = cipher.encrypt(value.encode("utf-8")).decode("ascii")
        async with self._write(f"secret {name!r}") as conn:
            await self._require(conn, q.USER_BY_ID, "user", p_id=user_id)
            await conn.execute(q.INSERT_SECRET, {**as_row(info), "ciphertext": ciphertext})
        return info

    async def list_secrets(self, user_id: str) -> list[SecretInfo]:
        return [
            SecretInfo(**row) for row in await self._fetch_all(q.SECRETS_OF_USER, p_user_id=user_id)
        ]

    async def get_secrets(self, user_id: str, ids: Sequence[str]) -> list[SecretInfo]:
        """Those of `ids` that belong to `user_id`, by name. Fewer results than distinct ids
        means some are unknown or another user's: the caller answers 404 either way."""
        if not ids:
            return []
        rows = await self._fetch_all(q.SECRETS_BY_IDS, p_user_id=user_id, p_ids=list(set(ids)))
        return [SecretInfo(**row) for row in rows]

    async def reveal_secret(self, secret_id: str) -> str:
        """The plaintext, for the worker that hands it to an agent. Never log or store it."""
        cipher = self._require_cipher()
        row = await self._fetch_one(q.SECRET_CIPHERTEXT, p_id=secret_id)
        if row is None:
            raise NotFound(f"secret {secret_id!r}")
        try:
            return cipher.decrypt(row["ciphertext"].encode("ascii")).decode("utf-8")
        except InvalidToken:
            raise IdentityError(
                f"secret {secret_id!r} cannot be decrypted with the configured secret key"
            ) from None
