"""Assay's event store side by side with `eventsourcing` (the reference Python event store).

    .venv/bin/python scripts/compare_eventsourcing.py [--runs 3] [--duration 2]
        [--only sqlite-1,sqlite-8,pg-1,bulk-sqlite,bulk-pg]

`eventsourcing` at `ES_VERSION` is installed into `.bench-venvs/eventsourcing` (its own
virtualenv, created on first use) and driven there through its `ApplicationRecorder` (the
layer that gives events a global order, as Assay's positions do). Assay's side is its real
`EventStore` as the product builds it (`app.composition.open_store`: inline read models and
lease book in the transaction, hash chains computed per event in the append), on a freshly
migrated database. Events are 200-byte JSON payloads, one stream per writer, written to
stream type `bench` (which the read models ignore; they cost only their check).

Scenarios, each measured for `--duration` seconds after a short warm-up, in a process of its
own and on a fresh database, the two sides alternating which goes first:

- `sqlite-1` / `sqlite-8`: appends/s (one event each) with 1 and 8 concurrent writers (Assay:
  asyncio tasks in one process, as its server and worker write; eventsourcing: threads). Both
  on a SQLite file in WAL mode with `synchronous=NORMAL`: what Assay's engine sets
  (infrastructure/db/engine.py); eventsourcing sets WAL itself and is given NORMAL here on
  each connection it opens (it has no setting for it, and SQLite's default is FULL).
- `pg-1`: the same with 1 writer on PostgreSQL (127.0.0.1:5432, or ASSAY_BENCH_PG_URL), each
  side on a database of its own created and dropped here; eventsourcing in its database
  function mode (`POSTGRES_ENABLE_DB_FUNCTIONS=y`). Both at the server's default durability.
- `bulk-sqlite` / `bulk-pg`: events/s appending 1,000 events per append to one stream
  (eventsourcing: `insert_events` of 1,000; Assay: `EventStore.append` of 1,000).

Printed: each side's rate, min / median / max over the runs, and the ratio Assay /
eventsourcing of each run's pair with its target (issue 10). For SQLite with one writer also
the floor of Assay's schema: the same rows, prebuilt, through stdlib sqlite3 alone into a
freshly migrated Assay database (its table, indexes and append-only triggers), as a ratio to
eventsourcing: what a commit path with no Python of its own could reach on that schema.
Compare ratios, not figures: the box is shared. Also runnable from
`scripts/bench_compare.py --only eventsourcing`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
VENVS = ROOT / ".bench-venvs"
ES_VERSION = "9.5.6"
PG_ADMIN = os.environ.get("ASSAY_BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
WARM_UP = 0.3
# 200 bytes of JSON, the same on both sides.
PAYLOAD = '{"n": %9d, "pad": "' + "x" * 173 + '"}'
assert len(PAYLOAD % 0) == 200

# name: (backend, writers, events per append, target ratio Assay / eventsourcing)
SCENARIOS: dict[str, tuple[str, int, int, float]] = {
    "sqlite-1": ("sqlite", 1, 1, 1.0),
    "sqlite-8": ("sqlite", 8, 1, 1.5),
    "pg-1": ("postgresql", 1, 1, 1.0),
    "bulk-sqlite": ("sqlite", 1, 1000, 1.0),
    "bulk-pg": ("postgresql", 1, 1000, 1.0),
}

ES_PROGRAM = textwrap.dedent(
    """
    import json, sys, threading, time, uuid
    from eventsourcing.persistence import StoredEvent
    from eventsourcing import sqlite as es_sqlite
    from eventsourcing.postgres import PostgresFactory
    from eventsourcing.sqlite import SQLiteFactory

    # Matched durability: Assay's engine sets synchronous=NORMAL on each SQLite connection.
    _create = es_sqlite.SQLiteConnectionPool._create_connection
    def _create_normal(self):
        conn = _create(self)
        conn._sqlite_conn.execute("PRAGMA synchronous=NORMAL")
        return conn
    es_sqlite.SQLiteConnectionPool._create_connection = _create_normal

    spec = json.loads(sys.argv[1])
    env = spec["env"]
    factory = (SQLiteFactory if spec["backend"] == "sqlite" else PostgresFactory)(env)
    recorder = factory.application_recorder()
    payload, per_append = spec["payload"], spec["per_append"]
    start = time.perf_counter() + spec["warm_up"]
    deadline = start + spec["duration"]
    counts = []
    failures = []

    def writer():
        stream, version, done = uuid.uuid4(), 0, 0
        try:
            while True:
                batch = []
                for _ in range(per_append):
                    version += 1
                    batch.append(StoredEvent(
                        originator_id=stream, originator_version=version,
                        topic="bench:Appended", state=(payload % version).encode()))
                recorder.insert_events(batch)
                now = time.perf_counter()
                if now > deadline:
                    break
                if now > start:
                    done += per_append
        except BaseException as exc:
            failures.append(repr(exc))
        counts.append(done)

    threads = [threading.Thread(target=writer) for _ in range(spec["writers"])]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if failures:
        raise SystemExit(failures[0])
    print(json.dumps({"rate": sum(counts) / spec["duration"]}))
    """
)


def progress(message: str) -> None:
    print(f"  .. {message}", file=sys.stderr, flush=True)


def summary(values: list[float], digits: int = 0) -> str:
    return " / ".join(
        f"{v:,.{digits}f}" for v in (min(values), statistics.median(values), max(values))
    )


def peer_python() -> Path:
    """The Python of eventsourcing's own virtualenv, created (and the peer installed) if
    missing. The same convention as scripts/bench_compare.py's `peer_python`."""
    sys.path.insert(0, str(ROOT / "scripts"))
    from bench_compare import peer_python as make

    return make("eventsourcing", f"eventsourcing[postgres]=={ES_VERSION}")


