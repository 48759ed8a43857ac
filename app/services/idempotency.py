"""`Idempotency-Key` on create: the same key with the same request answers the evaluation the
first request created; the same key with another request is refused (IdempotencyKeyReused).

Keys belong to a caller (the user behind the API key) and are kept KEEP_FOR. The key's row is
written in the append transaction of the evaluation it created, under a primary key of
(caller, key): of two concurrent requests with one key, the second append fails as a whole,
and the second request then finds the first one's row and answers its evaluation.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from datetime import datetime, timedelta

import msgspec

from infrastructure.clock import Clock, iso
from infrastructure.eventstore import SideWrite
from infrastructure.idempotency import IdempotencyKeys, StoredKey

KEEP_FOR = timedelta(hours=24)
MAX_KEY_LENGTH = 255


class IdempotencyKeyReused(Exception):
    """The key was used by this caller, within KEEP_FOR, for a different request."""


class InvalidIdempotencyKey(Exception):
    """The header is empty, too long or not printable ASCII."""


def fingerprint(workspace_id: str, request: object) -> str:
    """What makes two requests "the same": their workspace and body, keys sorted (a client
    that re-serialises its body in another key order sends the same request)."""
    body = msgspec.json.encode([workspace_id, request], order="sorted")
    return hashlib.sha256(body).hexdigest()


class IdempotentCreate:
    """One create request that carries a key."""

    def __init__(
        self,
        keys: IdempotencyKeys,
        now: Callable[[], datetime],
        caller_id: str,
        key: str,
        fingerprint: str,
    ) -> None:
        self._keys = keys
        self._now = now
        self.caller_id = caller_id
        self.key = key
        self.fingerprint = fingerprint

    async def earlier(self) -> str | None:
        """The evaluation this key created before, or None; IdempotencyKeyReused when it was
        used for another request."""
        stored = await self._keys.find(self.caller_id, self.key, since=self._expired_before())
        if stored is None:
            return None
        if stored.fingerprint != self.fingerprint:
            raise IdempotencyKeyReused(
                f"Already exists: Idempotency-Key {self.key!r} was used for another request "
                f"(evaluation {stored.evaluation_id}); use a new key for a new request"
            )
        return stored.evaluation_id

    def record(self, evaluation_id: str) -> SideWrite:
        stored = StoredKey(
            fingerprint=self.fingerprint, evaluation_id=evaluation_id, created_at=iso(self._now())
        )
        return self._keys.record(
            self.caller_id, self.key, stored, expired_before=self._expired_before()
        )

    def _expired_before(self) -> str:
        return iso(self._now() - KEEP_FOR)


class Idempotency:
    def __init__(self, keys: IdempotencyKeys, now: Clock) -> None:
        self._keys = keys
        self._now = now

    def begin(
        self, caller_id: str, key: str | None, workspace_id: str, request: object
    ) -> IdempotentCreate | None:
        """None without a key; the request's handle otherwise (InvalidIdempotencyKey for a
        malformed one)."""
        if key is None:
            return None
        if not key or len(key) > MAX_KEY_LENGTH or not key.isascii() or not key.isprintable():
            raise InvalidIdempotencyKey(
                f"Idempotency-Key must be 1 to {MAX_KEY_LENGTH} printable ASCII characters"
            )
        return IdempotentCreate(
            self._keys, self._now, caller_id, key, fingerprint(workspace_id, request)
        )
