"""How the evaluation list scales: p50/p99 under 32 clients and server CPU per request at
1 / 5,000 / 100,000 evaluations, for page 1 and the deepest page, as ratios against size 1.

    .venv/bin/python scripts/compare_scale.py [--backend sqlite|postgresql]
        [--sizes 1,5000,100000] [--rounds 3] [--duration 2] [--warmup 0.5]

Seeding goes through the event store's append API, as the service writes (an evaluation
created over HTTP is the template; copies of its `evaluation.created` and `item.queued`
events are appended in batches of `--batch` evaluations, each batch one transaction that the
inline projection folds, counters included). Each size is a copy of the database taken when the
seeding reached it, so the rounds interleave the sizes: round r measures every size once, each
on a server started over that copy. Every figure is a ratio to size 1 within its round; the
output gives min / median / max over the rounds. Targets (issue 10): p50 within 1.2x of size 1
for page 1 and for the deepest page, and at most 0.5 ms of server CPU per request.

Importable: `run(argv)` returns the rows that `scripts/bench_compare.py` prints. PostgreSQL:
ASSAY_BENCH_PG_URL (default postgresql://postgres@127.0.0.1:5432/postgres); the script creates
assay_bench_* databases and drops them at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SCRIPTS = Path(__file__).resolve().parent
sys.path.insert(0, str(SCRIPTS.parent))
sys.path.insert(0, str(SCRIPTS))

from bench_api import (  # noqa: E402
    ORG,
    WORKSPACE,
    Backend,
    Database,
    LoadRunner,
    Measured,
    PostgresBackend,
    Server,
    SqliteBackend,
    assay_cli,
    http_request,
    progress,
)

TARGET_RATIO = 1.2
TARGET_CPU_MS = 0.5
CREATE_BODY = {"name": "scale", "model": "openai/gpt-4o-mini", "task_names": ["find-the-flag"]}


async def _seed(url: str, template_id: str, count: int, batch: int) -> None:
    """Append `count` copies of the template evaluation (one item each) in batches."""
    from infrastructure.clock import utc_now
    from infrastructure.db.engine import create_engine
    from infrastructure.eventstore import EventStore, NewEvent, StreamAppend
    from infrastructure.readmodels import Projector

    engine = create_engine(url)
    store = EventStore(engine, in_transaction=Projector())
    try:
        created = (await store.read_stream("evaluation", template_id))[0]
        (item_id,) = json.loads(created.data)["item_ids"]
        queued = (await store.read_stream("item", item_id))[0]
        done = 0
        while done < count:
            appends: list[StreamAppend] = []
            for _ in range(min(batch, count - done)):
                new_evaluation, new_item = str(uuid.uuid4()), str(uuid.uuid4())
                for record, stream_id in ((created, new_evaluation), (queued, new_item)):
                    data = record.data.replace(template_id, new_evaluation)
                    data = data.replace(item_id, new_item)
                    appends.append(
                        StreamAppend(
                            stream_type=record.stream_type,
                            stream_id=stream_id,
                            expected_version=0,
                            events=[
                                NewEvent(
                                    event_id=str(uuid.uuid4()),
                                    event_type=record.event_type,
                                    data=data,
                                    metadata=record.metadata,
                                    schema_version=record.schema_version,
                                )
                            ],
                        )
                    )
            await store.append(appends, recorded_at=utc_now())
            done += len(appends) // 2
    finally:
        await store.close()
        await engine.dispose()


def _settle(backend: Backend, db: Database) -> None:
    """Fold the WAL into the file and refresh planner statistics before copying/measuring."""
    if isinstance(backend, SqliteBackend):
        conn = sqlite3.connect(db.raw, isolation_level=None)
        try:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            conn.execute("ANALYZE")
        finally:
            conn.close()
    else:
        backend.query(db, "ANALYZE")


def _clone(backend: Backend, db: Database, label: str) -> Database:
    if isinstance(backend, SqliteBackend):
        clone = Database(backend, label)
        shutil.copyfile(db.raw, clone.raw)
        return clone
    assert isinstance(backend, PostgresBackend)
    name = f"{backend.prefix}_{label}"
    backend._admin(f'CREATE DATABASE "{name}" TEMPLATE "{db.name}"')
    backend.created.append(name)
    return Database(backend, name)


def _drop(backend: Backend, db: Database) -> None:
    if isinstance(backend, SqliteBackend):
        Path(db.raw).unlink(missing_ok=True)


@dataclass
class Figure:
    size: int
    page: int
    measured: Measured


def _pages(size: int, page_size: int) -> dict[str, int]:
    deepest = max(1, math.ceil(size / page_size))
    return {"page 1": 1, "deepest page": deepest} if deepest > 1 else {"page 1": 1}


def run_backend(backend: Backend, args: argparse.Namespace) -> list[dict[str, Any]]:
    from cryptography.fernet import Fernet

    env = {k: v for k, v in os.environ.items() if not k.startswith("ASSAY_")}
    env["ASSAY_SECRET_KEY"] = Fernet.generate_key().decode()
    name = backend.name
    progress(f"[{name}] migrating")
    backend.create_template(env)
    seed_db = backend.copy("seed")
    bootstrap = ["admin", "bootstrap", "--org", ORG, "--workspace", WORKSPACE]
    bootstrap += ["--email", "bench@example.com", "--database-url", seed_db.url, "--json"]
    key = json.loads(assay_cli(*bootstrap, env=env))["api_key"]
    base = f"/api/v1/org/{ORG}/ws/{WORKSPACE}"

    def server_env(db: Database) -> dict[str, str]:
        return {
            **env,
            "ASSAY_DATABASE_URL": db.url,
            "ASSAY_RATE_LIMIT": "0",
            "ASSAY_WORKERS": "0",
            "ASSAY_OPENAI_BASE_URL": "http://127.0.0.1:9/v1",
        }

    with Server(
        f"{name}-scale-template", "app.main:create_app", server_env(seed_db), backend.workdir
    ) as server:
        status, body = server.call("POST", f"{base}/evaluation", key, CREATE_BODY)
        if status != 201:
            raise RuntimeError(f"create answered {status}: {body[:300]!r}")
        template_id = json.loads(body)["id"]

    copies: dict[int, Database] = {}
    have = 1
    for size in sorted(args.sizes):
        if size > have:
            progress(f"[{name}] seeding {size - have:,} evaluations (to {size:,})")
            began = time.perf_counter()
            asyncio.run(_seed(seed_db.url, template_id, size - have, args.batch))
            rate = (size - have) / (time.perf_counter() - began)
            progress(f"[{name}]   {rate:,.0f} evaluations/s")
            have = size
        _settle(backend, seed_db)
        copies[size] = _clone(backend, seed_db, f"size_{size}")

    runner = LoadRunner(args.concurrency, args.warmup, args.duration)
    figures: list[list[Figure]] = []
    try:
        for round_number in range(args.rounds):
            this_round: list[Figure] = []
            for size in sorted(args.sizes):
                db = copies[size]
                label = f"{name}-scale-{size}"
                with Server(
                    label, "app.main:create_app", server_env(db), backend.workdir
                ) as server:
                    for page in _pages(size, args.page_size).values():
                        path = f"{base}/evaluations?page={page}&page_size={args.page_size}"
                        request = http_request("GET", path, key)
                        status, body = server.call("GET", path, key)
                        listed = json.loads(body)
                        if status != 200 or listed["total"] != size or not listed["items"]:
                            raise RuntimeError(
                                f"list at {size} page {page}: {status} {body[:300]!r}"
                            )
                        progress(f"[{name}] round {round_number + 1}: {size:,} page {page}")
                        this_round.append(
                            Figure(
                                size, page, runner.measure(server, request, 200, f"{size}-{page}")
                            )
                        )
            figures.append(this_round)
    finally:
        runner.close()
        for db in (*copies.values(), seed_db):
            _drop(backend, db)
    return _rows(name, figures, args)


def _spread(values: list[float]) -> str:
    return f"{min(values):.2f} / {statistics.median(values):.2f} / {max(values):.2f}"


def _rows(name: str, rounds: list[list[Figure]], args: argparse.Namespace) -> list[dict[str, Any]]:
    smallest = min(args.sizes)
    # The smallest size whose first page is full: a page of `page_size` evaluations moves
    # that many documents where size 1 moves one, whatever the table holds.
    full = min((s for s in args.sizes if s >= args.page_size), default=None)
    rows: list[dict[str, Any]] = []
    for size in sorted(args.sizes):
        for which, page in _pages(size, args.page_size).items():
            p50_ratio, p99_ratio, p50, p99, cpu, full_ratio = [], [], [], [], [], []
            for figures in rounds:
                base = next(f for f in figures if f.size == smallest and f.page == 1).measured
                this = next(f for f in figures if f.size == size and f.page == page).measured
                if full is not None and size >= full:
                    first_full = next(f for f in figures if f.size == full and f.page == 1)
                    full_p50 = first_full.measured.load.percentile(0.5)
                    full_ratio.append(this.load.percentile(0.5) / full_p50)
                p50_ratio.append(this.load.percentile(0.5) / base.load.percentile(0.5))
                p99_ratio.append(this.load.percentile(0.99) / base.load.percentile(0.99))
                p50.append(this.load.percentile(0.5))
                p99.append(this.load.percentile(0.99))
                cpu.append(this.server_cpu_ms)
            rows.append(
                {
                    "backend": name,
                    "size": size,
                    "page": f"{which} ({page})",
                    "p50_ms": statistics.median(p50),
                    "p99_ms": statistics.median(p99),
                    "cpu_ms": statistics.median(cpu),
                    "p50_ratio": _spread(p50_ratio),
                    "p99_ratio": _spread(p99_ratio),
                    "full_ratio": _spread(full_ratio) if full_ratio else "-",
                    "cpu_spread": _spread(cpu),
                    "met": statistics.median(p50_ratio) <= TARGET_RATIO
                    and statistics.median(cpu) <= TARGET_CPU_MS,
                }
            )
    return rows


def print_rows(rows: list[dict[str, Any]], args: argparse.Namespace) -> None:
    print(
        f"\nList of evaluations, page_size {args.page_size}, {args.concurrency} clients, "
        f"{args.rounds} round(s) of {args.duration}s; ratio = figure / the same at size "
        f"{min(args.sizes)} page 1 in the same round (min / median / max)"
    )
    header = f"{'backend':<11}{'evaluations':>12}  {'page':<20}{'p50 ms':>8}{'p99 ms':>8}"
    header += f"{'CPU ms/req':>11}  {'p50 ratio':<20}{'p99 ratio':<20}{'CPU ms min/med/max':<22}"
    header += f"{'p50 / first full page':<22}"
    print(header)
    for row in rows:
        mark = "" if row["met"] else "  BELOW TARGET"
        print(
            f"{row['backend']:<11}{row['size']:>12,}  {row['page']:<20}{row['p50_ms']:>8.1f}"
            f"{row['p99_ms']:>8.1f}{row['cpu_ms']:>11.2f}  {row['p50_ratio']:<20}"
            f"{row['p99_ratio']:<20}{row['cpu_spread']:<22}{row['full_ratio']:<22}{mark}"
        )
    print(
        f"targets: median p50 ratio <= {TARGET_RATIO}, median CPU <= {TARGET_CPU_MS} ms per "
        "request (BELOW TARGET marks a row that misses either); p50 / first full page = "
        "the same against the smallest size whose page 1 holds page_size evaluations (same "
        "bytes per answer: what the table's size alone costs)"
    )


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", choices=["sqlite", "postgresql", "both"], default="sqlite")
    parser.add_argument(
        "--sizes",
        type=lambda s: [int(x) for x in s.split(",")],
        default=[1, 5_000, 100_000],
        help="comma-separated evaluation counts; the smallest is the base of the ratios",
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=2.0)
    parser.add_argument("--warmup", type=float, default=0.5)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--page-size", type=int, default=50)
    parser.add_argument("--batch", type=int, default=1000, help="evaluations per seeding append")
    return parser.parse_args(argv)


def run(argv: list[str] | None = None) -> list[dict[str, Any]]:
    args = parse(argv)
    backends = ["sqlite", "postgresql"] if args.backend == "both" else [args.backend]
    rows: list[dict[str, Any]] = []
    for name in backends:
        with tempfile.TemporaryDirectory(prefix="assay-scale-") as workdir:
            backend: Backend = (
                SqliteBackend(Path(workdir)) if name == "sqlite" else PostgresBackend(Path(workdir))
            )
            try:
                rows += run_backend(backend, args)
            finally:
                backend.cleanup()
    return rows


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    print_rows(run(argv), args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
