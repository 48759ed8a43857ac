"""Event store conformance: the same behaviour, asserted the same way, on SQLite and PostgreSQL.

Every test runs once per backend through the `engine`/`database_url` fixtures. Tests that model
several processes open extra engines on the same database URL, each with its own EventStore.
"""

from __future__ import annotations

import asyncio
import json
import random
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from domain import evaluation as ev
from infrastructure import codec
from infrastructure.db.append_only import APPEND_ONLY_MESSAGE
from infrastructure.db.engine import create_engine
from infrastructure.db.execution_tables import workers
from infrastructure.eventstore import (
    ConcurrencyConflict,
    EventStore,
    IdempotencyConflict,
    NewEvent,
    RecordedEvent,
    StreamAppend,
)

AT = "2026-11-26T12:00:00.000000Z"
LATER = "2026-11-26T12:00:05.000000Z"


def log_only(conn: Any, recorded: Sequence[RecordedEvent]) -> None:
    """The generic log on its own: these tests append streams no read model folds."""


def new_id() -> str:
    return str(uuid.uuid4())


def make_event(
    n: int = 0, *, event_type: str = "test.happened", schema_version: int = 1, **data: Any
) -> NewEvent:
    return NewEvent(
        event_id=new_id(),
        event_type=event_type,
        data=json.dumps({"n": n, **data}),
        metadata=json.dumps({"request_id": f"req-{n}"}),
        schema_version=schema_version,
    )


def stream(
    stream_id: str, events: Sequence[NewEvent], *, expected: int = 0, stream_type: str = "test"
) -> StreamAppend:
    return StreamAppend(
        stream_type=stream_type, stream_id=stream_id, expected_version=expected, events=list(events)
    )


def event_fields(event: NewEvent | RecordedEvent) -> dict[str, Any]:
    """The fields a NewEvent is made of, taken from a new or a recorded event."""
    return {
        "event_id": event.event_id,
        "event_type": event.event_type,
        "data": event.data,
        "metadata": event.metadata,
        "schema_version": event.schema_version,
    }


async def count_events(store: EventStore) -> int:
    return len(await store.read_all(limit=100_000))


@asynccontextmanager
async def other_process(database_url: str) -> AsyncIterator[EventStore]:
    """A store on its own engine: as far as the database can tell, another process."""
    engine = create_engine(database_url)
    store = EventStore(engine, in_transaction=log_only)
    try:
        yield store
    finally:
        await store.close()
        await engine.dispose()


def assert_matches_input(
    recorded: Sequence[RecordedEvent], append: StreamAppend, recorded_at: str
) -> None:
    assert len(recorded) == len(append.events)
    for offset, (record, sent) in enumerate(zip(recorded, append.events, strict=True), start=1):
        assert record.event_id == sent.event_id
        assert record.stream_type == append.stream_type
        assert record.stream_id == append.stream_id
        assert record.stream_version == append.expected_version + offset
        assert record.event_type == sent.event_type
        assert record.schema_version == sent.schema_version
        assert record.data == sent.data
        assert record.metadata == sent.metadata
        assert record.recorded_at == recorded_at


# ---- round trip ----


async def test_appended_events_read_back_identically_with_increasing_positions(
    engine: AsyncEngine,
) -> None:
    store = EventStore(engine, in_transaction=log_only)
    a, b = new_id(), new_id()
    first = stream(a, [make_event(i, note="ünïcode ✓") for i in range(3)])
    second = stream(b, [make_event(10 + i, event_type="test.other") for i in range(2)])
    recorded = await store.append([first, second], recorded_at=AT)
    assert_matches_input(recorded[:3], first, AT)
    assert_matches_input(recorded[3:], second, AT)

    third = stream(a, [make_event(20, schema_version=3)], expected=3)
    recorded += await store.append([third], recorded_at=LATER)
    assert_matches_input(recorded[5:], third, LATER)

    positions = [r.position for r in recorded]
    assert positions == sorted(positions)
    assert len(set(positions)) == len(positions)

    assert await store.read_all() == recorded
    assert await store.read_stream("test", a) == [*recorded[:3], recorded[5]]
    assert await store.read_stream("test", b) == recorded[3:5]
    assert await store.read_stream("test", a, after_version=2) == [recorded[2], recorded[5]]
    assert await store.read_stream("other-type", a) == []
    unknown = new_id()
    assert await store.read_streams("test", [a, b, unknown]) == {
        a: [*recorded[:3], recorded[5]],
        b: recorded[3:5],
        unknown: [],
    }
    assert await store.read_all(after_position=recorded[1].position, limit=2) == recorded[2:4]
    by_id = await store.events_by_id([recorded[4].event_id, recorded[0].event_id])
    assert sorted(by_id, key=lambda r: r.position) == [recorded[0], recorded[4]]
    assert await store.last_position() == recorded[-1].position


