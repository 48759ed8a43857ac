"""`assay serve`: run the HTTP API with uvicorn."""

from __future__ import annotations

import socket

import click
import structlog
import uvicorn

from app.cli.checks import require_ready
from app.logging import configure_logging
from infrastructure.settings import Settings

log = structlog.get_logger("assay.serve")


class _Server(uvicorn.Server):
    """uvicorn's server, saying where it listens once the sockets are bound (uvicorn's own line
    is in its format, and off at our log levels)."""

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started:
            host, port = self.config.host, self.config.port
            shown = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
            log.info("listening", host=host, port=port, url=f"http://{shown}:{port}")


@click.command("serve")
@click.option("--host", default=None, help="Bind address (default ASSAY_HOST or 127.0.0.1).")
@click.option("--port", type=int, default=None, help="Port (default ASSAY_PORT or 8000).")
def serve_command(host: str | None, port: int | None) -> None:
    """Serve the API. The database must be migrated first (`assay db upgrade`)."""
    settings = Settings.from_env()
    require_ready(settings)
    configure_logging(settings.log_level, settings.log_json)
    config = uvicorn.Config(
        "app.main:create_app",
        factory=True,
        host=host or settings.host,
        port=port or settings.port,
        # No logging set-up of uvicorn's own: its records go through configure_logging's
        # handler (JSON like every other line); the access line is the middleware's.
        log_config=None,
        log_level=settings.log_level.lower(),
        # One process does all writing on SQLite (perf-baseline.md); scale out on PostgreSQL
        # by running more `assay serve` processes behind a balancer.
        workers=1,
        access_log=False,
    )
    _Server(config).run()
