"""What the audit hash chains cost an append: this tree against a git ref, interleaved.

    .venv/bin/python scripts/bench_chain_cost.py [--ref main] [--rounds 5] [--seconds 2]

`git archive REF` is unpacked into a temporary directory; each round runs the same in-process
append load (32 concurrent appenders, 1 and 10 events per append, one fresh database per
figure) once with REF's code and once with this tree's, alternately, so both see the same
machine load. Prints the median events/s of each and the ratio this/REF per backend. Figures
of a loaded, shared box move a lot; the interleaved medians are what to compare.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PG_URL = os.environ.get("ASSAY_BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
PAYLOAD = '{"n": %d, "pad": "' + "x" * 180 + '"}'
META = '{"actor": {"id": "u", "kind": "user"}, "request_id": "r"}'


async def measure(url: str, per_append: int, seconds: float) -> float:
    """Run inside a tree (its own sys.path): events/s of 32 concurrent appenders."""
    from infrastructure.db.engine import create_engine
    from infrastructure.eventstore import EventStore, NewEvent, StreamAppend

    engine = create_engine(url)
    # Trees differ in whether a store must be given its in-transaction hook: give a no-op.
    store = EventStore(engine, in_transaction=lambda _conn, _recorded: None)
    done = 0
    deadline = time.perf_counter() + seconds

    async def appender() -> None:
        nonlocal done
        stream, version = str(uuid.uuid4()), 0
        while time.perf_counter() < deadline:
            events = [
                NewEvent(
                    event_id=str(uuid.uuid4()),
                    event_type="bench.appended",
                    data=PAYLOAD % n,
                    metadata=META,
                )
                for n in range(per_append)
            ]
            append = StreamAppend(
                stream_type="bench", stream_id=stream, expected_version=version, events=events
            )
            await store.append([append], recorded_at="2026-11-30T12:00:00.000000Z")
            version += per_append
            done += per_append

    started = time.perf_counter()
    await asyncio.gather(*(appender() for _ in range(32)))
    rate = done / (time.perf_counter() - started)
    await store.close()
    await engine.dispose()
    return rate


def child(tree: str, backend: str, per_append: int, seconds: float) -> None:
    sys.path.insert(0, tree)
    os.chdir(tree)
    from infrastructure.db.migrate import upgrade_sync

    name = f"assay_bench_chain_{uuid.uuid4().hex[:8]}"
    if backend == "sqlite":
        url = f"sqlite+aiosqlite:///{tempfile.mkdtemp()}/{name}.db"
    else:
        import asyncpg

        async def sql(statement: str) -> None:
            conn = await asyncpg.connect(PG_URL)
            try:
                await conn.execute(statement)
            finally:
                await conn.close()

        asyncio.run(sql(f'CREATE DATABASE "{name}"'))
        url = "postgresql+asyncpg://" + PG_URL.split("://", 1)[1].rsplit("/", 1)[0] + "/" + name
    try:
        upgrade_sync(url)
        print(json.dumps(asyncio.run(measure(url, per_append, seconds))))
    finally:
        if backend != "sqlite":
            asyncio.run(sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def run_in(tree: Path, backend: str, per_append: int, seconds: float) -> float:
    out = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--child", str(tree), backend,
         str(per_append), str(seconds)],
        capture_output=True, text=True, check=True, cwd=tree,
    )  # fmt: skip
    return float(out.stdout.strip().splitlines()[-1])


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3], int(sys.argv[4]), float(sys.argv[5]))
        return 0
    parser = argparse.ArgumentParser()
    parser.add_argument("--ref", default="main")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--backend", choices=["sqlite", "postgresql", "both"], default="both")
    args = parser.parse_args()
    backends = ["sqlite", "postgresql"] if args.backend == "both" else [args.backend]
    with tempfile.TemporaryDirectory(prefix="assay-chain-ref-") as tmp:
        archive = subprocess.run(
            ["git", "-C", str(ROOT), "archive", args.ref], capture_output=True, check=True
        ).stdout
        with tarfile.open(fileobj=__import__("io").BytesIO(archive)) as tar:
            tar.extractall(tmp, filter="data")
        print(f"appends, {args.rounds} interleaved rounds of {args.seconds}s, 32 appenders")
        print(f"{'backend':<11}| events/append | {args.ref:>10} ev/s | {'this':>10} ev/s | ratio")
        for backend in backends:
            for per_append in (1, 10):
                ref, this = [], []
                for _ in range(args.rounds):
                    ref.append(run_in(Path(tmp), backend, per_append, args.seconds))
                    this.append(run_in(ROOT, backend, per_append, args.seconds))
                r, t = statistics.median(ref), statistics.median(this)
                print(f"{backend:<11}| {per_append:>13} | {r:>15,.0f} | {t:>15,.0f} | {t / r:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