async def test_empty_store_has_no_events_and_last_position_zero(engine: AsyncEngine) -> None:
    store = EventStore(engine, in_transaction=log_only)
    assert await store.read_all() == []
    assert await store.last_position() == 0
    assert await store.read_stream("test", new_id()) == []
    assert await store.events_by_id([new_id()]) == []


# ---- expected-version semantics ----


async def test_new_stream_is_appended_at_expected_version_zero_and_continues_from_its_version(
    engine: AsyncEngine,
) -> None:
    store = EventStore(engine, in_transaction=log_only)
    sid = new_id()
    first = await store.append([stream(sid, [make_event(1), make_event(2)])], recorded_at=AT)
    assert [r.stream_version for r in first] == [1, 2]
    second = await store.append([stream(sid, [make_event(3)], expected=2)], recorded_at=AT)
    assert [r.stream_version for r in second] == [3]
    assert [r.stream_version for r in await store.read_stream("test", sid)] == [1, 2, 3]


@pytest.mark.parametrize(
    ("existing", "expected"),
    [
        pytest.param(2, 0, id="stale-zero-on-existing-stream"),
        pytest.param(2, 1, id="stale-behind-head"),
        pytest.param(2, 3, id="future-one-past-head"),
        pytest.param(2, 7, id="future-far-past-head"),
        pytest.param(0, 1, id="future-on-new-stream"),
    ],
)
async def test_append_at_wrong_expected_version_raises_conflict_and_writes_nothing(
    engine: AsyncEngine, existing: int, expected: int
) -> None:
    store = EventStore(engine, in_transaction=log_only)
    sid = new_id()
    if existing:
        await store.append([stream(sid, [make_event(i) for i in range(existing)])], recorded_at=AT)
    before = await store.read_all()
    last = await store.last_position()

    with pytest.raises(ConcurrencyConflict):
        await store.append([stream(sid, [make_event(9)], expected=expected)], recorded_at=LATER)

    assert await store.read_all() == before
    assert await store.last_position() == last
    # The stream still accepts an append at its real version.
    ok = await store.append([stream(sid, [make_event(10)], expected=existing)], recorded_at=LATER)
    assert [r.stream_version for r in ok] == [existing + 1]


# ---- side writes (rows outside the log that commit with a unit's events) ----


def worker_row_write(worker_id: str, *, fail: bool = False) -> Any:
    def write(conn: Any) -> None:
        conn.execute(
            workers.insert(),
            [
                {
                    "id": worker_id,
                    "hostname": "h",
                    "pid": 1,
                    "slots": 1,
                    "started_at": AT,
                    "heartbeat_at": AT,
                }
            ],
        )
        if fail:
            raise RuntimeError("side write broke")

    return write


async def worker_ids(engine: AsyncEngine) -> set[str]:
    async with engine.connect() as conn:
        return set((await conn.execute(sa.select(workers.c.id))).scalars())


async def test_side_writes_commit_with_their_units_events_and_fail_alone(
    engine: AsyncEngine,
) -> None:
    store = EventStore(engine, in_transaction=log_only)
    good, bad = new_id(), new_id()
    # Both units wait in one batch; the failing one is retried alone and takes nothing with it.
    results = await asyncio.gather(
        store.append(
            [stream(good, [make_event(1)])], recorded_at=AT, side_writes=[worker_row_write("w1")]
        ),
        store.append(
            [stream(bad, [make_event(2)])],
            recorded_at=AT,
            side_writes=[worker_row_write("w2", fail=True)],
        ),
        return_exceptions=True,
    )

    assert isinstance(results[1], RuntimeError)
    assert [r.stream_id for r in await store.read_all()] == [good]
    assert await worker_ids(engine) == {"w1"}


