"""Which org and which evaluation an event belongs to, and an org's events by position.

Evaluation and item events name their evaluation (`stream_id`, or `evaluation_id` in the
data); registry events (`task`, `task_set`) name their org in the data. An evaluation's org
comes from its `EvaluationCreated` or, for one created before this process saw it, from the
evaluations read model. Other streams (`operations`) belong to no org.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import msgspec
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from domain.projections import EvaluationView
from domain.registry import TASK_STREAM
from domain.task_sets import TASK_SET_STREAM
from infrastructure.db.store_tables import evaluations, events, items
from infrastructure.eventstore import RecordedEvent
from infrastructure.readmodels import decode_evaluation

ORG_STREAMS = (TASK_STREAM, TASK_SET_STREAM)
# Evaluation id -> org id entries a router keeps before starting over (ids never change org).
ORG_CACHE_LIMIT = 100_000


class _Keys(msgspec.Struct):
    org_id: str | None = None
    evaluation_id: str | None = None


_keys = msgspec.json.Decoder(_Keys)


class Routed:
    """A recorded event with its org and evaluation; what one append means to every subscriber.
    `wire` memoises its rendering, so a thousand subscribers encode it once."""

    __slots__ = ("evaluation", "evaluation_id", "org_id", "record", "wire")

    def __init__(self, record: RecordedEvent, org_id: str | None, evaluation_id: str | None):
        self.record = record
        self.org_id = org_id
        self.evaluation_id = evaluation_id
        self.wire: bytes | None = None
        # The evaluation as it was when the tailer read this event's batch (read once for
        # every subscriber), for evaluation streams; None for other events.
        self.evaluation: EvaluationView | None = None


class EventRouter:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self._orgs: dict[str, str] = {}

    async def route(self, records: Sequence[RecordedEvent]) -> list[Routed]:
        routed: list[Routed] = []
        for record in records:
            keys = _keys.decode(record.data)
            evaluation_id = None
            if record.stream_type == "evaluation":
                evaluation_id = record.stream_id
            elif record.stream_type == "item":
                evaluation_id = keys.evaluation_id
            org_id = keys.org_id if record.stream_type in ORG_STREAMS else None
            if evaluation_id is not None and keys.org_id is not None:
                self._learn(evaluation_id, keys.org_id)
            routed.append(Routed(record, org_id, evaluation_id))
        unknown = {
            r.evaluation_id
            for r in routed
            if r.evaluation_id is not None and r.evaluation_id not in self._orgs
        }
        if unknown:
            async with self.engine.connect() as conn:
                found = await conn.execute(
                    sa.select(evaluations.c.id, evaluations.c.org_id).where(
                        evaluations.c.id.in_(sorted(unknown))
                    )
                )
                for evaluation_id, org_id in found.all():
                    self._learn(evaluation_id, org_id)
        for r in routed:
            if r.evaluation_id is not None:
                r.org_id = self._orgs.get(r.evaluation_id)
        return routed

    def _learn(self, evaluation_id: str, org_id: str) -> None:
        if len(self._orgs) >= ORG_CACHE_LIMIT:
            self._orgs.clear()
        self._orgs[evaluation_id] = org_id


def _registry_org(dialect: str) -> sa.ColumnElement[str]:
    """`data.org_id` of a registry event, in each dialect's JSON spelling (data is text)."""
    document = (
        sa.cast(events.c.data, sa.JSON)
        if dialect == "postgresql"
        else sa.type_coerce(events.c.data, sa.JSON)
    )
    org: sa.ColumnElement[str] = document["org_id"].as_string()
    return org


@functools.cache
def org_events_query(dialect: str) -> sa.Select[tuple[RecordedEvent]]:
    """The org's events after `:after`, ascending, at most `:limit` (bind `org_id` too)."""
    owning_evaluation = sa.case(
        (events.c.stream_type == "evaluation", events.c.stream_id), else_=items.c.evaluation_id
    )
    joined = events.outerjoin(
        items, sa.and_(events.c.stream_type == "item", items.c.id == events.c.stream_id)
    ).outerjoin(evaluations, evaluations.c.id == owning_evaluation)
    org: sa.BindParameter[str] = sa.bindparam("org_id")
    return (
        sa.select(*events.c)
        .select_from(joined)
        .where(
            events.c.position > sa.bindparam("after"),
            sa.or_(
                evaluations.c.org_id == org,
                sa.and_(events.c.stream_type.in_(ORG_STREAMS), _registry_org(dialect) == org),
            ),
        )
        .order_by(events.c.position)
        .limit(sa.bindparam("limit"))
    )


async def org_events(
    engine: AsyncEngine, org_id: str, *, after: int, limit: int
) -> list[RecordedEvent]:
    query = org_events_query(engine.dialect.name)
    async with engine.connect() as conn:
        rows = await conn.execute(query, {"org_id": org_id, "after": after, "limit": limit})
        return [RecordedEvent(**row._mapping) for row in rows.all()]


async def current_evaluations(engine: AsyncEngine, ids: Sequence[str]) -> dict[str, EvaluationView]:
    """The evaluations' read models as they are now, in one query."""
    if not ids:
        return {}
    async with engine.connect() as conn:
        docs = await conn.execute(
            sa.select(evaluations.c.doc).where(evaluations.c.id.in_(sorted(ids)))
        )
        found = [decode_evaluation(doc) for (doc,) in docs.all()]
    return {view.id: view for view in found}