def psql(sql: str) -> None:
    subprocess.run(["psql", PG_ADMIN, "-qXc", sql], check=True, capture_output=True)


class Database:
    """A fresh database for one measurement: a SQLite file, or a PostgreSQL database."""

    def __init__(self, backend: str, folder: Path) -> None:
        self.backend = backend
        self.name = f"assay_bench_es_{uuid.uuid4().hex[:10]}"
        self.path = folder / f"{self.name}.db"

    def __enter__(self) -> Database:
        if self.backend == "postgresql":
            psql(f'CREATE DATABASE "{self.name}"')
        return self

    def __exit__(self, *_exc: object) -> None:
        if self.backend == "postgresql":
            psql(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
        else:
            for suffix in ("", "-wal", "-shm"):
                Path(f"{self.path}{suffix}").unlink(missing_ok=True)

    def assay_url(self) -> str:
        if self.backend == "sqlite":
            return f"sqlite+aiosqlite:///{self.path}"
        base = PG_ADMIN.rsplit("/", 1)[0].split("://", 1)[1]
        return f"postgresql+asyncpg://{base}/{self.name}"

    def es_env(self) -> dict[str, str]:
        if self.backend == "sqlite":
            return {"SQLITE_DBNAME": str(self.path)}
        rest = PG_ADMIN.split("://", 1)[1].rsplit("/", 1)[0]
        user, _, hostport = rest.rpartition("@")
        host, _, port = hostport.partition(":")
        user, _, password = user.partition(":")
        return {
            "POSTGRES_DBNAME": self.name,
            "POSTGRES_HOST": host,
            "POSTGRES_PORT": port or "5432",
            "POSTGRES_USER": user or "postgres",
            "POSTGRES_PASSWORD": password,
            "POSTGRES_ENABLE_DB_FUNCTIONS": "y",
        }


def measure(side: str, scenario: str, duration: float, python: Path, folder: Path) -> float:
    backend, writers, per_append, _target = SCENARIOS[scenario]
    spec = {
        "backend": backend,
        "writers": writers,
        "per_append": per_append,
        "duration": duration,
        "warm_up": WARM_UP,
        "payload": PAYLOAD,
    }
    with Database(backend, folder) as db:
        if side == "eventsourcing":
            program = folder / "es_program.py"
            program.write_text(ES_PROGRAM)
            command = [str(python), str(program), json.dumps({**spec, "env": db.es_env()})]
        else:
            spec["url"] = db.assay_url()
            command = [sys.executable, __file__, f"_{side}", json.dumps(spec)]
        out = subprocess.run(command, check=True, capture_output=True, text=True, cwd=folder)
    return float(json.loads(out.stdout.strip().splitlines()[-1])["rate"])


# ---- Assay's side, in a process of its own (`_assay`) ----


async def assay_rate(spec: dict[str, Any]) -> float:
    sys.path.insert(0, str(ROOT))
    from app.composition import open_store
    from infrastructure.clock import utc_now
    from infrastructure.db.engine import create_engine
    from infrastructure.db.migrate import upgrade
    from infrastructure.eventstore import NewEvent, StreamAppend
    from infrastructure.ids import new_time_ordered_id

    await upgrade(spec["url"])
    engine = create_engine(spec["url"])
    store, _leases = open_store(engine)
    payload, per_append = spec["payload"], spec["per_append"]
    start = time.perf_counter() + spec["warm_up"]
    deadline = start + spec["duration"]

    async def writer() -> int:
        # Event ids as the product makes them (infrastructure.codec): UUIDv7.
        stream, version, done = str(uuid.uuid4()), 0, 0  # as evaluation and item ids
        while True:
            events = [
                NewEvent(
                    event_id=new_time_ordered_id(),
                    event_type="bench.appended",
                    data=payload % (version + n),
                )
                for n in range(1, per_append + 1)
            ]
            append = StreamAppend(
                stream_type="bench", stream_id=stream, expected_version=version, events=events
            )
            await store.append([append], recorded_at=utc_now())
            version += per_append
            now = time.perf_counter()
            if now > deadline:
                return done
            if now > start:
                done += per_append

    try:
        counts = await asyncio.gather(*(writer() for _ in range(spec["writers"])))
    finally:
        await store.close()
        await engine.dispose()
    return sum(counts) / spec["duration"]


def floor_rate(spec: dict[str, Any]) -> float:
    """Assay's own table and triggers (freshly migrated) with nothing of Assay's Python: the
    same rows, prebuilt, through the stdlib driver as the store sends them (BEGIN IMMEDIATE,
    the chain head's read, one executemany, COMMIT). What any commit path on this schema
    could reach at best; hashes are constant strings of their real width."""
    sys.path.insert(0, str(ROOT))
    import sqlite3

    from infrastructure.db.migrate import upgrade
    from infrastructure.ids import new_time_ordered_id

    asyncio.run(upgrade(spec["url"]))
    conn = sqlite3.connect(spec["url"].split("///", 1)[1], isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    payload, per_append, digest = spec["payload"], spec["per_append"], "0" * 64
    insert = "INSERT INTO events VALUES (" + ", ".join("?" * 14) + ")"
    stream, version, position, done = str(uuid.uuid4()), 0, 0, 0
    start = time.perf_counter() + spec["warm_up"]
    deadline = start + spec["duration"]
    while True:
        rows = []
        for _ in range(per_append):
            version += 1
            position += 1
            event = (new_time_ordered_id(), "bench", stream, version, "bench.appended", 1)
            content = (payload % version, "{}", "2026-11-30T00:00:00.000000Z")
            rows.append((position, *event, *content, digest, digest, digest, digest))
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("SELECT position, chain_hash FROM events ORDER BY position DESC LIMIT 1")
        conn.executemany(insert, rows)
        conn.execute("COMMIT")
        now = time.perf_counter()
        if now > deadline:
            break
        if now > start:
            done += per_append
    conn.close()
    return done / spec["duration"]


# ---- the comparison ----


def load_average() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def run(args: argparse.Namespace) -> None:
    python = peer_python()
    scenarios = args.only.split(",") if args.only else list(SCENARIOS)
    for name in scenarios:
        if name not in SCENARIOS:
            raise SystemExit(f"unknown scenario {name!r}; known: {', '.join(SCENARIOS)}")
    figures: dict[str, dict[str, list[float]]] = {
        name: {"assay": [], "eventsourcing": [], "floor": []} for name in scenarios
    }
    load_before = load_average()
    with tempfile.TemporaryDirectory(prefix="bench-es-") as tmp:
        folder = Path(tmp)
        for round_ in range(args.runs):
            for index, name in enumerate(scenarios):
                sides = ["assay", "eventsourcing"]
                if (round_ + index) % 2:
                    sides.reverse()
                if SCENARIOS[name][:2] == ("sqlite", 1):
                    sides.append("floor")
                for side in sides:
                    rate = measure(side, name, args.duration, python, folder)
                    figures[name][side].append(rate)
                    progress(f"run {round_ + 1}/{args.runs} {name} {side}: {rate:,.0f}/s")
    print(
        f"\n## Event store: Assay against eventsourcing {ES_VERSION}, {args.runs} interleaved "
        f"runs of {args.duration:g} s; min / median / max ({os.cpu_count()} cores, shared; "
        f"load average before {load_before}, after {load_average()})\n"
    )
    print(
        "| scenario | eventsourcing /s | Assay /s | Assay / eventsourcing | target "
        "| Assay's schema, stdlib sqlite3 alone / eventsourcing |"
    )
    print("|---|---|---|---|---|---|")
    for name in scenarios:
        backend, writers, per_append, target = SCENARIOS[name]
        ours, theirs = figures[name]["assay"], figures[name]["eventsourcing"]
        ratios = [a / e for a, e in zip(ours, theirs, strict=True)]
        unit = "events" if per_append > 1 else "appends"
        label = (
            f"{backend}, {writers} writer{'s' if writers > 1 else ''}, "
            f"{per_append} event{'s' if per_append > 1 else ''}/append ({unit}/s)"
        )
        verdict = "met" if statistics.median(ratios) >= target else "not met"
        floor = figures[name]["floor"]
        floors = [f / e for f, e in zip(floor, theirs, strict=True)] if floor else []
        print(
            f"| {label} | {summary(theirs)} | {summary(ours)} | {summary(ratios, 2)} "
            f"| >= {target:.1f}x: {verdict} | {summary(floors, 2) if floors else '-'} |"
        )


def main(argv: list[str]) -> int:
    if argv[:1] == ["_assay"]:
        print(json.dumps({"rate": asyncio.run(assay_rate(json.loads(argv[1])))}))
        return 0
    if argv[:1] == ["_floor"]:
        print(json.dumps({"rate": floor_rate(json.loads(argv[1]))}))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3, help="interleaved runs (default 3)")
    parser.add_argument("--duration", type=float, default=2.0, help="seconds per figure")
    parser.add_argument("--only", default="", help=f"comma-separated: {', '.join(SCENARIOS)}")
    run(parser.parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