async def test_a_conflicting_append_does_not_run_its_side_writes(engine: AsyncEngine) -> None:
    store = EventStore(engine, in_transaction=log_only)
    sid = new_id()
    await store.append([stream(sid, [make_event(1)])], recorded_at=AT)

    with pytest.raises(ConcurrencyConflict):
        await store.append(
            [stream(sid, [make_event(2)])], recorded_at=AT, side_writes=[worker_row_write("w3")]
        )

    assert await worker_ids(engine) == set()


async def test_multi_stream_append_with_one_wrong_version_writes_nothing_at_all(
    engine: AsyncEngine,
) -> None:
    store = EventStore(engine, in_transaction=log_only)
    existing = new_id()
    await store.append([stream(existing, [make_event(0)])], recorded_at=AT)
    count, last = await count_events(store), await store.last_position()
    fresh_a, fresh_b = new_id(), new_id()

    with pytest.raises(ConcurrencyConflict):
        await store.append(
            [
                stream(fresh_a, [make_event(1), make_event(2)]),
                stream(existing, [make_event(3)], expected=0),  # stale: the stream is at 1
                stream(fresh_b, [make_event(4)]),
            ],
            recorded_at=LATER,
        )

    assert await count_events(store) == count
    assert await store.last_position() == last
    assert await store.read_stream("test", fresh_a) == []
    assert await store.read_stream("test", fresh_b) == []


# ---- concurrency ----


async def test_two_writers_racing_on_one_stream_version_exactly_one_wins(
    engine: AsyncEngine, database_url: str
) -> None:
    async with other_process(database_url) as one, other_process(database_url) as two:
        for _ in range(8):
            sid = new_id()
            seed = await one.append([stream(sid, [make_event(0)])], recorded_at=AT)
            mine, theirs = (
                stream(sid, [make_event(1)], expected=1),
                stream(sid, [make_event(2)], expected=1),
            )
            results = await asyncio.gather(
                one.append([mine], recorded_at=LATER),
                two.append([theirs], recorded_at=LATER),
                return_exceptions=True,
            )
            wins = [r for r in results if isinstance(r, list)]
            losses = [r for r in results if isinstance(r, BaseException)]
            assert len(wins) == 1, results
            assert len(losses) == 1 and isinstance(losses[0], ConcurrencyConflict), results
            assert await one.read_stream("test", sid) == [*seed, *wins[0]]


async def test_concurrent_appends_on_one_store_fail_only_the_conflicting_ones(
    engine: AsyncEngine,
) -> None:
    store = EventStore(engine, in_transaction=log_only)
    existing = new_id()
    seeded = await store.append([stream(existing, [make_event(0)])], recorded_at=AT)
    contested = new_id()

    independent = [stream(new_id(), [make_event(i), make_event(i)]) for i in range(12)]
    stale = [stream(existing, [make_event(100 + i)], expected=0) for i in range(3)]
    racing = [stream(contested, [make_event(200 + i)]) for i in range(4)]
    replayed = stream(existing, [NewEvent(**event_fields(seeded[0]))], expected=0)
    calls: list[StreamAppend] = [*independent, *stale, *racing, replayed]
    # Interleave them so conflicting units sit between good ones in the same group commit.
    order = random.Random(7).sample(range(len(calls)), len(calls))

    results = await asyncio.gather(
        *(store.append([calls[i]], recorded_at=LATER) for i in order), return_exceptions=True
    )
    outcome = {i: r for i, r in zip(order, results, strict=True)}

    for i, append in enumerate(independent):
        result = outcome[i]
        assert isinstance(result, list), result
        assert_matches_input(result, append, LATER)
    for i in range(len(independent), len(independent) + len(stale)):
        assert isinstance(outcome[i], ConcurrencyConflict), outcome[i]
    first_racing = len(independent) + len(stale)
    racing_results = [outcome[i] for i in range(first_racing, first_racing + len(racing))]
    winners = [r for r in racing_results if isinstance(r, list)]
    assert len(winners) == 1, racing_results
    assert all(
        isinstance(r, ConcurrencyConflict) for r in racing_results if not isinstance(r, list)
    )
    assert outcome[len(calls) - 1] == seeded

    written = await store.read_all(limit=1000)
    assert len(written) == 1 + 2 * len(independent) + 1
    assert await store.read_stream("test", existing) == seeded
    assert await store.read_stream("test", contested) == winners[0]


