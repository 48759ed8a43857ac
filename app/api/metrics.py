"""`GET /metrics`: this process's Prometheus metrics, plus figures read from the database at
scrape time (items by state, projection lag). With ASSAY_METRICS_TOKEN set, the scraper must
send it as `Authorization: Bearer <token>`."""

from __future__ import annotations

import hmac
from typing import Any

from litestar import Request, Response, get
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from app.api.context import container_of
from app.errors import ApiError
from domain.item import ITEM_STATUSES
from infrastructure import metrics
from infrastructure.db.status import items_by_state, projection_lag


@get("/metrics", tags=["operations"], include_in_schema=True)
async def metrics_endpoint(request: Request[Any, Any, Any]) -> Response[bytes]:
    """Prometheus text format (see README, "For operators", for the list)."""
    container = container_of(request)
    token = container.settings.metrics_token
    if token is not None:
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip(), token):
            raise ApiError(
                401,
                "metrics need ASSAY_METRICS_TOKEN as `Authorization: Bearer <token>`",
                headers={"WWW-Authenticate": 'Bearer realm="metrics"'},
            )
    # A database that is away answers 503 from here (app/errors.py): the scrape fails visibly
    # rather than reporting stale figures as current.
    metrics.set_items_by_state(await items_by_state(container.engine), ITEM_STATUSES)
    metrics.PROJECTION_LAG.set(await projection_lag(container.engine))
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
