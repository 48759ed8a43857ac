"""Benchmark live streams: many open SSE streams on one server while events are appended.

    .venv/bin/python scripts/bench_streams.py [--streams 1000] [--evaluations 50]
        [--rate 200] [--duration 60] [--backend sqlite|postgresql]

One `assay serve` (uvicorn, one process, no in-process worker) on a fresh database. The
script creates `--evaluations` evaluations and opens `--streams` evaluation streams, spread
evenly over them, from a raw asyncio HTTP/1.1 client in its own process. Another process (this
script's main one, with an event store of its own, as a worker would be) appends one event at a
time at `--rate` events/s, round-robin over the evaluations' items, for `--duration` seconds.
So the server learns of them through its tailer (the cross-process path), never a local wake.

Printed: streams open at the end and dropped, deliveries received over expected, latency from
the start of each append's transaction to each stream receiving the event (p50, p99, max),
and the server's RSS sampled over the run (first, last, max, and last over first).
Target (issue 11): 1,000 streams, p99 < 250 ms at 200 events/s, RSS flat over 10 minutes
(`--duration 600`). The default run is one minute.
PostgreSQL: ASSAY_BENCH_PG_URL (default postgresql://postgres@127.0.0.1:5432/postgres); the
script creates an assay_bench_streams_* database and drops it at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
import uuid
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from bench_api import (
    Server,
    assay_cli,
    process_cpu_seconds,
)  # scripts/ is on sys.path when run as a script

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
ORG, WORKSPACE = "bench", "main"


# ---- the client process: N streams, receipt times per position ----------------------------


async def _stream(
    port: int, path: str, key: str, receipts: list[tuple[int, float]], state: dict[str, int]
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 20)
    request = (
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nX-API-Key: {key}\r\n"
        "Accept: text/event-stream\r\n\r\n"
    )
    writer.write(request.encode())
    head = await reader.readuntil(b"\r\n\r\n")
    if b" 200 " not in head.split(b"\r\n", 1)[0]:
        state["refused"] += 1
        return
    state["open"] += 1
    buffer = b""
    try:
        while True:
            size_line = await reader.readline()
            if not size_line:
                break
            size = int(size_line.strip() or b"0", 16)
            if size == 0:
                break
            chunk = (await reader.readexactly(size + 2))[:-2]
            buffer += chunk
            now = time.time()
            while b"\n\n" in buffer:
                message, buffer = buffer.split(b"\n\n", 1)
                if message.startswith(b":"):
                    if b"dropped" in message:
                        state["dropped"] += 1
                    continue
                lines = message.split(b"\n", 2)
                if len(lines) >= 2 and lines[1] != b"event: evaluation":
                    receipts.append((int(lines[0][4:]), now))
    except (ConnectionError, asyncio.IncompleteReadError):
        pass
    finally:
        state["open"] -= 1
        writer.close()


def client_main(
    port: int, key: str, paths: list[str], ready: Any, stop: Any, out: Connection
) -> None:
    async def main() -> None:
        receipts: list[tuple[int, float]] = []
        state = {"open": 0, "refused": 0, "dropped": 0}
        tasks = []
        for start in range(0, len(paths), 100):  # open them in steps, not all in one burst
            for path in paths[start : start + 100]:
                tasks.append(asyncio.create_task(_stream(port, path, key, receipts, state)))
            await asyncio.sleep(0.2)
        while state["open"] + state["refused"] < len(paths):
            await asyncio.sleep(0.1)
        ready.set()
        while not stop.is_set():
            await asyncio.sleep(0.1)
        await asyncio.sleep(1.0)  # let the last deliveries land
        still_open = state["open"]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        out.send(
            {
                "receipts": receipts,
                "open_at_end": still_open,
                "refused": state["refused"],
                "dropped": state["dropped"],
            }
        )

    asyncio.run(main())


# ---- the appender: one event per append, at a steady rate --------------------------------


async def append_events(
    database_url: str, targets: list[tuple[str, str]], rate: float, duration: float
) -> list[tuple[int, float, str]]:
    from app.composition import open_store
    from domain import item as it
    from infrastructure import codec
    from infrastructure.clock import utc_now
    from infrastructure.db.engine import create_engine

    engine = create_engine(database_url)
    store = open_store(engine)[0]
    versions = {item_id: 2 for _, item_id in targets}  # queued, claimed
    appended: list[tuple[int, float, str]] = []

    async def one(evaluation_id: str, item_id: str, version: int) -> None:
        event = it.ItemLeaseRenewed(
            item_id=item_id,
            evaluation_id=evaluation_id,
            worker_id="bench",
            lease_expires_at="2099-01-01T00:00:00.000000+00:00",
        )
        begun = time.time()
        recorded = await store.append(
            codec.to_appends([event], {("item", item_id): version}, codec.EventMetadata()),
            recorded_at=utc_now(),
        )
        appended.append((recorded[0].position, begun, evaluation_id))

    # Each append is its own task started on schedule, so a slow commit does not lower the
    # rate (the store commits appends that wait together in one transaction, in order).
    pending: list[asyncio.Task[None]] = []
    started = time.monotonic()
    count = 0
    try:
        while time.monotonic() - started < duration:
            evaluation_id, item_id = targets[count % len(targets)]
            pending.append(asyncio.create_task(one(evaluation_id, item_id, versions[item_id])))
            versions[item_id] += 1
            count += 1
            delay = started + count / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
        await asyncio.gather(*pending)
    finally:
        await store.close()
        await engine.dispose()
    return appended


async def claim_all(database_url: str, targets: list[tuple[str, str]]) -> None:
    """Put every item in flight once, so lease renewals are valid events for it."""
    from app.composition import open_store
    from domain import item as it
    from infrastructure import codec
    from infrastructure.clock import utc_now
    from infrastructure.db.engine import create_engine

    engine = create_engine(database_url)
    store = open_store(engine)[0]
    try:
        for evaluation_id, item_id in targets:
            claimed = it.ItemClaimed(
                item_id=item_id,
                evaluation_id=evaluation_id,
                worker_id="bench",
                lease_expires_at="2099-01-01T00:00:00.000000+00:00",
            )
            await store.append(
                codec.to_appends([claimed], {("item", item_id): 1}, codec.EventMetadata()),
                recorded_at=utc_now(),
            )
    finally:
        await store.close()
        await engine.dispose()


# ---- measuring ----------------------------------------------------------------------------


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * (len(ordered) - 1) + 0.5))]


def pg_database(admin: str, sql: str) -> None:
    import asyncpg

    async def go() -> None:
        conn = await asyncpg.connect(admin)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(go())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--evaluations", type=int, default=50)
    parser.add_argument("--rate", type=float, default=200.0, help="events appended per second")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of appending")
    parser.add_argument("--sample", type=float, default=5.0, help="seconds between RSS samples")
    parser.add_argument("--backend", choices=("sqlite", "postgresql"), default="sqlite")
    args = parser.parse_args(argv)

    workdir = Path(tempfile.mkdtemp(prefix="assay-bench-streams-"))
    pg_admin = os.environ.get("ASSAY_BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    pg_name = f"assay_bench_streams_{uuid.uuid4().hex[:8]}"
    if args.backend == "sqlite":
        database_url = f"sqlite+aiosqlite:///{workdir / 'assay.db'}"
    else:
        pg_database(pg_admin, f'CREATE DATABASE "{pg_name}"')
        database_url = "postgresql+asyncpg://" + pg_admin.rsplit("/", 1)[0].split("://", 1)[1]
        database_url += f"/{pg_name}"
    from cryptography.fernet import Fernet

    env = {k: v for k, v in os.environ.items() if not k.startswith("ASSAY_")}
    env |= {
        "ASSAY_SECRET_KEY": Fernet.generate_key().decode(),
        "ASSAY_DATABASE_URL": database_url,
        "ASSAY_RATE_LIMIT": "0",
        "ASSAY_WORKERS": "0",
        "ASSAY_LOG_LEVEL": "WARNING",
    }
    try:
        assay_cli("db", "upgrade", "--database-url", database_url, env=env)
        boot = assay_cli(
            "admin", "bootstrap", "--org", ORG, "--workspace", WORKSPACE,
            "--email", "bench@example.com", "--database-url", database_url, "--json", env=env,
        )  # fmt: skip
        key = json.loads(boot)["api_key"]
        with Server("streams", "app.main:create_app", env, workdir) as server:
            assert server.process is not None
            base = f"/api/v1/org/{ORG}/ws/{WORKSPACE}"
            targets: list[tuple[str, str]] = []
            for index in range(args.evaluations):
                status, body = server.call(
                    "POST",
                    f"{base}/evaluation",
                    key,
                    {"name": f"e{index}", "agent_type": "oracle", "task_names": ["find-the-flag"]},
                )
                assert status == 201, body
                evaluation_id = json.loads(body)["id"]
                _, items = server.call("GET", f"{base}/evaluation/{evaluation_id}/items", key)
                targets.append((evaluation_id, json.loads(items)["items"][0]["id"]))
            asyncio.run(claim_all(database_url, targets))
            paths = [
                f"{base}/evaluation/{targets[i % len(targets)][0]}/stream"
                for i in range(args.streams)
            ]
            per_evaluation = {e: 0 for e, _ in targets}
            for i in range(args.streams):
                per_evaluation[targets[i % len(targets)][0]] += 1

            ready, stop = multiprocessing.Event(), multiprocessing.Event()
            receive, send = multiprocessing.Pipe(duplex=False)
            client = multiprocessing.Process(
                target=client_main, args=(server.port, key, paths, ready, stop, send)
            )
            client.start()
            if not ready.wait(300):
                raise RuntimeError("the streams did not all open within 300 s")
            rss: list[int] = [rss_kib(server.process.pid)]
            cpu_before, wall_before = server.cpu(), time.monotonic()
            client_cpu_before = process_cpu_seconds(client.pid or 0)
            print(f"{args.streams} streams open; appending {args.rate:g} events/s "
                  f"for {args.duration:g} s ({args.backend})", flush=True)  # fmt: skip

            async def run() -> list[tuple[int, float, str]]:
                appender = asyncio.create_task(
                    append_events(database_url, targets, args.rate, args.duration)
                )
                while not appender.done():
                    await asyncio.wait({appender}, timeout=args.sample)
                    rss.append(rss_kib(server.process.pid))  # type: ignore[union-attr]
                return await appender

            appended = asyncio.run(run())
            wall = time.monotonic() - wall_before
            server_cpu = (server.cpu() - cpu_before) / wall
            client_cpu = (process_cpu_seconds(client.pid or 0) - client_cpu_before) / wall
            stop.set()
            result = receive.recv()
            client.join(30)
    finally:
        if args.backend == "postgresql":
            pg_database(pg_admin, f'DROP DATABASE IF EXISTS "{pg_name}" WITH (FORCE)')

    began = {position: (at, evaluation) for position, at, evaluation in appended}
    latencies = [
        (received - began[position][0]) * 1000
        for position, received in result["receipts"]
        if position in began
    ]
    expected = sum(per_evaluation[evaluation] for _, _, evaluation in appended)
    achieved = len(appended) / args.duration
    print(f"events appended        {len(appended)} ({achieved:.0f}/s)")
    print(f"streams open at end    {result['open_at_end']} of {args.streams} "
          f"(dropped {result['dropped']}, refused {result['refused']})")  # fmt: skip
    print(f"deliveries             {len(latencies)} of {expected} expected "
          f"({len(latencies) / max(expected, 1):.3f})")  # fmt: skip
    if latencies:
        print(f"commit->delivery ms    p50 {statistics.median(latencies):.1f}  "
              f"p99 {percentile(latencies, 0.99):.1f}  max {max(latencies):.1f}  "
              f"(target p99 < 250)")  # fmt: skip
    print(f"server RSS MiB         first {rss[0] / 1024:.1f}  last {rss[-1] / 1024:.1f}  "
          f"max {max(rss) / 1024:.1f}  last/first {rss[-1] / rss[0]:.2f}  "
          f"({len(rss)} samples every {args.sample:g} s)")  # fmt: skip
    print(f"CPU per wall second    server {server_cpu:.2f}  client {client_cpu:.2f}  "
          f"(load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs)")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