# ---- idempotency ----


async def test_reappending_the_same_events_returns_original_records_and_writes_nothing(
    engine: AsyncEngine,
) -> None:
    store = EventStore(engine, in_transaction=log_only)
    a, b = new_id(), new_id()
    appends = [stream(a, [make_event(1), make_event(2)]), stream(b, [make_event(3)])]
    original = await store.append(appends, recorded_at=AT)
    count, last = await count_events(store), await store.last_position()

    again = await store.append(appends, recorded_at=LATER)
    assert again == original  # same positions, versions and original recorded_at

    # A retry that arrives after the stream moved on is still recognised as the same append.
    await store.append([stream(a, [make_event(4)], expected=2)], recorded_at=LATER)
    later_retry = await store.append(appends, recorded_at=LATER)
    assert later_retry == original

    assert await count_events(store) == count + 1
    assert await store.last_position() > last
    assert [r.event_id for r in await store.read_stream("test", b)] == [original[2].event_id]


@pytest.mark.parametrize(
    "change",
    [
        pytest.param({"data": json.dumps({"n": 999})}, id="different-data"),
        pytest.param({"event_type": "test.other"}, id="different-type"),
        pytest.param({"stream_id": "other"}, id="different-stream"),
    ],
)
async def test_same_event_id_for_a_different_event_raises_idempotency_conflict(
    engine: AsyncEngine, change: dict[str, str]
) -> None:
    store = EventStore(engine, in_transaction=log_only)
    sid = new_id()
    event = make_event(1)
    await store.append([stream(sid, [event])], recorded_at=AT)
    before = await store.read_all()

    target = new_id() if "stream_id" in change else sid
    expected = 0 if "stream_id" in change else 1
    event_change = {k: v for k, v in change.items() if k != "stream_id"}
    imposter = NewEvent(**{**event_fields(event), **event_change})
    with pytest.raises(IdempotencyConflict):
        await store.append([stream(target, [imposter], expected=expected)], recorded_at=LATER)

    assert await store.read_all() == before


# ---- global order equals commit order ----


async def test_concurrent_writers_batches_occupy_contiguous_positions(
    engine: AsyncEngine, database_url: str
) -> None:
    batches_per_writer, batch_size = 15, 5

    async def writer(store: EventStore, name: str) -> list[list[RecordedEvent]]:
        sid = new_id()
        written: list[list[RecordedEvent]] = []
        for n in range(batches_per_writer):
            events = [make_event(n * batch_size + i, writer=name) for i in range(batch_size)]
            written.append(
                await store.append([stream(sid, events, expected=n * batch_size)], recorded_at=AT)
            )
        return written

    async with other_process(database_url) as one, other_process(database_url) as two:
        results = await asyncio.gather(writer(one, "one"), writer(two, "two"))

    feed = await EventStore(engine, in_transaction=log_only).read_all(limit=10_000)
    assert len(feed) == 2 * batches_per_writer * batch_size
    index_of = {r.event_id: i for i, r in enumerate(feed)}
    for batches in results:
        for batch in batches:
            positions = [r.position for r in batch]
            assert positions == list(range(positions[0], positions[0] + batch_size)), positions
            # ...and nothing of the other writer sits between them in the global feed.
            indexes = [index_of[r.event_id] for r in batch]
            assert indexes == list(range(indexes[0], indexes[0] + batch_size))
            assert {r.stream_id for r in feed[indexes[0] : indexes[-1] + 1]} == {batch[0].stream_id}


