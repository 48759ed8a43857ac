"""Bulk load speed: `assay log import` against appending the same events through the event store.

    .venv/bin/python scripts/bench_log_import.py [--events 20000] [--backend sqlite|postgresql|both]

For each backend: append N events (200-byte payloads, 1,000 per append: the bulk path the
store had before import existed) into a fresh database and time it; export that log; import it
into another fresh database and time the import (check of both chains, batched load, read-model
rebuild included). Prints events/s of each and their ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from infrastructure.audit.transfer import export_lines, import_file  # noqa: E402
from infrastructure.db.engine import create_engine  # noqa: E402
from infrastructure.db.migrate import upgrade_sync  # noqa: E402
from infrastructure.eventstore import EventStore, NewEvent, StreamAppend  # noqa: E402
from infrastructure.readmodels import Projector  # noqa: E402

PG_URL = os.environ.get("ASSAY_BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
PAYLOAD = '{"n": %d, "pad": "' + "x" * 180 + '"}'


async def _pg(sql: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(PG_URL)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def fresh(backend: str, workdir: Path, created: list[str]) -> str:
    name = f"assay_bench_import_{uuid.uuid4().hex[:8]}"
    if backend == "sqlite":
        url = f"sqlite+aiosqlite:///{workdir / name}.db"
    else:
        asyncio.run(_pg(f'CREATE DATABASE "{name}"'))
        created.append(name)
        url = "postgresql+asyncpg://" + PG_URL.split("://", 1)[1].rsplit("/", 1)[0] + "/" + name
    upgrade_sync(url)
    return url


async def append_all(url: str, count: int) -> float:
    engine = create_engine(url)
    store = EventStore(engine, in_transaction=Projector())
    started = time.perf_counter()
    for start in range(0, count, 1000):
        events = [
            NewEvent(event_id=str(uuid.uuid4()), event_type="bench.loaded", data=PAYLOAD % n)
            for n in range(start, min(start + 1000, count))
        ]
        append = StreamAppend(
            stream_type="bench", stream_id=str(uuid.uuid4()), expected_version=0, events=events
        )
        await store.append([append], recorded_at="2026-11-30T12:00:00.000000Z")
    seconds = time.perf_counter() - started
    await store.close()
    await engine.dispose()
    return seconds


async def export_to(url: str, path: Path) -> None:
    engine = create_engine(url)
    store = EventStore(engine, in_transaction=Projector())
    with path.open("wb") as out:
        # An import needs identity records; a benchmark log has none of its own.
        out.write(b'{"record":"orgs","row":{"id":"00000000-0000-0000-0000-000000000001",')
        out.write(b'"key":"bench","name":"bench","max_sandbox_runtime_seconds":null,')
        out.write(b'"default_sandbox_runtime_seconds":null,"created_at":"x","updated_at":"x"}}\n')
        async for line in export_lines(store):
            if not line.startswith(b'{"record"'):
                out.write(line)
    await store.close()
    await engine.dispose()


async def import_from(url: str, path: Path) -> float:
    engine = create_engine(url)
    store = EventStore(engine, in_transaction=Projector())
    started = time.perf_counter()
    await import_file(store, path)
    seconds = time.perf_counter() - started
    await store.close()
    await engine.dispose()
    return seconds


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--backend", choices=["sqlite", "postgresql", "both"], default="both")
    args = parser.parse_args()
    backends = ["sqlite", "postgresql"] if args.backend == "both" else [args.backend]
    created: list[str] = []
    print(f"bulk load of {args.events:,} events (200-byte payloads)")
    print(f"{'backend':<12}| {'append 1k/append':>17} | {'log import':>12} | ratio")
    try:
        with tempfile.TemporaryDirectory(prefix="assay-bench-import-") as tmp:
            workdir = Path(tmp)
            for backend in backends:
                source = fresh(backend, workdir, created)
                appended = asyncio.run(append_all(source, args.events))
                exported = workdir / f"{backend}.ndjson"
                asyncio.run(export_to(source, exported))
                imported = asyncio.run(import_from(fresh(backend, workdir, created), exported))
                a, i = args.events / appended, args.events / imported
                print(f"{backend:<12}| {a:>12,.0f} ev/s | {i:>7,.0f} ev/s | {i / a:.2f}")
    finally:
        for name in created:
            asyncio.run(_pg(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    return 0


if __name__ == "__main__":
    sys.exit(main())
