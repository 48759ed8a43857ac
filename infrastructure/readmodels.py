"""Inline read models: evaluation and item rows, folded from events in the append transaction.

`Projector` is the one place that turns events into rows. It runs inside every append (so a
client reads its own writes) and, pointed at scratch tables, it is also what rebuilds and
verifies the read models from the log (`infrastructure.rebuild`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from domain import evaluation as ev
from domain import item as it
from domain.projections import EvaluationView, ItemView, Views, project
from infrastructure import codec
from infrastructure.db.store_tables import evaluation_counts, evaluations, items
from infrastructure.eventstore import RecordedEvent
from infrastructure.list_counts import ListCounts

_encoder = msgspec.json.Encoder()
_evaluation_decoder = msgspec.json.Decoder(EvaluationView)
_item_decoder = msgspec.json.Decoder(ItemView)


def decode_evaluation(doc: str | bytes) -> EvaluationView:
    return _evaluation_decoder.decode(doc)


def decode_item(doc: str | bytes) -> ItemView:
    return _item_decoder.decode(doc)


def evaluation_row(view: EvaluationView) -> dict[str, Any]:
    return {
        "id": view.id,
        "org_id": view.org_id,
        "workspace_id": view.workspace_id,
        "project_id": view.config.project_id,
        "created_by": view.created_by.user_id if view.created_by else None,
        "status": view.status,
        "created_at": view.created_at,
        "last_position": view.last_position,
        "doc": _encoder.encode(view).decode(),
    }


def item_row(view: ItemView) -> dict[str, Any]:
    return {
        "id": view.id,
        "evaluation_id": view.evaluation_id,
        "position": view.position,
        "status": view.status,
        "last_position": view.last_position,
        "doc": _encoder.encode(view).decode(),
    }


# What an event can change in an existing row (ids, owners and creation times never change).
_EVALUATION_UPDATE_KEYS = ("id", "status", "project_id", "last_position", "doc")
_ITEM_UPDATE_KEYS = ("id", "status", "last_position", "doc")


class _Statements:
    """Statements for one pair of tables, built once (building costs more than running)."""

    def __init__(self, evaluation_table: sa.Table, item_table: sa.Table) -> None:
        e, i = evaluation_table, item_table
        self.load_evaluations = sa.select(e.c.doc).where(
            e.c.id.in_(sa.bindparam("ids", expanding=True))
        )
        self.load_items = sa.select(i.c.doc).where(i.c.id.in_(sa.bindparam("ids", expanding=True)))
        self.insert_evaluation = e.insert()
        self.insert_item = i.insert()
        self.update_evaluation = _update_by_id(e, _EVALUATION_UPDATE_KEYS)
        self.update_item = _update_by_id(i, _ITEM_UPDATE_KEYS)


def _update_by_id(table: sa.Table, keys: Sequence[str]) -> sa.Update:
    """UPDATE of `keys` WHERE id matches, bound as b_<column> (executemany over `_prefixed`)."""
    return (
        table.update()
        .where(table.c.id == sa.bindparam("b_id"))
        .values({k: sa.bindparam(f"b_{k}") for k in keys if k != "id"})
    )


def _prefixed(row: dict[str, Any], keys: Sequence[str]) -> dict[str, Any]:
    return {f"b_{k}": row[k] for k in keys}


def fold(recorded: Sequence[RecordedEvent], views: Views | None = None) -> Views:
    """Advance `views` (or empty ones) by the recorded events, in order."""
    views = views if views is not None else Views()
    for record in recorded:
        if record.stream_type in codec.DOMAIN_STREAMS:
            project(views, codec.decode(record), codec.envelope(record))
    return views


@dataclass(frozen=True)
class Fold:
    """One append's projection, handed to the caches after its transaction commits: the
    evaluation views it folded, and the workspaces whose lists changed membership."""

    views: dict[str, EvaluationView] = field(default_factory=dict)
    moved_workspaces: set[str] = field(default_factory=set)


class Projector:
    """Folds recorded events into evaluation and item rows of the given tables."""

    def __init__(
        self,
        evaluation_table: sa.Table = evaluations,
        item_table: sa.Table = items,
        count_table: sa.Table = evaluation_counts,
    ):
        self._sql = _Statements(evaluation_table, item_table)
        self._counts = ListCounts(count_table)
        # The evaluation views of the last fold, stamped with the first and last event ids it
        # folded: after its transaction commits, the view cache takes them (`folded_views`).
        self._last_fold: tuple[str, str, Fold] = ("", "", Fold())

    def folded(self, recorded: Sequence[RecordedEvent]) -> Fold:
        """What the last call folded, if that call folded exactly `recorded` (the events of
        a transaction that committed); else an empty fold. Appends run one transaction at a
        time per store, so the last fold is the committed one's."""
        first, last, fold = self._last_fold
        if recorded and (recorded[0].event_id, recorded[-1].event_id) == (first, last):
            return fold
        return Fold()

    def __call__(self, conn: Connection, recorded: list[RecordedEvent]) -> None:
        """Synchronous, as every append transaction body is (see infrastructure.eventstore);
        from async code: `await conn.run_sync(projector, recorded)`."""
        self._last_fold = ("", "", Fold())
        stamp = (recorded[0].event_id, recorded[-1].event_id) if recorded else ("", "")
        recorded = [r for r in recorded if r.stream_type in codec.DOMAIN_STREAMS]
        if not recorded:  # other streams (the registry's, the log's own): nothing to fold
            return
        decoded = [codec.decode(r) for r in recorded]
        created_evaluations = {
            e.evaluation_id for e in decoded if isinstance(e, ev.EvaluationCreated)
        }
        created_items = {e.item_id for e in decoded if isinstance(e, it.ItemQueued)}
        touched_items = {
            e.item_id for e in decoded if isinstance(e, it.ITEM_EVENTS)
        } - created_items
        touched_evaluations = {e.evaluation_id for e in decoded} - created_evaluations

        views = Views()
        if touched_evaluations:
            result = conn.execute(self._sql.load_evaluations, {"ids": sorted(touched_evaluations)})
            for (doc,) in result.all():
                view = decode_evaluation(doc)
                views.evaluations[view.id] = view
        if touched_items:
            result = conn.execute(self._sql.load_items, {"ids": sorted(touched_items)})
            for (doc,) in result.all():
                item_view = decode_item(doc)
                views.items[item_view.id] = item_view
        existing_evaluations = set(views.evaluations)
        loaded_evaluations = dict(views.evaluations)
        existing_items = set(views.items)

        for event, record in zip(decoded, recorded, strict=True):
            project(views, event, codec.envelope(record))

        # List totals and ranks (infrastructure.list_counts), in this same transaction.
        ranks, moved = self._counts.apply(conn, loaded_evaluations, views.evaluations)
        self._write(
            conn,
            [
                {**evaluation_row(v), **ranks[k]}
                for k, v in views.evaluations.items()
                if k not in existing_evaluations
            ],
            [evaluation_row(v) for k, v in views.evaluations.items() if k in existing_evaluations],
            [item_row(v) for k, v in views.items.items() if k not in existing_items],
            [item_row(v) for k, v in views.items.items() if k in existing_items],
        )
        self._last_fold = (*stamp, Fold(views.evaluations, moved))

    def _write(
        self,
        conn: Connection,
        new_evaluations: list[dict[str, Any]],
        changed_evaluations: list[dict[str, Any]],
        new_items: list[dict[str, Any]],
        changed_items: list[dict[str, Any]],
    ) -> None:
        sql = self._sql
        if new_evaluations:
            conn.execute(sql.insert_evaluation, new_evaluations)
        if changed_evaluations:
            conn.execute(
                sql.update_evaluation,
                [_prefixed(r, _EVALUATION_UPDATE_KEYS) for r in changed_evaluations],
            )
        if new_items:
            conn.execute(sql.insert_item, new_items)
        if changed_items:
            conn.execute(sql.update_item, [_prefixed(r, _ITEM_UPDATE_KEYS) for r in changed_items])
