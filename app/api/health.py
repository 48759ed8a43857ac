"""Liveness and readiness probes for operators and load balancers (no authentication)."""

from __future__ import annotations

from typing import Any

import msgspec
import sqlalchemy as sa
from litestar import Request, Response, get

from app.api.context import container_of


class Health(msgspec.Struct, frozen=True, omit_defaults=True):
    status: str
    database: str | None = None
    schema_revision: str | None = None
    last_position: int | None = None
    detail: str | None = None


@get("/health", tags=["operations"])
async def health() -> Health:
    """The process is up and serving."""
    return Health(status="ok")


@get("/ready", tags=["operations"])
async def ready(request: Request[Any, Any, Any]) -> Response[Health]:
    """The database answers and its schema is migrated; 503 otherwise."""
    container = container_of(request)
    try:
        async with container.engine.connect() as conn:
            revision = (
                await conn.execute(sa.text("SELECT version_num FROM alembic_version"))
            ).scalar()
        last = await container.store.last_position()
    except Exception as exc:
        body = Health(status="unavailable", database="unreachable", detail=type(exc).__name__)
        return Response(body, status_code=503)
    return Response(
        Health(status="ok", database="ok", schema_revision=revision, last_position=last)
    )
