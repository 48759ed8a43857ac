"""Content-addressed blobs in the database: written once, verified against their digest."""

from __future__ import annotations

import hashlib
import re
import uuid

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from infrastructure.clock import utc_now
from infrastructure.db.engine import write_transaction
from infrastructure.db.registry_tables import registry_blob_orgs, registry_blobs, registry_uploads

DIGEST_PATTERN = re.compile(r"\Asha256:[0-9a-f]{64}\Z")


class DigestInvalid(ValueError):
    """A digest that is malformed, or that the uploaded bytes do not have."""


class UnknownUpload(LookupError):
    """An upload session id that was never opened (or is already finished)."""


def sha256_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def check_digest(digest: str) -> str:
    if not DIGEST_PATTERN.match(digest):
        raise DigestInvalid(f"digest {digest!r} is not of the form sha256:<64 lowercase hex>")
    return digest


class BlobStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def exists(self, org_id: str, digest: str) -> int | None:
        """The blob's size when this org uploaded it, else None."""
        query = (
            sa.select(registry_blobs.c.size)
            .join(registry_blob_orgs, registry_blob_orgs.c.digest == registry_blobs.c.digest)
            .where(registry_blob_orgs.c.org_id == org_id, registry_blobs.c.digest == digest)
        )
        async with self.engine.connect() as conn:
            size = (await conn.execute(query)).scalar_one_or_none()
        return int(size) if size is not None else None

    async def get(self, digest: str) -> bytes | None:
        query = sa.select(registry_blobs.c.data).where(registry_blobs.c.digest == digest)
        async with self.engine.connect() as conn:
            data = (await conn.execute(query)).scalar_one_or_none()
        return bytes(data) if data is not None else None

    async def owned_by(self, digest: str) -> set[str]:
        query = sa.select(registry_blob_orgs.c.org_id).where(registry_blob_orgs.c.digest == digest)
        async with self.engine.connect() as conn:
            return {row[0] for row in (await conn.execute(query)).all()}

    async def put(self, org_id: str, digest: str, data: bytes) -> None:
        """Store `data` under `digest` for `org_id`; DigestInvalid when the bytes differ."""
        check_digest(digest)
        actual = sha256_digest(data)
        if actual != digest:
            raise DigestInvalid(f"the uploaded bytes have digest {actual}, not {digest}")
        for _attempt in range(2):
            try:
                async with write_transaction(self.engine) as conn:
                    known = await conn.execute(
                        sa.select(registry_blobs.c.digest).where(registry_blobs.c.digest == digest)
                    )
                    if known.first() is None:
                        await conn.execute(
                            registry_blobs.insert().values(
                                digest=digest, size=len(data), data=data, created_at=utc_now()
                            )
                        )
                    owned = await conn.execute(
                        sa.select(registry_blob_orgs.c.org_id).where(
                            registry_blob_orgs.c.org_id == org_id,
                            registry_blob_orgs.c.digest == digest,
                        )
                    )
                    if owned.first() is None:
                        await conn.execute(
                            registry_blob_orgs.insert().values(org_id=org_id, digest=digest)
                        )
                return
            except IntegrityError:
                continue  # the same bytes were stored concurrently: look again
        raise RuntimeError(f"could not store blob {digest}")

    # ---- uploads (POST opens, PATCH appends, PUT finishes) ----

    async def open_upload(self, org_id: str, repository: str) -> str:
        upload_id = str(uuid.uuid4())
        async with write_transaction(self.engine) as conn:
            await conn.execute(
                registry_uploads.insert().values(
                    id=upload_id,
                    org_id=org_id,
                    repository=repository,
                    data=b"",
                    created_at=utc_now(),
                )
            )
        return upload_id

    async def append_upload(self, org_id: str, upload_id: str, chunk: bytes) -> int:
        """Append a chunk; returns the bytes received so far."""
        async with write_transaction(self.engine) as conn:
            data = await self._upload_data(conn, org_id, upload_id)
            data += chunk
            await conn.execute(
                registry_uploads.update()
                .where(registry_uploads.c.id == upload_id)
                .values(data=data)
            )
        return len(data)

    async def finish_upload(
        self, org_id: str, upload_id: str, digest: str, last_chunk: bytes
    ) -> None:
        async with self.engine.connect() as conn:
            data = await self._upload_data(conn, org_id, upload_id)
        await self.put(org_id, digest, data + last_chunk)
        async with write_transaction(self.engine) as conn:
            await conn.execute(registry_uploads.delete().where(registry_uploads.c.id == upload_id))

    async def upload_size(self, org_id: str, upload_id: str) -> int:
        async with self.engine.connect() as conn:
            return len(await self._upload_data(conn, org_id, upload_id))

    @staticmethod
    async def _upload_data(conn: AsyncConnection, org_id: str, upload_id: str) -> bytes:
        row = (
            await conn.execute(
                sa.select(registry_uploads.c.data).where(
                    registry_uploads.c.id == upload_id, registry_uploads.c.org_id == org_id
                )
            )
        ).first()
        if row is None:
            raise UnknownUpload(f"upload {upload_id!r} not found")
        return bytes(row[0])
