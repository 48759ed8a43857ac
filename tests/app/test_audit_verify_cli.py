"""`assay audit verify` finds what an attacker with database access does to the log, on both
backends: triggers disabled, then a row edited, deleted, inserted, or two rows swapped."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
import sqlalchemy as sa
from click.testing import CliRunner, Result
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection

from app.cli import main
from domain.audit_chain import ZERO_HASH, Chainer
from infrastructure.audit.wire import content_of
from infrastructure.db.append_only import APPEND_ONLY_MESSAGE
from infrastructure.db.engine import create_engine
from infrastructure.eventstore import (
    ConcurrencyConflict,
    EventStore,
    NewEvent,
    RecordedEvent,
    StreamAppend,
)

T = TypeVar("T")
AT = "2026-11-30T12:00:00.000000Z"


def run(action: Callable[[EventStore], Awaitable[T]], url: str) -> T:
    async def go() -> T:
        engine = create_engine(url)
        store = EventStore(engine, in_transaction=log_only)
        try:
            return await action(store)
        finally:
            await store.close()
            await engine.dispose()

    return asyncio.run(go())


def log_only(_conn: Any, _recorded: list[RecordedEvent]) -> None:
    """These tests append to streams of their own: no read model to keep."""


def sql(url: str, *statements: str, params: dict[str, Any] | None = None) -> None:
    """Raw statements in one transaction, as a database superuser would type them."""

    async def go(store: EventStore) -> None:
        async with store.engine.begin() as conn:
            for statement in statements:
                await conn.execute(sa.text(statement), params or {})

    run(go, url)


def event(n: int, **extra: Any) -> NewEvent:
    return NewEvent(
        event_id=str(uuid.uuid4()),
        event_type="test.happened",
        data=json.dumps({"n": n, "note": "ünïcode ✓", **extra}),
        metadata=json.dumps({"request_id": f"req-{n}", "actor": {"id": "u1"}}),
    )


def fill(url: str) -> list[RecordedEvent]:
    """Three streams interleaved over ten positions (the first two in one append)."""

    async def go(store: EventStore) -> list[RecordedEvent]:
        ids = [str(uuid.uuid4()) for _ in range(3)]
        versions = dict.fromkeys(ids, 0)

        def next_of(sid: str, n: int) -> StreamAppend:
            versions[sid] += 1
            return StreamAppend(
                stream_type="test",
                stream_id=sid,
                expected_version=versions[sid] - 1,
                events=[event(n)],
            )

        recorded = await store.append([next_of(ids[0], 1), next_of(ids[1], 2)], recorded_at=AT)
        for n in range(3, 11):
            recorded += await store.append([next_of(ids[n % 3], n)], recorded_at=AT)
        return recorded

    return run(go, url)


def verify(url: str, *extra: str) -> Result:
    return CliRunner().invoke(main, ["audit", "verify", "--database-url", url, *extra])


def finding(url: str) -> dict[str, Any]:
    result = verify(url, "--json")
    assert result.exit_code == 1, result.output
    answer: dict[str, Any] = json.loads(result.stdout)
    assert answer["intact"] is False
    return answer


def without_triggers(url: str, *statements: str, params: dict[str, Any] | None = None) -> None:
    if url.startswith("sqlite"):
        sql(
            url,
            "DROP TRIGGER events_no_update",
            "DROP TRIGGER events_no_delete",
            *statements,
            params=params,
        )
    else:
        sql(
            url,
            "ALTER TABLE events DISABLE TRIGGER USER",
            *statements,
            "ALTER TABLE events ENABLE TRIGGER USER",
            params=params,
        )


def test_an_untouched_log_verifies_and_the_triggers_still_refuse_changes(database_url: str) -> None:
    recorded = fill(database_url)
    result = verify(database_url)
    assert result.exit_code == 0, result.output
    assert f"head position {recorded[-1].position}" in result.stdout
    assert recorded[0].prev_hash == ZERO_HASH and recorded[0].chain_prev_hash == ZERO_HASH
    for statement in ("UPDATE events SET data = '{}'", "DELETE FROM events"):
        with pytest.raises(DBAPIError, match=APPEND_ONLY_MESSAGE):
            sql(database_url, statement)


def test_an_edited_row_is_found_as_changed(database_url: str) -> None:
    recorded = fill(database_url)
    target = recorded[4].position
    without_triggers(
        database_url,
        "UPDATE events SET data = :data WHERE position = :p",
        params={"data": json.dumps({"n": 5, "note": "forged"}), "p": target},
    )
    assert finding(database_url) | {"detail": ""} == {
        "intact": False,
        "events": 6,
        "position": target,
        "problem": "changed",
        "detail": "",
    }


def test_a_deleted_row_is_found_as_missing(database_url: str) -> None:
    recorded = fill(database_url)
    without_triggers(
        database_url, "DELETE FROM events WHERE position = :p", params={"p": recorded[3].position}
    )
    answer = finding(database_url)
    assert (answer["position"], answer["problem"]) == (recorded[4].position, "missing")


def test_a_row_inserted_with_forged_hashes_is_found_as_inserted(database_url: str) -> None:
    recorded = fill(database_url)
    before = recorded[5]
    # Make room after `before`, then insert an event whose own hashes are all computed
    # correctly and whose chain starts from `before`: only the next link gives it away.
    forged = RecordedEvent(
        position=before.position + 1,
        event_id=str(uuid.uuid4()),
        stream_type="test",
        stream_id=str(uuid.uuid4()),
        stream_version=1,
        event_type="test.happened",
        schema_version=1,
        data=json.dumps({"n": 99}),
        metadata="{}",
        recorded_at=AT,
    )
    chainer = Chainer(chain_head=before.chain_hash)
    own, chain_prev, chain = chainer.link(ZERO_HASH, content_of(forged))
    without_triggers(
        database_url,
        "UPDATE events SET position = position + 1000 WHERE position > :p",
        "INSERT INTO events (position, event_id, stream_type, stream_id, stream_version,"
        " event_type, schema_version, data, metadata, recorded_at, prev_hash, hash,"
        " chain_prev_hash, chain_hash) VALUES (:np, :eid, 'test', :sid, 1, 'test.happened', 1,"
        " :data, '{}', :at, :zero, :own, :cprev, :chain)",
        params={
            "p": before.position,
            "np": forged.position,
            "eid": forged.event_id,
            "sid": forged.stream_id,
            "data": forged.data,
            "at": AT,
            "zero": ZERO_HASH,
            "own": own,
            "cprev": chain_prev,
            "chain": chain,
        },
    )
    answer = finding(database_url)
    assert (answer["position"], answer["problem"]) == (forged.position, "inserted")


def test_two_swapped_rows_are_found_as_reordered(database_url: str) -> None:
    recorded = fill(database_url)
    p, q = recorded[2].position, recorded[6].position
    without_triggers(
        database_url,
        "UPDATE events SET position = -1 WHERE position = :p",
        "UPDATE events SET position = :p WHERE position = :q",
        "UPDATE events SET position = :q WHERE position = -1",
        params={"p": p, "q": q},
    )
    answer = finding(database_url)
    assert (answer["position"], answer["problem"]) == (p, "reordered")


def rechain_everything(url: str) -> None:
    """The thorough attacker: after an edit, recompute every hash so both chains hold again."""

    async def go(store: EventStore) -> None:
        chainer = Chainer(chain_head=ZERO_HASH)
        heads: dict[tuple[str, str], str] = {}
        async with store.engine.begin() as conn:
            for record in await store.read_all(limit=100_000):
                prev = heads.get((record.stream_type, record.stream_id), ZERO_HASH)
                own, chain_prev, chain = chainer.link(prev, content_of(record))
                heads[(record.stream_type, record.stream_id)] = own
                await _update_hashes(conn, record.position, prev, own, chain_prev, chain)

    run(go, url)


async def _update_hashes(conn: AsyncConnection, position: int, *hashes: str) -> None:
    await conn.execute(
        sa.text(
            "UPDATE events SET prev_hash = :a, hash = :b, chain_prev_hash = :c, chain_hash = :d"
            " WHERE position = :p"
        ),
        dict(zip("abcd", hashes, strict=True), p=position),
    )


def test_a_checkpoint_catches_a_history_rewritten_with_recomputed_hashes(
    database_url: str, tmp_path: Path
) -> None:
    recorded = fill(database_url)
    taken = CliRunner().invoke(main, ["audit", "checkpoint", "--database-url", database_url])
    assert taken.exit_code == 0, taken.output
    head = json.loads(taken.stdout)
    assert set(head) == {"position", "chain_hash", "at"}
    assert (head["position"], head["chain_hash"]) == (
        recorded[-1].position,
        recorded[-1].chain_hash,
    )
    checkpoint = tmp_path / "checkpoint.json"
    checkpoint.write_text(taken.stdout)
    assert verify(database_url, "--checkpoint", str(checkpoint)).exit_code == 0

    without_triggers(
        database_url,
        "UPDATE events SET data = :data WHERE position = :p",
        params={"data": json.dumps({"n": 2, "note": "rewritten"}), "p": recorded[1].position},
    )
    if database_url.startswith("sqlite"):
        rechain_everything(database_url)
    else:
        sql(database_url, "ALTER TABLE events DISABLE TRIGGER USER")
        rechain_everything(database_url)
        sql(database_url, "ALTER TABLE events ENABLE TRIGGER USER")
    assert verify(database_url).exit_code == 0  # the chains alone cannot tell
    result = verify(database_url, "--checkpoint", str(checkpoint), "--json")
    assert result.exit_code == 1
    answer = json.loads(result.stdout)
    assert (answer["position"], answer["problem"]) == (head["position"], "changed")


def test_migration_0004_chains_a_log_written_before_it(database_url: str) -> None:
    from alembic import command
    from alembic.script import ScriptDirectory

    from infrastructure.db.migrate import alembic_config, upgrade_sync

    config = alembic_config(database_url)
    before = ScriptDirectory.from_config(config).get_revision("0004").down_revision
    command.downgrade(config, str(before))  # to just before the chains
    for n in range(1, 4):
        sql(
            database_url,
            "INSERT INTO events (event_id, stream_type, stream_id, stream_version, event_type,"
            " schema_version, data, metadata, recorded_at) VALUES (:eid, 'test', 's1', :v,"
            " 'test.happened', 1, :data, '{}', :at)",
            params={"eid": str(uuid.uuid4()), "v": n, "data": json.dumps({"n": n}), "at": AT},
        )
    upgrade_sync(database_url)
    recorded = run(lambda store: store.read_all(), database_url)
    assert recorded[0].prev_hash == ZERO_HASH and recorded[1].prev_hash == recorded[0].hash
    assert verify(database_url).exit_code == 0
    with pytest.raises(DBAPIError, match=APPEND_ONLY_MESSAGE):
        sql(database_url, "UPDATE events SET data = '{}'")
    appended = fill(database_url)  # appends continue the backfilled chain
    assert appended[0].chain_prev_hash == recorded[-1].chain_hash
    assert verify(database_url).exit_code == 0


def test_chains_hold_when_two_processes_append_concurrently(database_url: str) -> None:
    """Each store remembers stream heads and reads the chain head under the append lock: two
    stores on one database (two processes, as far as it can tell) interleave without a break."""

    async def go() -> None:
        engines = [create_engine(database_url) for _ in range(2)]
        stores = [EventStore(engine, in_transaction=log_only) for engine in engines]
        shared = str(uuid.uuid4())

        async def writer(store: EventStore, n: int) -> None:
            own = str(uuid.uuid4())
            for version in range(15):
                appends = [
                    StreamAppend(
                        stream_type="test",
                        stream_id=own,
                        expected_version=version,
                        events=[event(n * 100 + version)],
                    )
                ]
                await store.append(appends, recorded_at=AT)
                # Both also extend one shared stream, each from the version it last saw.
                while True:
                    version_now = len(await store.read_stream("test", shared))
                    extend = StreamAppend(
                        stream_type="test",
                        stream_id=shared,
                        expected_version=version_now,
                        events=[event(n)],
                    )
                    try:
                        await store.append([extend], recorded_at=AT)
                        break
                    except ConcurrencyConflict:
                        continue

        try:
            await asyncio.gather(*(writer(store, n) for n, store in enumerate(stores)))
        finally:
            for store, engine in zip(stores, engines, strict=True):
                await store.close()
                await engine.dispose()

    asyncio.run(go())
    result = verify(database_url, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["events"] == 60
