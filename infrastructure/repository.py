"""Aggregates from their streams, and the one way to append what a command decided.

Every state change, from the API (create, cancel, retry-failed, discard a kept sandbox) or from
a worker (each item transition, a lease expiry), takes the same three steps: load the aggregate
here from its own streams (never from a read model), call a pure `decide` of `domain/`, and
`commit` the events it returned. A commit is one append transaction: the events, the inline
read models and the lease book (`EventStore(in_transaction=...)`), and any side rows of the
command, all or nothing. Each stream is appended at the version it was loaded at, so a command
decided on stale state fails with ConcurrencyConflict instead of overwriting what it missed.

No snapshots: an evaluation's stream holds a handful of events and each item's a dozen or so;
loading one is a single indexed read (scripts/bench_api.py measures the commands end to end).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import msgspec

from domain import evaluation as ev
from domain import item as it
from infrastructure import codec
from infrastructure.db.outage import ride_out
from infrastructure.eventstore import EventLog, RecordedEvent, SideWrite

StreamKey = tuple[str, str]


class LoadedEvaluation(msgspec.Struct, frozen=True, kw_only=True):
    """An evaluation as its streams say: its own state, each item's, and who created it."""

    state: ev.EvaluationState
    items: dict[str, it.ItemState]
    created_by: str | None

    def versions(self) -> dict[StreamKey, int]:
        """What every stream of the aggregate is appended at."""
        versions = {("evaluation", self.state.evaluation_id): self.state.version}
        versions |= {("item", item_id): s.version for item_id, s in self.items.items()}
        return versions


class Repository:
    def __init__(self, store: EventLog) -> None:
        self.store = store

    async def evaluation(self, evaluation_id: str) -> LoadedEvaluation | None:
        records = await self.store.read_stream("evaluation", evaluation_id)
        state: ev.EvaluationState | None = None
        for record in records:
            event = codec.decode(record)
            assert isinstance(event, ev.EVALUATION_EVENTS)
            state = ev.evolve(state, event)
        if state is None:
            return None
        actor = codec.decode_metadata(records[0]).actor
        return LoadedEvaluation(
            state=state,
            items=await self.items(state.item_ids),
            created_by=actor.user_id if actor is not None else None,
        )

    async def item(self, item_id: str) -> it.ItemState | None:
        return (await self.items([item_id])).get(item_id)

    async def items(self, item_ids: Sequence[str]) -> dict[str, it.ItemState]:
        """Items by id, each folded from its own stream (ids without a stream are left out)."""
        found: dict[str, it.ItemState] = {}
        for item_id, records in (await self.store.read_streams("item", item_ids)).items():
            state = it.replay([_item_event(r) for r in records])
            if state is not None:
                found[item_id] = state
        return found

    async def commit(
        self,
        events: Sequence[ev.AnyEvent],
        *,
        versions: Mapping[StreamKey, int],
        metadata: codec.EventMetadata,
        recorded_at: str,
        side_writes: Sequence[SideWrite] = (),
        through_outage: bool = False,
    ) -> list[RecordedEvent]:
        """Append `events` in one transaction, each stream at its loaded version (0: a new
        stream). Raises ConcurrencyConflict when a stream moved since it was loaded, and
        whatever a rule checked in the transaction raises (CapacityExceeded).

        `through_outage`: while the database is away, retry the same append (the same event
        ids, so one that did commit is recognised, never recorded twice) until it is back."""
        appends = codec.to_appends(events, dict(versions), metadata)

        async def append() -> list[RecordedEvent]:
            return await self.store.append(
                appends, recorded_at=recorded_at, side_writes=side_writes
            )

        if through_outage:
            return await ride_out(append, what="append")
        return await append()


def _item_event(record: RecordedEvent) -> it.AnyItemEvent:
    event = codec.decode(record)
    assert isinstance(event, it.ITEM_EVENTS)
    return event