async def test_tailing_reader_sees_every_event_once_in_position_order_while_writers_append(
    engine: AsyncEngine, database_url: str
) -> None:
    writers, appends_each = 8, 50
    written: set[str] = set()

    async def write(index: int) -> None:
        async with other_process(database_url) as store:
            sid = new_id()
            for n in range(appends_each):
                event = make_event(n, writer=index)
                await store.append([stream(sid, [event], expected=n)], recorded_at=AT)
                written.add(event.event_id)

    reader = EventStore(engine, in_transaction=log_only)
    seen: list[str] = []
    positions: list[int] = []
    writing = asyncio.gather(*(write(i) for i in range(writers)))
    last = 0
    while True:
        finished = writing.done()
        page = await reader.read_all(after_position=last, limit=17)
        for record in page:
            assert record.position > last
            last = record.position
            positions.append(record.position)
            seen.append(record.event_id)
        if not page:
            if finished:
                break
            await asyncio.sleep(0.001)
    await writing  # surfaces any writer failure

    assert len(seen) == writers * appends_each
    assert len(set(seen)) == len(seen), "an event was delivered twice"
    assert set(seen) == written
    assert positions == sorted(positions)


# ---- append-only ----


@pytest.mark.parametrize(
    "statement",
    [
        pytest.param("UPDATE events SET data = '{\"n\": -1}' WHERE position = :p", id="update"),
        pytest.param(
            "UPDATE events SET stream_version = 99 WHERE position = :p", id="update-version"
        ),
        pytest.param("DELETE FROM events WHERE position = :p", id="delete"),
        pytest.param("DELETE FROM events", id="delete-all"),
    ],
)
async def test_changing_or_deleting_an_event_is_rejected_by_the_database(
    engine: AsyncEngine, statement: str
) -> None:
    store = EventStore(engine, in_transaction=log_only)
    recorded = await store.append(
        [stream(new_id(), [make_event(1), make_event(2)])], recorded_at=AT
    )
    target = recorded[0].position

    with pytest.raises(DBAPIError) as failure:
        async with engine.begin() as conn:
            await conn.execute(sa.text(statement), {"p": target})
    assert APPEND_ONLY_MESSAGE in str(failure.value)

    assert await store.read_all() == recorded


# ---- upcasting ----


async def test_upcaster_for_an_old_schema_version_is_applied_on_decode(
    engine: AsyncEngine,
) -> None:
    store = EventStore(engine, in_transaction=log_only)
    evaluation_id = new_id()
    kind = "evaluation.cancelled"
    # Version 0 of evaluation.cancelled called its reason "why".
    old = NewEvent(
        event_id=new_id(),
        event_type=kind,
        data=json.dumps({"type": kind, "evaluation_id": evaluation_id, "why": "operator"}),
        schema_version=0,
    )
    await store.append([stream(evaluation_id, [old], stream_type="evaluation")], recorded_at=AT)
    (record,) = await store.read_stream("evaluation", evaluation_id)
    assert record.schema_version == 0

    with pytest.raises(ValueError, match="no upcaster"):
        codec.decode(record)

    calls: list[dict[str, Any]] = []

    def rename_why(payload: dict[str, Any]) -> dict[str, Any]:
        calls.append(payload)
        payload = dict(payload)
        payload["reason"] = payload.pop("why")
        return payload

    codec.register_upcaster(kind, 0, rename_why)
    try:
        decoded = codec.decode(record)
        # A current-version event of the same type decodes without the upcaster.
        current = codec.encode(
            ev.EvaluationCancelled(evaluation_id=evaluation_id, reason="now"),
            codec.EventMetadata(),
        )
        assert current.schema_version == 1
        await store.append(
            [stream(evaluation_id, [current], expected=1, stream_type="evaluation")],
            recorded_at=LATER,
        )
        _, stored_current = await store.read_stream("evaluation", evaluation_id)
        assert codec.decode(stored_current) == ev.EvaluationCancelled(
            evaluation_id=evaluation_id, reason="now"
        )
    finally:
        codec.unregister_upcaster(kind, 0)

    assert decoded == ev.EvaluationCancelled(evaluation_id=evaluation_id, reason="operator")
    assert len(calls) == 1
    assert kind not in codec.CURRENT_SCHEMA


