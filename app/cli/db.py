"""`assay db`: schema migrations (Alembic) for SQLite and PostgreSQL."""

from __future__ import annotations

import click

from infrastructure.db.migrate import current_revision, upgrade_sync
from infrastructure.settings import Settings


@click.group("db")
def db_commands() -> None:
    """Database schema commands."""


def _url(database_url: str | None) -> str:
    return database_url or Settings.from_env().database_url


@db_commands.command("upgrade")
@click.option("--database-url", default=None, help="Default: ASSAY_DATABASE_URL or ./assay.db")
@click.option("--revision", default="head", show_default=True)
def upgrade(database_url: str | None, revision: str) -> None:
    """Migrate the schema to REVISION (safe to re-run)."""
    url = _url(database_url)
    try:
        upgrade_sync(url, revision)
    except Exception as exc:
        raise click.ClickException(f"migration failed: {type(exc).__name__}: {exc}") from exc
    click.echo(f"database at revision {current_revision(url)}")


@db_commands.command("current")
@click.option("--database-url", default=None)
def current(database_url: str | None) -> None:
    """Print the schema revision the database is at."""
    click.echo(current_revision(_url(database_url)) or "(not migrated)")
