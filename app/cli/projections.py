"""`assay projections`: rebuild or verify the read models from the event log."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

import click
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from app.cli.checks import require_migrated
from app.composition import open_store
from infrastructure import rebuild as rebuilding
from infrastructure.db.engine import create_engine
from infrastructure.eventstore import EventStore
from infrastructure.settings import Settings

T = TypeVar("T")


@click.group("projections")
def projection_commands() -> None:
    """Read-model maintenance (safe while the API is serving)."""


def _with_progress(
    database_url: str | None,
    label: str,
    run: Callable[[EventStore, rebuilding.Progress], Awaitable[T]],
) -> T:
    url = database_url or Settings.from_env().database_url
    require_migrated(url)

    async def main() -> T:
        engine = create_engine(url)
        try:
            with Progress(
                TextColumn(label),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                transient=False,
            ) as bar:
                task = bar.add_task(label, total=None)

                def report(done: int, total: int) -> None:
                    bar.update(task, completed=done, total=total)

                store, _leases = open_store(engine)
                try:
                    return await run(store, report)
                finally:
                    await store.close()
        finally:
            await engine.dispose()

    return asyncio.run(main())


@projection_commands.command("rebuild")
@click.option("--database-url", default=None)
def rebuild(database_url: str | None) -> None:
    """Drop every read model and rebuild it from the whole event log."""
    _with_progress(database_url, "rebuilding", rebuilding.rebuild)
    click.echo("read models rebuilt from the event log")


@projection_commands.command("verify")
@click.option("--database-url", default=None)
def verify(database_url: str | None) -> None:
    """Rebuild into scratch tables and report any difference from the live read models."""
    differences = _with_progress(database_url, "verifying", rebuilding.verify)
    if not differences:
        click.echo("read models match the event log")
        return
    for d in differences[:50]:
        click.echo(f"{d.table} {d.id}: {d.problem}")
    raise click.ClickException(f"{len(differences)} read-model row(s) differ from the event log")
