"""Schema migrations, run through Alembic for both dialects (`assay db upgrade`)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from alembic import command
from alembic.config import Config

MIGRATIONS_DIR = Path(__file__).parent / "migrations"


def alembic_config(database_url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return config


def upgrade_sync(database_url: str, revision: str = "head") -> None:
    command.upgrade(alembic_config(database_url), revision)


async def upgrade(database_url: str, revision: str = "head") -> None:
    """Bring the schema to `revision`; safe to call on an up-to-date database."""
    # Alembic's env.py runs its own event loop for the async engine, so it gets a thread.
    await asyncio.to_thread(upgrade_sync, database_url, revision)


def current_revision(database_url: str) -> str | None:
    """The revision stamped in the database, or None when it was never migrated."""
    import sqlalchemy as sa

    from infrastructure.db.engine import create_engine

    async def read() -> str | None:
        engine = create_engine(database_url)
        try:
            async with engine.connect() as conn:
                has_table = await conn.run_sync(
                    lambda sync: sa.inspect(sync).has_table("alembic_version")
                )
                if not has_table:
                    return None
                return (
                    await conn.execute(sa.text("SELECT version_num FROM alembic_version"))
                ).scalar()
        finally:
            await engine.dispose()

    return asyncio.run(read())
