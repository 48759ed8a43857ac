"""create_app(): the HTTP application (routes, errors, middleware, lifespan) around a container
built by the composition root, `app.composition`."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from litestar import Litestar, Request
from litestar.config.app import AppConfig
from litestar.middleware.rate_limit import RateLimitConfig, get_remote_address
from litestar.openapi import OpenAPIConfig
from litestar.types import ControllerRouterHandler

from app.api.capabilities import CapabilityController
from app.api.evaluations import EvaluationController
from app.api.feed import FeedController
from app.api.health import health, ready
from app.api.metrics import metrics_endpoint
from app.api.oci import ClientRegistryController, RegistryController
from app.api.runtimes import RuntimeController
from app.api.sandboxes import SandboxController
from app.api.scope import ScopeController
from app.api.streams import StreamController
from app.api.task_problems import TaskProblemController
from app.api.task_sets import TaskSetController
from app.api.tasks import TaskController
from app.auth import raw_key_of
from app.body_limits import depth_limited_request
from app.composition import build_container
from app.container import Container
from app.errors import handle_exception
from app.logging import configure_logging
from app.middleware import request_middleware
from app.web import api_docs_plugin, template_config, web_routes
from app.worker.pool import SandboxUnavailable
from infrastructure.settings import Settings

ROUTES: list[ControllerRouterHandler] = [
    EvaluationController,
    ScopeController,
    TaskController,
    TaskSetController,
    RegistryController,
    ClientRegistryController,
    SandboxController,
    RuntimeController,
    CapabilityController,
    TaskProblemController,
    FeedController,
    StreamController,
    health,
    ready,
    metrics_endpoint,
]


def _rate_limit_identity(request: Request[Any, Any, Any]) -> str:
    """Limits count per API key (hashed: keys never sit in memory stores), else per address."""
    raw = raw_key_of(request)
    if raw is None:
        return f"addr:{get_remote_address(request)}"
    return "key:" + hashlib.sha256(raw.encode()).hexdigest()


def create_app(settings: Settings | None = None, container: Container | None = None) -> Litestar:
    settings = settings or Settings.from_env()
    configure_logging(settings.log_level, settings.log_json)

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        built = container or build_container(settings)
        app.state.container = built
        # The embedded set-up runs its worker in the server process (ASSAY_WORKERS=0: none).
        pool = built.worker_pool(settings.workers) if settings.workers > 0 else None
        if pool is not None:
            try:
                await pool.start()
            except SandboxUnavailable:
                pool = None  # logged with its fix; the API serves, items wait for a worker
        tail = asyncio.create_task(built.follow_log(), name="log-tail")
        try:
            yield
        finally:
            tail.cancel()
            if pool is not None:
                await pool.stop()
            await built.close()

    middleware: list[Any] = []
    if settings.rate_limit > 0:
        middleware.append(
            RateLimitConfig(
                rate_limit=("minute", settings.rate_limit),
                identifier_for_request=_rate_limit_identity,
                exclude=["/health", "/ready", "/metrics", "/schema", "/static", "/vendor"],
            ).middleware
        )

    return Litestar(
        route_handlers=[*ROUTES, *web_routes(settings)],
        template_config=template_config(),
        lifespan=[lifespan],
        middleware=[request_middleware(settings.min_client_version), *middleware],
        exception_handlers={Exception: handle_exception},
        request_max_body_size=settings.max_body_bytes,
        request_class=depth_limited_request(settings.max_json_depth),
        openapi_config=OpenAPIConfig(
            title="Assay evaluation API",
            version="1.0.0",
            description=(
                "Event-sourced evaluation jobs for AI security agents; wire-compatible with "
                "Dreadnode's evaluation API. Errors share one envelope: "
                "{code, detail, type, errors?, request_id}."
            ),
            path="/schema",
            render_plugins=[api_docs_plugin()],
        ),
        on_app_init=[_no_debug],
        debug=False,
        # Litestar would install a handler of its own: its records go through the root
        # handler configure_logging set up, in the same JSON as everything else.
        logging_config=None,
    )


def _no_debug(config: AppConfig) -> AppConfig:
    # Debug mode would put tracebacks into response bodies; never, whatever the environment says.
    config.debug = False
    return config
