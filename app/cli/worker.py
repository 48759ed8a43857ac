"""`assay worker`: a worker process that claims and runs items (PostgreSQL: run many)."""

from __future__ import annotations

import asyncio
import contextlib
import signal

import click

from app.cli.checks import require_ready
from app.composition import build_container
from app.logging import configure_logging
from app.worker.metrics_server import MetricsServer
from app.worker.pool import SandboxUnavailable
from infrastructure.settings import Settings


@click.command("worker")
@click.option("--slots", type=int, default=None, help="Items run at once (default ASSAY_WORKERS).")
@click.option(
    "--metrics-port",
    type=int,
    default=None,
    envvar="ASSAY_WORKER_METRICS_PORT",
    help="Serve this worker's Prometheus metrics on this port (default: none).",
)
@click.option(
    "--metrics-host",
    default="127.0.0.1",
    show_default=True,
    envvar="ASSAY_WORKER_METRICS_HOST",
    help="Address the metrics port binds to.",
)
def worker_command(slots: int | None, metrics_port: int | None, metrics_host: str) -> None:
    """Claim queued items and run each in a sandbox until stopped (SIGINT/SIGTERM: claim
    nothing more, let running items finish within ASSAY_SHUTDOWN_GRACE_SECONDS, hand the rest
    back to the queue)."""
    settings = Settings.from_env()
    configure_logging(settings.log_level, settings.log_json)
    slot_count = slots if slots is not None else settings.workers
    if slot_count < 1:
        raise click.ClickException("a worker needs at least one slot (--slots N)")
    require_ready(settings)
    metrics = (
        MetricsServer(metrics_host, metrics_port, settings.metrics_token)
        if metrics_port is not None
        else None
    )

    async def main() -> None:
        container = build_container(settings)
        pool = container.worker_pool(slot_count)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(signum, stop.set)
        try:
            await pool.start()
        except SandboxUnavailable as exc:
            await container.close()
            raise click.ClickException(str(exc)) from None
        try:
            await stop.wait()
        finally:
            await pool.stop()
            await container.close()

    if metrics is not None:
        metrics.start()
    try:
        asyncio.run(main())
    finally:
        if metrics is not None:
            metrics.stop()
