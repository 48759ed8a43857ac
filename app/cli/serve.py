"""`assay serve`: run the HTTP API with uvicorn."""

from __future__ import annotations

import click
import uvicorn

from infrastructure.settings import Settings


@click.command("serve")
@click.option("--host", default=None, help="Bind address (default ASSAY_HOST or 127.0.0.1).")
@click.option("--port", type=int, default=None, help="Port (default ASSAY_PORT or 8000).")
def group(host: str | None, port: int | None) -> None:
    """Serve the API. The database must be migrated first (`assay db upgrade`)."""
    settings = Settings.from_env()
    uvicorn.run(
        "app.main:create_app",
        factory=True,
        host=host or settings.host,
        port=port or settings.port,
        log_level="warning",
        # One process does all writing on SQLite (perf-baseline.md); scale out on PostgreSQL
        # by running more `assay serve` processes behind a balancer.
        workers=1,
        access_log=False,
    )
