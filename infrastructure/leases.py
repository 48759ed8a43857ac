"""The lease book: which worker holds which in-flight item, until when.

A lease is bookkeeping, not history. The book follows the log inside every append transaction
(a claim opens a lease, an item leaving flight closes it) and there it checks the concurrency
bound, `domain.evaluation.check_concurrency`, against the leases the transaction would leave:
appends are serialised (see infrastructure.eventstore), so no two workers, on any machine, can
jointly put more of an evaluation's items in flight than its `concurrency`. A renewal only moves
`expires_at` here; an expiry is decided on the item's stream like any other transition.
"""

from __future__ import annotations

from collections.abc import Sequence

import msgspec
import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from domain import evaluation as ev
from domain import item as it
from infrastructure import codec
from infrastructure.db.engine import write_transaction
from infrastructure.db.execution_tables import leases
from infrastructure.db.store_tables import events
from infrastructure.eventstore import RecordedEvent


class Lease(msgspec.Struct, frozen=True, kw_only=True):
    item_id: str
    evaluation_id: str
    worker_id: str
    expires_at: str


# Events after which an item is no longer in flight (it ended, or went back to the queue).
_RELEASING = (it.ItemVerdict, it.ItemTimedOut, it.ItemCancelled, it.ItemInfraFailed, it.ItemErrored)

_RELEASE = leases.delete().where(leases.c.item_id == sa.bindparam("b_item_id"))
_OPEN = leases.insert()
_IN_FLIGHT = (
    sa.select(leases.c.evaluation_id, sa.func.count())
    .where(leases.c.evaluation_id.in_(sa.bindparam("ids", expanding=True)))
    .group_by(leases.c.evaluation_id)
)
# An evaluation's concurrency is fixed at create: read once from its first event, then kept.
_CREATED = sa.select(events.c.stream_id, events.c.data).where(
    events.c.stream_type == "evaluation",
    events.c.stream_id.in_(sa.bindparam("ids", expanding=True)),
    events.c.stream_version == 1,
)
_RENEW = (
    leases.update()
    .where(
        leases.c.worker_id == sa.bindparam("b_worker_id"),
        leases.c.item_id.in_(sa.bindparam("b_item_ids", expanding=True)),
    )
    .values(expires_at=sa.bindparam("b_expires_at"))
)
_EXPIRED = (
    sa.select(leases)
    .where(leases.c.expires_at < sa.bindparam("now"))
    .order_by(leases.c.expires_at)
    .limit(sa.bindparam("limit"))
)
_HELD = sa.select(leases).where(leases.c.item_id == sa.bindparam("item_id"))
_CONCURRENCY_MEMO_LIMIT = 4096


class LeaseBook:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self._concurrency: dict[str, int] = {}

    # ---- in the append transaction (synchronous, like every append body) ----

    def follow(self, conn: Connection, recorded: list[RecordedEvent]) -> None:
        """Open and close leases as `recorded` says, then check the concurrency bound of
        every evaluation that gained a claim."""
        changes: dict[str, Lease | None] = {}
        for record in recorded:
            if record.stream_type != "item":
                continue
            event = codec.decode(record)
            if isinstance(event, it.ItemClaimed):
                changes[event.item_id] = Lease(
                    item_id=event.item_id,
                    evaluation_id=event.evaluation_id,
                    worker_id=event.worker_id,
                    expires_at=event.lease_expires_at,
                )
            elif isinstance(event, _RELEASING):
                changes[event.item_id] = None
        if not changes:
            return
        conn.execute(_RELEASE, [{"b_item_id": item_id} for item_id in changes])
        opened = [lease for lease in changes.values() if lease is not None]
        if not opened:
            return
        conn.execute(_OPEN, [msgspec.structs.asdict(lease) for lease in opened])
        claimed = sorted({lease.evaluation_id for lease in opened})
        limits = self._limits(conn, claimed)
        counts: dict[str, int] = dict(conn.execute(_IN_FLIGHT, {"ids": claimed}).all())
        for evaluation_id in claimed:
            ev.check_concurrency(evaluation_id, counts.get(evaluation_id, 0), limits[evaluation_id])

    def _limits(self, conn: Connection, evaluation_ids: Sequence[str]) -> dict[str, int]:
        missing = [e for e in evaluation_ids if e not in self._concurrency]
        if missing:
            if len(self._concurrency) > _CONCURRENCY_MEMO_LIMIT:
                self._concurrency.clear()
            for stream_id, data in conn.execute(_CREATED, {"ids": missing}):
                created = msgspec.json.decode(data)
                self._concurrency[stream_id] = int(created["config"]["concurrency"])
        return {e: self._concurrency[e] for e in evaluation_ids}

    # ---- outside the log ----

    async def renew(self, worker_id: str, item_ids: Sequence[str], until: str) -> None:
        """Move the leases `worker_id` still holds on `item_ids` to `until`; a lease another
        worker took over (after an expiry) is not touched."""
        if not item_ids:
            return
        async with write_transaction(self.engine) as conn:
            await conn.execute(
                _RENEW,
                {"b_worker_id": worker_id, "b_item_ids": list(item_ids), "b_expires_at": until},
            )

    async def expired(self, now: str, limit: int = 100) -> list[Lease]:
        """Leases whose worker stopped renewing them before `now`, oldest first."""
        async with self.engine.connect() as conn:
            rows = (await conn.execute(_EXPIRED, {"now": now, "limit": limit})).mappings().all()
        return [Lease(**row) for row in rows]

    async def held(self, item_id: str) -> Lease | None:
        async with self.engine.connect() as conn:
            row = (await conn.execute(_HELD, {"item_id": item_id})).mappings().first()
        return None if row is None else Lease(**row)