async def test_upcasters_chain_from_the_stored_version_to_the_current_one(
    engine: AsyncEngine,
) -> None:
    store = EventStore(engine, in_transaction=log_only)
    evaluation_id = new_id()
    kind = "evaluation.failed"
    # v0 {"message"} -> v1 {"err"} -> v2 (current) {"error"}
    v0 = NewEvent(
        event_id=new_id(),
        event_type=kind,
        data=json.dumps({"type": kind, "evaluation_id": evaluation_id, "message": "disk"}),
        schema_version=0,
    )
    v1 = NewEvent(
        event_id=new_id(),
        event_type=kind,
        data=json.dumps({"type": kind, "evaluation_id": evaluation_id, "err": "oom"}),
        schema_version=1,
    )
    await store.append([stream(evaluation_id, [v0, v1], stream_type="evaluation")], recorded_at=AT)
    stored_v0, stored_v1 = await store.read_stream("evaluation", evaluation_id)

    def zero_to_one(p: dict[str, Any]) -> dict[str, Any]:
        return {"type": p["type"], "evaluation_id": p["evaluation_id"], "err": p["message"]}

    def one_to_two(p: dict[str, Any]) -> dict[str, Any]:
        return {"type": p["type"], "evaluation_id": p["evaluation_id"], "error": p["err"]}

    codec.register_upcaster(kind, 0, zero_to_one)
    codec.register_upcaster(kind, 1, one_to_two)
    try:
        assert codec.CURRENT_SCHEMA[kind] == 2
        from_zero, from_one = codec.decode(stored_v0), codec.decode(stored_v1)
    finally:
        codec.unregister_upcaster(kind, 1)
        codec.unregister_upcaster(kind, 0)

    assert from_zero == ev.EvaluationFailed(evaluation_id=evaluation_id, error="disk")
    assert from_one == ev.EvaluationFailed(evaluation_id=evaluation_id, error="oom")
    assert kind not in codec.CURRENT_SCHEMA


# ---- the global hash chain across writers ----


async def test_appends_alternating_between_two_processes_keep_one_verifiable_chain(
    engine: AsyncEngine, database_url: str
) -> None:
    # Each store remembers the chain head it last committed; the other's appends move it.
    from domain.audit_chain import verify_links
    from infrastructure.audit.wire import link_of

    async with other_process(database_url) as one, other_process(database_url) as two:
        versions = {id(one): 0, id(two): 0}
        sids = {id(one): new_id(), id(two): new_id()}
        for store in (one, two, one, one, two, two, one, two):
            events = [make_event(versions[id(store)] + i) for i in range(2)]
            await store.append(
                [stream(sids[id(store)], events, expected=versions[id(store)])], recorded_at=AT
            )
            versions[id(store)] += 2

    feed = await EventStore(engine, in_transaction=log_only).read_all(limit=1000)
    assert len(feed) == 16
    assert verify_links(link_of(r) for r in feed) is None


async def test_an_append_waits_for_the_write_lock_another_connection_holds(
    engine: AsyncEngine, database_url: str
) -> None:
    # SQLite: the file's write lock (the store's loop connection never waits for it, its
    # writer thread does); PostgreSQL: the append lock every append takes.
    from infrastructure.eventstore import APPEND_LOCK_KEY

    async with engine.connect() as blocker, other_process(database_url) as store:
        if engine.dialect.name == "sqlite":
            await blocker.exec_driver_sql("BEGIN IMMEDIATE")
        else:
            await blocker.begin()
            await blocker.execute(sa.text(f"SELECT pg_advisory_xact_lock({APPEND_LOCK_KEY})"))
        pending = asyncio.ensure_future(
            store.append([stream(new_id(), [make_event(0)])], recorded_at=AT)
        )
        await asyncio.sleep(0.2)
        assert not pending.done()  # waiting for the lock, while the loop still runs
        if engine.dialect.name == "sqlite":
            await blocker.exec_driver_sql("COMMIT")
        else:
            await blocker.commit()
        recorded = await pending
    assert [r.stream_version for r in recorded] == [1]


async def test_stream_versions_answers_many_streams_in_one_call(engine: AsyncEngine) -> None:
    store = EventStore(engine, in_transaction=log_only)
    a, b, empty = new_id(), new_id(), new_id()
    await store.append(
        [stream(a, [make_event(i) for i in range(3)]), stream(b, [make_event(9)])],
        recorded_at=AT,
    )
    await store.append([stream(a, [make_event(20)], expected=3)], recorded_at=LATER)
    assert await store.stream_versions("test", [a, b, empty]) == {a: 4, b: 1}
    assert await store.stream_versions("other", [a]) == {}
    assert await store.stream_versions("test", []) == {}
    await store.close()
