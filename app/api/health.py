"""Liveness and readiness probes for operators and load balancers (no authentication)."""

from __future__ import annotations

from typing import Any

import msgspec
import structlog
from litestar import Request, get

from app.api.context import container_of
from app.errors import ApiError
from infrastructure.db.status import current_revisions, head_revisions

log = structlog.get_logger("assay.health")


class Health(msgspec.Struct, frozen=True, omit_defaults=True):
    status: str
    database: str | None = None
    schema_revision: str | None = None
    last_position: int | None = None
    tasks: int | None = None


@get("/health", tags=["operations"])
async def health() -> Health:
    """The process is up and serving (touches nothing else: a restart is the only cure for a
    failing liveness probe)."""
    return Health(status="ok")


@get("/ready", tags=["operations"])
async def ready(request: Request[Any, Any, Any]) -> Health:
    """Send traffic here: the database answers, its schema is at this code's migration head,
    and the task catalog is loaded. 503 with the error envelope, saying which, otherwise."""
    container = container_of(request)
    try:
        current = await current_revisions(container.engine)
        last = await container.store.last_position()
    except Exception as exc:
        log.warning("not_ready", reason="database unreachable", error=repr(exc))
        raise ApiError(
            503, f"database unreachable ({type(exc).__name__})", headers={"Retry-After": "5"}
        ) from exc
    wanted = head_revisions()
    if current != wanted:
        raise ApiError(
            503,
            f"database schema at {_names(current)}, this code needs {_names(wanted)}: "
            "run `assay db upgrade`",
        )
    tasks = len(container.catalog.names())
    if tasks == 0:
        raise ApiError(503, "no task is loaded: check ASSAY_TASK_PATHS and the shipped tasks/")
    return Health(
        status="ok",
        database="ok",
        schema_revision=_names(current),
        last_position=last,
        tasks=tasks,
    )


def _names(revisions: frozenset[str]) -> str:
    return ",".join(sorted(revisions)) or "none (never migrated)"
