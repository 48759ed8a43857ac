"""Read-side queries over the inline read models and the log (never replays history)."""

from __future__ import annotations

from collections.abc import Sequence

import msgspec
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from domain.projections import EvaluationView, ItemView
from infrastructure.db.store_tables import evaluations, events, items
from infrastructure.eventstore import RecordedEvent
from infrastructure.ids import HEX, MIN_PREFIX, normalise_prefix
from infrastructure.readmodels import decode_evaluation, decode_item
from infrastructure.view_cache import ViewCache


class AmbiguousId(Exception):
    def __init__(self, prefix: str) -> None:
        super().__init__(f"id prefix {prefix!r} matches more than one resource; type more of it")


class IdPrefixTooShort(Exception):
    """A hex string shorter than MIN_PREFIX: it may well be the start of a real id, so "not
    found" would mislead; the answer says how long a prefix must be."""

    def __init__(self, prefix: str) -> None:
        super().__init__(
            f"id prefix {prefix!r} is too short: give at least {MIN_PREFIX} characters of the id"
        )


class Page(msgspec.Struct, frozen=True):
    items: list[EvaluationView]
    total: int


def _prefix_range(column: sa.ColumnElement[str], prefix: str) -> sa.ColumnElement[bool]:
    # A range instead of LIKE: it uses the primary-key index on both dialects.
    return sa.and_(column >= prefix, column < prefix + "\uffff")


_EVALUATION_BY_ID = sa.select(evaluations.c.doc).where(evaluations.c.id == sa.bindparam("id"))
_EVALUATION_IDS_BY_PREFIX = (
    sa.select(evaluations.c.id)
    .where(
        evaluations.c.workspace_id == sa.bindparam("workspace_id"),
        _prefix_range(evaluations.c.id, sa.bindparam("prefix")),  # type: ignore[arg-type]
    )
    .limit(2)
)
_ITEM_IDS_BY_PREFIX = (
    sa.select(items.c.id)
    .where(
        items.c.evaluation_id == sa.bindparam("evaluation_id"),
        _prefix_range(items.c.id, sa.bindparam("prefix")),  # type: ignore[arg-type]
    )
    .limit(2)
)
_ITEM_BY_ID = sa.select(items.c.doc).where(
    items.c.id == sa.bindparam("id"), items.c.evaluation_id == sa.bindparam("evaluation_id")
)
_ITEM_IDS_OF = sa.select(items.c.id).where(items.c.evaluation_id == sa.bindparam("evaluation_id"))


