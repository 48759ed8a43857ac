"""Backend fixtures: every storage test runs on SQLite and on a real PostgreSQL.

PostgreSQL comes from ASSAY_TEST_PG_URL (default: the local trust-auth server). Without it the
PostgreSQL cases skip with the reason printed; under CI (CI=true) they fail instead of skipping.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from infrastructure.db.engine import create_engine
from infrastructure.db.migrate import upgrade_sync
from tests.ci import unavailable

PG_ADMIN_URL = os.environ.get("ASSAY_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
BACKENDS = ["sqlite", "postgresql"]


def _pg_unavailable_reason() -> str | None:
    async def probe() -> None:
        conn = await asyncpg.connect(PG_ADMIN_URL, timeout=3)
        await conn.close()

    try:
        asyncio.run(probe())
    except Exception as exc:
        return f"PostgreSQL at {PG_ADMIN_URL} is unreachable ({type(exc).__name__}: {exc})"
    return None


class PgDatabases:
    """Creates throw-away databases from one migrated template (fast: a file copy per test)."""

    def __init__(self) -> None:
        self.template = f"assay_tpl_{uuid.uuid4().hex[:8]}"
        self.created: list[str] = [self.template]
        self._admin_base = PG_ADMIN_URL.rsplit("/", 1)[0]
        asyncio.run(self._exec(f'CREATE DATABASE "{self.template}"'))
        upgrade_sync(self.url_for(self.template))

    def url_for(self, name: str) -> str:
        return f"postgresql+asyncpg://{self._admin_base.split('://', 1)[1]}/{name}"

    async def _exec(self, sql: str) -> None:
        conn = await asyncpg.connect(PG_ADMIN_URL)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    def new_database(self) -> str:
        name = f"assay_t_{uuid.uuid4().hex[:12]}"
        asyncio.run(self._exec(f'CREATE DATABASE "{name}" TEMPLATE "{self.template}"'))
        self.created.append(name)
        return self.url_for(name)

    def drop_all(self) -> None:
        for name in reversed(self.created):
            asyncio.run(self._exec(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(scope="session")
def pg_databases() -> Iterator[PgDatabases]:
    reason = _pg_unavailable_reason()
    if reason:
        unavailable("PostgreSQL", reason)
    dbs = PgDatabases()
    yield dbs
    dbs.drop_all()


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("sqlite-template") / "template.db"
    upgrade_sync(f"sqlite+aiosqlite:///{path}")
    return path


@pytest.fixture(params=BACKENDS)
def database_url(request: pytest.FixtureRequest, tmp_path: Path, sqlite_template: Path) -> str:
    """A freshly migrated, empty database of each backend."""
    if request.param == "sqlite":
        target = tmp_path / "assay.db"
        target.write_bytes(sqlite_template.read_bytes())
        return f"sqlite+aiosqlite:///{target}"
    dbs: PgDatabases = request.getfixturevalue("pg_databases")
    return dbs.new_database()


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    eng = create_engine(database_url)
    yield eng
    await eng.dispose()
