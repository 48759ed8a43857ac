"""Every filter and order the evaluation list offers is served by an index: the database plans
no temporary sort (SQLite's "TEMP B-TREE", PostgreSQL's Sort node) and no scan of the table,
on both backends, for the first page and a deep one."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from infrastructure.db.store_tables import evaluation_counts, evaluations
from infrastructure.queries import LIST_STATEMENTS, list_parameters

WORKSPACE, OTHER = str(uuid.uuid4()), str(uuid.uuid4())
PROJECT = str(uuid.uuid4())
STATUSES = ("queued", "running", "completed", "cancelled")


async def fill(engine: AsyncEngine, per_workspace: int = 3000) -> None:
    rows = []
    for workspace in (WORKSPACE, OTHER):
        for seq in range(1, per_workspace + 1):
            rows.append(
                {
                    "id": str(uuid.uuid4()),
                    "org_id": workspace,
                    "workspace_id": workspace,
                    "project_id": PROJECT if seq % 3 == 0 else None,
                    "created_by": None,
                    "status": STATUSES[seq % len(STATUSES)],
                    "created_at": f"2026-11-30T00:00:{seq:06d}",
                    "last_position": seq,
                    "doc": "{}",
                    "workspace_seq": seq,
                    "project_seq": seq // 3 if seq % 3 == 0 else None,
                }
            )
    async with engine.begin() as conn:
        await conn.execute(evaluations.insert(), rows)
        await conn.execute(
            evaluation_counts.insert(),
            [
                {"workspace_id": w, "project_id": "", "status": "", "total": per_workspace}
                for w in (WORKSPACE, OTHER)
            ],
        )
    # Statistics and (on PostgreSQL) a visibility map, as a table this size would have.
    async with engine.connect() as conn:
        autocommit = await conn.execution_options(isolation_level="AUTOCOMMIT")
        vacuum = "VACUUM ANALYZE" if engine.dialect.name == "postgresql" else "ANALYZE"
        await autocommit.exec_driver_sql(vacuum)


async def plan(engine: AsyncEngine, statement: sa.Select[Any]) -> str:
    async with engine.connect() as conn:
        sql = str(statement.compile(dialect=conn.dialect, compile_kwargs={"literal_binds": True}))
        prefix = "EXPLAIN QUERY PLAN " if conn.dialect.name == "sqlite" else "EXPLAIN "
        rows = (await conn.exec_driver_sql(prefix + sql)).all()
    return "\n".join(str(row[-1]) for row in rows)


@pytest.mark.parametrize("by_status", [False, True], ids=["any-status", "status"])
@pytest.mark.parametrize("by_project", [False, True], ids=["any-project", "project"])
@pytest.mark.parametrize("page", [1, 5])  # page 5 of the narrowest filter still has rows
async def test_each_list_filter_is_planned_on_an_index_without_a_sort(
    engine: AsyncEngine, by_status: bool, by_project: bool, page: int
) -> None:
    await fill(engine)
    params = list_parameters(
        WORKSPACE, page, 50, "completed" if by_status else None, PROJECT if by_project else None
    )
    statement = LIST_STATEMENTS[(by_status, by_project)].params(params)

    found = await plan(engine, statement)

    if engine.dialect.name == "sqlite":
        assert "TEMP B-TREE" not in found, found
        scans = [line for line in found.splitlines() if "evaluations" in line]
        assert scans and all(line.startswith("SEARCH") for line in scans), found
    else:
        assert "Sort" not in found, found
        assert "Seq Scan on evaluations" not in found, found
