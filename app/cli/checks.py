"""What every command that uses the database checks first, so that a database that is not
there, not migrated or behind the code gives one line and one fix, never a traceback, and
the same line whichever command met it."""

from __future__ import annotations

import click
import sqlalchemy as sa
from alembic.script import ScriptDirectory

from infrastructure.db.migrate import alembic_config, current_revision
from infrastructure.identity.crypto import secret_key_problem
from infrastructure.settings import Settings

UPGRADE_HINT = "run: assay db upgrade"


def head_revision(database_url: str) -> str | None:
    return ScriptDirectory.from_config(alembic_config(database_url)).get_current_head()


def schema_problem(database_url: str) -> str | None:
    """Why the database cannot be used as it is, or None. Never creates a SQLite file."""
    settings = Settings(database_url=database_url)
    db_file = settings.sqlite_path()
    if db_file is not None and not db_file.exists():
        return f"there is no database at {db_file.resolve()}"
    try:
        current = current_revision(database_url)
    except (sa.exc.DBAPIError, OSError) as exc:
        reason = getattr(exc, "orig", None) or exc
        first_line = (str(reason).strip().splitlines() or [type(exc).__name__])[0]
        return f"cannot use the database ({first_line})"
    if current is None:
        return "the database is not migrated"
    head = head_revision(database_url)
    if current != head:
        return f"the database schema is at revision {current}, this version needs {head}"
    return None


def require_migrated(database_url: str) -> None:
    problem = schema_problem(database_url)
    if problem is not None:
        raise click.ClickException(f"{problem}; {UPGRADE_HINT}")


def require_secret_key(settings: Settings) -> None:
    problem = secret_key_problem(settings)
    if problem is not None:
        raise click.ClickException(problem)


def require_ready(settings: Settings) -> None:
    """Before a server or worker starts: its key can be had and its database is migrated."""
    require_secret_key(settings)
    require_migrated(settings.database_url)
