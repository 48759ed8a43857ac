"""`as_of`: an evaluation and its items as they were at a position or a time.

The answer is the fold of the evaluation's own streams up to that point through the same
`fold` the inline projections use (infrastructure.readmodels), so a past answer and the
answer given at the time agree by construction; analytics are then the same pure function
of those views (domain.analytics).
"""

from __future__ import annotations

from datetime import datetime

import msgspec

from app.services.errors import FieldProblem, InvalidInput, NotFound
from domain.projections import EvaluationView, ItemView
from infrastructure.queries import ReadModelQueries
from infrastructure.readmodels import fold

PAGE = 1000


class AsOf(msgspec.Struct, frozen=True):
    """A position in the log, or a moment (the last event recorded at or before it)."""

    raw: str
    position: int | None = None
    moment: datetime | None = None


def parse_as_of(raw: str) -> AsOf:
    value = raw.strip()
    if value.isdigit():
        return AsOf(raw, position=int(value))
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        moment = None
    if moment is None or moment.tzinfo is None or "T" not in value.upper():
        message = (
            f"as_of must be an event position (a whole number) or an RFC 3339 time with its "
            f"offset, such as 2026-11-30T12:00:00Z; got {raw!r}"
        )
        raise InvalidInput([FieldProblem(loc=["query", "as_of"], msg=message, type="as_of")])
    return AsOf(raw, moment=moment)


class PastEvaluation(msgspec.Struct, frozen=True):
    evaluation: EvaluationView
    items: list[ItemView]  # in position order
    # The log position the state stands at (as asked, or the last event at the asked time),
    # and when the last of the evaluation's events up to it was recorded: what a page says.
    position: int
    recorded_at: str

    def item(self, item_id: str) -> ItemView | None:
        return next((i for i in self.items if i.id == item_id), None)


async def evaluation_as_of(
    queries: ReadModelQueries, evaluation_id: str, as_of: AsOf
) -> PastEvaluation:
    """The evaluation folded from its history up to `as_of`; 404 when it did not exist yet."""
    records = []
    cursor = 0
    while True:
        page = await queries.evaluation_history(evaluation_id, after_position=cursor, limit=PAGE)
        records.extend(page)
        if len(page) < PAGE or (as_of.position is not None and page[-1].position > as_of.position):
            break
        cursor = page[-1].position
    if as_of.moment is not None:
        moment = as_of.moment
        recorded = [r.position for r in records if datetime.fromisoformat(r.recorded_at) <= moment]
        last = max(recorded, default=0)
    else:
        assert as_of.position is not None
        last = as_of.position
    folded = [r for r in records if r.position <= last]
    views = fold(folded)
    evaluation = views.evaluations.get(evaluation_id)
    if evaluation is None:
        raise NotFound(f"evaluation {evaluation_id!r} as of {as_of.raw!r} (it did not exist yet)")
    items = sorted(views.items.values(), key=lambda i: i.position)
    return PastEvaluation(
        evaluation=evaluation, items=items, position=last, recorded_at=folded[-1].recorded_at
    )