class ReadModelQueries:
    def __init__(self, engine: AsyncEngine, cache: ViewCache | None = None) -> None:
        # Reads are single statements: no transaction (no BEGIN/ROLLBACK round trips).
        self.engine = engine.execution_options(isolation_level="AUTOCOMMIT")
        self.cache = cache or ViewCache(ttl_seconds=0)

    async def evaluation(self, evaluation_id: str) -> EvaluationView | None:
        cached = self.cache.get(evaluation_id)
        if cached is not None:
            return cached
        started = self.cache.begin_read()
        view: EvaluationView | None = None
        try:
            async with self.engine.connect() as conn:
                doc = (await conn.execute(_EVALUATION_BY_ID, {"id": evaluation_id})).scalar()
            view = decode_evaluation(doc) if doc is not None else None
        finally:
            self.cache.end_read(started, view)
        return view

    async def resolve_evaluation_id(self, workspace_id: str, raw: str) -> str | None:
        """The full id of the workspace's evaluation that `raw` names (an id or a prefix)."""
        return await self._resolve(_EVALUATION_IDS_BY_PREFIX, {"workspace_id": workspace_id}, raw)

    async def resolve_item_id(self, evaluation_id: str, raw: str) -> str | None:
        return await self._resolve(_ITEM_IDS_BY_PREFIX, {"evaluation_id": evaluation_id}, raw)

    async def _resolve(
        self, statement: sa.Select[tuple[str]], scope: dict[str, str], raw: str
    ) -> str | None:
        prefix = normalise_prefix(raw)
        if prefix is None:
            short = raw.strip().lower()
            if short and len(short) < MIN_PREFIX and set(short) <= HEX:
                raise IdPrefixTooShort(raw.strip())
            return None
        if len(prefix) == 36:
            return prefix  # a whole id: the caller's lookup by id decides whether it exists
        async with self.engine.connect() as conn:
            found = (await conn.execute(statement, {**scope, "prefix": prefix})).scalars().all()
        if len(found) > 1:
            raise AmbiguousId(raw)
        return str(found[0]) if found else None

    async def list_evaluations(
        self,
        workspace_id: str,
        *,
        page: int,
        page_size: int,
        status: str | None = None,
        project_id: str | None = None,
    ) -> Page:
        conditions = [evaluations.c.workspace_id == workspace_id]
        if status is not None:
            conditions.append(evaluations.c.status == status)
        if project_id is not None:
            conditions.append(evaluations.c.project_id == project_id)
        query = (
            sa.select(evaluations.c.doc)
            .where(*conditions)
            .order_by(evaluations.c.created_at.desc(), evaluations.c.id.desc())
            .limit(page_size)
            .offset((page - 1) * page_size)
        )
        count = sa.select(sa.func.count()).select_from(evaluations).where(*conditions)
        async with self.engine.connect() as conn:
            docs = (await conn.execute(query)).scalars().all()
            total = int((await conn.execute(count)).scalar_one())
        return Page(items=[decode_evaluation(d) for d in docs], total=total)

    async def items(self, evaluation_id: str, *, status: str | None = None) -> list[ItemView]:
        query = sa.select(items.c.doc).where(items.c.evaluation_id == evaluation_id)
        if status is not None:
            query = query.where(items.c.status == status)
        async with self.engine.connect() as conn:
            docs = (await conn.execute(query.order_by(items.c.position))).scalars().all()
        return [decode_item(d) for d in docs]

    async def item(self, evaluation_id: str, item_id: str) -> ItemView | None:
        async with self.engine.connect() as conn:
            doc = (
                await conn.execute(_ITEM_BY_ID, {"id": item_id, "evaluation_id": evaluation_id})
            ).scalar()
        return decode_item(doc) if doc is not None else None

    async def sandbox_items(
        self,
        workspace_ids: Sequence[str],
        *,
        id_prefix: str | None = None,
        limit: int | None = None,
    ) -> list[tuple[EvaluationView, ItemView]]:
        """Items of the workspaces that had a sandbox (every status from provisioning on),
        with their evaluations, most recently changed first; `id_prefix` narrows to item ids
        starting with it."""
        conditions: list[sa.ColumnElement[bool]] = [
            evaluations.c.workspace_id.in_(list(workspace_ids)),
            items.c.status.not_in(["queued", "claiming"]),
        ]
        if id_prefix is not None:
            conditions.append(_prefix_range(items.c.id, id_prefix))
        query = (
            sa.select(evaluations.c.doc, items.c.doc)
            .select_from(items.join(evaluations, items.c.evaluation_id == evaluations.c.id))
            .where(*conditions)
            .order_by(items.c.last_position.desc())
        )
        if limit is not None:
            query = query.limit(limit)
        async with self.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        found: list[tuple[EvaluationView, ItemView]] = []
        evaluation_views: dict[str, EvaluationView] = {}
        for evaluation_doc, item_doc in rows:
            item = decode_item(item_doc)
            evaluation = evaluation_views.get(item.evaluation_id)
            if evaluation is None:
                evaluation = evaluation_views[item.evaluation_id] = decode_evaluation(
                    evaluation_doc
                )
            found.append((evaluation, item))
        return found

    async def evaluation_history(
        self, evaluation_id: str, *, after_position: int = 0, limit: int = 1000
    ) -> list[RecordedEvent]:
        """The evaluation's own events and its items' events, in global order."""
        async with self.engine.connect() as conn:
            item_ids: Sequence[str] = (
                (await conn.execute(_ITEM_IDS_OF, {"evaluation_id": evaluation_id})).scalars().all()
            )
            query = (
                sa.select(*events.c)
                .where(
                    events.c.position > after_position,
                    sa.or_(
                        sa.and_(
                            events.c.stream_type == "evaluation",
                            events.c.stream_id == evaluation_id,
                        ),
                        sa.and_(events.c.stream_type == "item", events.c.stream_id.in_(item_ids)),
                    ),
                )
                .order_by(events.c.position)
                .limit(limit)
            )
            rows = (await conn.execute(query)).all()
        return [RecordedEvent(**row._mapping) for row in rows]
