"""What the evaluation list needs beside the rows, kept by the inline projection.

- Totals: one counter per workspace and list filter (status, project, both, none), moved in
  the append transaction as evaluations are created and change status, so a list's `total`
  is one row, never a count(*) over the workspace.
- Ranks: each new evaluation gets `workspace_seq`, its place in its workspace's creation order
  (1, 2, 3... in commit order, no gaps: evaluations are never removed), and `project_seq`, the
  same within its project. The list is newest first, so page N of the unfiltered list (or of
  one project's) starts at rank `total - (N - 1) * page_size`: a seek in
  `ix_evaluations_ws_seq` (`ix_evaluations_ws_project_seq`), as cheap on page 2,000 as on 1.

Both are folds of the same events as the rows, written in the same transaction: a rebuild
(`infrastructure.rebuild`, scratch tables) produces them exactly as the inline path does.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection

from domain.projections import EvaluationView

ANY = ""  # the key part that stands for "not filtered by this"
CountKey = tuple[str, str, str]  # workspace_id, project_id or ANY, status or ANY


def count_keys(view: EvaluationView) -> list[CountKey]:
    """The counters an evaluation is counted in: one per list filter it matches."""
    workspace, project, status = view.workspace_id, view.config.project_id, view.status
    keys = [(workspace, ANY, ANY), (workspace, ANY, status)]
    if project:
        keys += [(workspace, project, ANY), (workspace, project, status)]
    return keys


def count_changes(
    before: Mapping[str, EvaluationView], after: Mapping[str, EvaluationView]
) -> dict[CountKey, int]:
    """How each counter moves when the views in `before` become those in `after`."""
    moves: Counter[CountKey] = Counter()
    for evaluation_id, view in after.items():
        old = before.get(evaluation_id)
        if old is not None and (old.status, old.config.project_id) == (
            view.status,
            view.config.project_id,
        ):
            continue
        if old is not None:
            moves.subtract(count_keys(old))
        moves.update(count_keys(view))
    return {key: n for key, n in sorted(moves.items()) if n}


class ListCounts:
    """Counters and ranks in one table pair (the live ones, or a rebuild's scratch copies)."""

    def __init__(self, count_table: sa.Table) -> None:
        self._table = count_table
        t = count_table
        # Every status-independent counter of the workspaces: theirs and their projects'.
        self._rank_totals = sa.select(t.c.workspace_id, t.c.project_id, t.c.total).where(
            t.c.workspace_id.in_(sa.bindparam("workspaces", expanding=True)),
            t.c.status == ANY,
        )
        self._upserts: dict[str, Any] = {}
        # A counter that drops to zero goes, as if it never was: the rebuild, folding many
        # appends at once, never writes one that nets out to zero, and must equal this path.
        self._drop_empty = t.delete().where(
            t.c.workspace_id == sa.bindparam("b_workspace_id"),
            t.c.project_id == sa.bindparam("b_project_id"),
            t.c.status == sa.bindparam("b_status"),
            t.c.total == 0,
        )

    def _upsert(self, dialect: str) -> Any:
        statement = self._upserts.get(dialect)
        if statement is None:
            insert = (postgresql if dialect == "postgresql" else sqlite).insert(self._table)
            statement = insert.on_conflict_do_update(
                index_elements=[c.name for c in self._table.primary_key],
                set_={"total": self._table.c.total + insert.excluded.total},
            )
            self._upserts[dialect] = statement
        return statement

    @staticmethod
    def _next(last: dict[tuple[str, str], int], key: tuple[str, str]) -> int:
        last[key] = last.get(key, 0) + 1
        return last[key]

    def apply(
        self,
        conn: Connection,
        before: Mapping[str, EvaluationView],
        after: Mapping[str, EvaluationView],
    ) -> tuple[dict[str, dict[str, int | None]], set[str]]:
        """Move the counters from `before` to `after` and rank the evaluations new in `after`
        (in its order, which is creation order); returns the new evaluations' rank columns
        and the workspaces whose lists changed membership. Runs inside the append
        transaction, which serialises appends: ranks never collide."""
        created = [v for k, v in after.items() if k not in before]
        ranks: dict[str, dict[str, int | None]] = {}
        if created:
            workspaces = sorted({v.workspace_id for v in created})
            result = conn.execute(self._rank_totals, {"workspaces": workspaces})
            last: dict[tuple[str, str], int] = {(w, p): int(n) for w, p, n in result.all()}
            for view in created:
                project = view.config.project_id
                ranks[view.id] = {
                    "workspace_seq": self._next(last, (view.workspace_id, ANY)),
                    "project_seq": self._next(last, (view.workspace_id, project))
                    if project
                    else None,
                }
        changes = count_changes(before, after)
        if changes:
            conn.execute(
                self._upsert(conn.dialect.name),
                [
                    {"workspace_id": w, "project_id": p, "status": s, "total": n}
                    for (w, p, s), n in changes.items()
                ],
            )
        lowered = [
            {"b_workspace_id": w, "b_project_id": p, "b_status": s}
            for (w, p, s), n in changes.items()
            if n < 0
        ]
        if lowered:
            conn.execute(self._drop_empty, lowered)
        return ranks, {w for w, _, _ in changes}
