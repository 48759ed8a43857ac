"""What operators ask the database: is it reachable and migrated, how many items are in each
state, and how far the read models are behind the log (readiness and metrics)."""

from __future__ import annotations

from functools import cache

import sqlalchemy as sa
from alembic.script import ScriptDirectory
from sqlalchemy.ext.asyncio import AsyncEngine

from infrastructure.codec import DOMAIN_STREAMS
from infrastructure.db.migrate import alembic_config
from infrastructure.db.store_tables import evaluations, events, items


@cache
def head_revisions() -> frozenset[str]:
    """The revisions this code's migrations end at (read from the migration scripts once)."""
    script = ScriptDirectory.from_config(alembic_config("sqlite://"))
    return frozenset(script.get_heads())


async def current_revisions(engine: AsyncEngine) -> frozenset[str]:
    """The revisions stamped in the database; raises when it cannot be reached."""
    async with engine.connect() as conn:
        has_table = await conn.run_sync(lambda sync: sa.inspect(sync).has_table("alembic_version"))
        if not has_table:
            return frozenset()
        rows = await conn.execute(sa.text("SELECT version_num FROM alembic_version"))
        return frozenset(row[0] for row in rows)


_ITEMS_BY_STATE = sa.select(items.c.status, sa.func.count()).group_by(items.c.status)
_DOMAIN_HEAD = sa.select(sa.func.coalesce(sa.func.max(events.c.position), 0)).where(
    events.c.stream_type.in_(sorted(DOMAIN_STREAMS))
)
_READ_MODEL_HEAD = sa.select(
    sa.func.coalesce(sa.func.max(evaluations.c.last_position), 0),
    sa.select(sa.func.coalesce(sa.func.max(items.c.last_position), 0)).scalar_subquery(),
)


async def items_by_state(engine: AsyncEngine) -> dict[str, int]:
    async with engine.connect() as conn:
        return {status: int(count) for status, count in (await conn.execute(_ITEMS_BY_STATE))}


async def projection_lag(engine: AsyncEngine) -> int:
    """Positions between the last evaluation or item event in the log and the last one the
    read models reflect (their rows carry the position of the last event folded into them)."""
    async with engine.connect() as conn:
        head = int((await conn.execute(_DOMAIN_HEAD)).scalar_one())
        evaluation_head, item_head = (await conn.execute(_READ_MODEL_HEAD)).one()
    return max(0, head - max(int(evaluation_head), int(item_head)))
