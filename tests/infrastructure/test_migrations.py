"""The Alembic migrations produce exactly the schema the code's table definitions describe."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy.ext.asyncio import AsyncEngine

from infrastructure.db.migrate import current_revision, upgrade
from infrastructure.db.tables import metadata


async def test_migrated_schema_has_no_drift_from_table_definitions(engine: AsyncEngine) -> None:
    async with engine.connect() as conn:
        drift = await conn.run_sync(
            lambda sync: compare_metadata(MigrationContext.configure(sync), metadata)
        )
    assert drift == []


async def test_upgrade_is_safe_to_run_again(database_url: str) -> None:
    await upgrade(database_url)
    await upgrade(database_url)


def test_fresh_database_reports_no_revision_until_migrated(tmp_path: object) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path}/fresh.db"
    assert current_revision(url) is None
    from infrastructure.db.migrate import upgrade_sync

    upgrade_sync(url)
    assert current_revision(url) == "0004"
