"""Benchmark the service against ceilings measured in the same run: the ratio is the figure.

    .venv/bin/python scripts/bench_api.py [--backend sqlite|postgresql|both] [--quick]

For each backend it measures, each beside its ceiling:

- create-evaluation requests/s (10 tasks each) and p50/p99 latency under 32 concurrent
  keep-alive clients; ceiling: a bare Litestar handler (scripts/bench_ceilings.py) that decodes
  the same body and writes the same rows (events, evaluation row, item rows; same JSON sizes)
  in one transaction through stdlib sqlite3 / asyncpg.
- GET-evaluation requests/s and p50/p99 at ~10k and at ~1M stored events; ceiling: a bare
  handler returning the same JSON bytes from memory. The p50 at 1M over the p50 at 10k says
  whether latency grows with history (it must not).
- event-store appends/s with 1 and 10 events per append (32 concurrent appenders, in
  process); ceiling: the raw driver inserting the same rows, one transaction per append
  (stdlib sqlite3 in one writer thread; an asyncpg pool of 32 connections).

Both servers run the same way (uvicorn, one worker, log level warning) one at a time; the load
generator is a raw asyncio HTTP/1.1 client in its own process. Target: every ratio >= 0.5.
The process exits 0 whatever the ratios; ratios under target are marked BELOW TARGET.
PostgreSQL: ASSAY_BENCH_PG_URL (default postgresql://postgres@127.0.0.1:5432/postgres); the
script creates assay_bench_* databases and drops them at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import json
import multiprocessing
import os
import platform
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import traceback
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = ROOT / "scripts"
TARGET = 0.5
CONCURRENCY = 32
ORG, WORKSPACE = "bench", "main"
SHIPPED_TASKS = [
    "find-the-flag",
    "crack-weak-hash",
    "path-traversal",
    "patch-vuln-function",
    "decode-payload",
]
CREATE_BODY = {
    "name": "bench",
    "model": "openai/gpt-4o-mini",
    "task_names": SHIPPED_TASKS * 2,  # 10 tasks, so 10 items
    "concurrency": 4,
}
EVENT_COLUMNS = [
    "event_id",
    "stream_type",
    "stream_id",
    "stream_version",
    "event_type",
    "schema_version",
    "data",
    "metadata",
    "recorded_at",
]
SQLITE_INSERT_EVENT = (
    f"INSERT INTO events ({', '.join(EVENT_COLUMNS)}) VALUES ({', '.join('?' * 9)})"
)
PG_INSERT_EVENT = SQLITE_INSERT_EVENT.replace(
    ", ".join("?" * 9), ", ".join(f"${i}" for i in range(1, 10))
)


def progress(message: str) -> None:
    print(f"  .. {message}", file=sys.stderr, flush=True)


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


# --------------------------------------------------------------------------------------------
# Load generator: raw asyncio HTTP/1.1 keep-alive clients, run in a process of its own.
# --------------------------------------------------------------------------------------------


@dataclass
class LoadResult:
    requests: int = 0  # completed inside the measured window
    total: int = 0  # completed at all (warm-up included), for CPU per request
    errors: int = 0
    error_sample: str = ""
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)
    client_cpu: float = 0.0  # load generator CPU seconds / wall seconds

    @property
    def rate(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def percentile(self, p: float) -> float:
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(p * len(ordered)))] * 1000


class _Connection(asyncio.Protocol):
    def __init__(self, run: _Run) -> None:
        self.run = run
        self.buffer = bytearray()
        self.need: int | None = None
        self.sent_at = 0.0
        self.transport: Any = None
        self.closed = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self._send()

    def _send(self) -> None:
        assert self.transport is not None
        if time.perf_counter() >= self.run.end:
            self.transport.close()
            return
        self.sent_at = time.perf_counter()
        self.transport.write(self.run.request)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if self.need is None:
            head_end = self.buffer.find(b"\r\n\r\n")
            if head_end < 0:
                return
            head = bytes(self.buffer[:head_end]).lower()
            marker = head.find(b"\r\ncontent-length:")
            if marker < 0:
                self.run.fail("response without content-length: " + head[:200].decode("latin-1"))
                assert self.transport is not None
                self.transport.close()
                return
            line_end = head.find(b"\r\n", marker + 2)
            length = int(head[marker + 17 : line_end if line_end >= 0 else None])
            self.need = head_end + 4 + length
        if len(self.buffer) < self.need:
            return
        finished = time.perf_counter()
        status = bytes(self.buffer[9:12])
        if status != self.run.expect:
            self.run.fail(bytes(self.buffer[: self.need]).decode("latin-1", "replace")[:400])
        else:
            self.run.done(self.sent_at, finished)
        del self.buffer[: self.need]
        self.need = None
        self._send()

    def connection_lost(self, exc: Exception | None) -> None:
        if time.perf_counter() < self.run.end:
            self.run.fail(f"the server closed a connection early ({exc or 'EOF'})")
        if not self.closed.done():
            self.closed.set_result(None)


class _Run:
    def __init__(self, request: bytes, expect: bytes, start: float, end: float) -> None:
        self.request = request
        self.expect = expect
        self.start = start
        self.end = end
        self.result = LoadResult(seconds=end - start)

    def done(self, sent_at: float, finished: float) -> None:
        self.result.total += 1
        if self.start <= finished < self.end:
            self.result.requests += 1
            self.result.latencies.append(finished - sent_at)

    def fail(self, sample: str) -> None:
        self.result.errors += 1
        if not self.result.error_sample:
            self.result.error_sample = sample


async def _load(
    port: int, request: bytes, expect: int, concurrency: int, warmup: float, duration: float
) -> LoadResult:
    loop = asyncio.get_running_loop()
    began = time.perf_counter()
    run = _Run(request, str(expect).encode(), began + warmup, began + warmup + duration)
    connections: list[_Connection] = []
    for _ in range(concurrency):
        _transport, protocol = await loop.create_connection(
            lambda: _Connection(run), "127.0.0.1", port
        )
        connections.append(protocol)
    await asyncio.sleep(warmup)
    cpu_start = time.process_time()
    await asyncio.sleep(max(0.0, run.end - time.perf_counter()))
    run.result.client_cpu = (time.process_time() - cpu_start) / duration
    try:
        # Each connection closes after its last in-flight response.
        await asyncio.wait_for(asyncio.gather(*(c.closed for c in connections)), timeout=30)
    except TimeoutError:
        for connection in connections:
            if connection.transport is not None:
                connection.transport.close()
    return run.result


def run_load(
    port: int, request: bytes, expect: int, concurrency: int, warmup: float, duration: float
) -> LoadResult:
    """Entry point of the load-generator process."""
    coroutine = _load(port, request, expect, concurrency, warmup, duration)
    try:
        import uvloop

        return uvloop.run(coroutine)
    except ImportError:
        return asyncio.run(coroutine)


def http_request(method: str, path: str, key: str | None, body: bytes = b"") -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", "User-Agent: assay-bench/1"]
    if key:
        lines.append(f"X-API-Key: {key}")
    if body:
        lines += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


# --------------------------------------------------------------------------------------------
# Servers: the real service and the ceiling, each `uvicorn ... --factory`, one at a time.
# --------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def process_cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Server:
    def __init__(
        self, name: str, app: str, env: dict[str, str], log_dir: Path, app_dir: Path | None = None
    ) -> None:
        self.name = name
        self.app = app
        self.env = env
        self.app_dir = app_dir
        self.log_path = log_dir / f"{name}.log"
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Server:
        for _ in range(3):
            self.port = free_port()
            argv = [
                sys.executable,
                "-m",
                "uvicorn",
                self.app,
                "--factory",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--workers",
                "1",
                "--log-level",
                "warning",
                "--no-access-log",
            ]
            if self.app_dir is not None:
                argv += ["--app-dir", str(self.app_dir)]
            with self.log_path.open("ab") as log:
                self.process = subprocess.Popen(
                    argv,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=self.env,
                    cwd=ROOT,
                    start_new_session=True,
                )
            if self._healthy(60):
                return self
            self.stop()
        tail = self.log_path.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"{self.name} did not start; log:\n{tail}")

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _healthy(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                return False
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=2) as r:
                    if r.status == 200:
                        return True
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.1)
        return False

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)

    def cpu(self) -> float:
        assert self.process is not None
        return process_cpu_seconds(self.process.pid)

    def call(
        self, method: str, path: str, key: str | None = None, body: Any = None
    ) -> tuple[int, bytes]:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.port}{path}", data=data, method=method
        )
        if key:
            request.add_header("X-API-Key", key)
        if data is not None:
            request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as error:
            return error.code, error.read()


@dataclass
class Measured:
    load: LoadResult
    server_cpu_ms: float  # server CPU per completed request

    @property
    def rate(self) -> float:
        return self.load.rate


class LoadRunner:
    def __init__(
        self, concurrency: int, warmup: float, duration: float, profile_dir: Path | None = None
    ) -> None:
        self.profile_dir = profile_dir
        self.concurrency = concurrency
        self.warmup = warmup
        self.duration = duration
        context = multiprocessing.get_context("spawn")
        self.pool = concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=context)
        # Start the process now so its start-up is not inside a measurement.
        self.pool.submit(int, 0).result()

    def measure(self, server: Server, request: bytes, expect: int, label: str) -> Measured:
        cpu_before = server.cpu()
        future = self.pool.submit(
            run_load, server.port, request, expect, self.concurrency, self.warmup, self.duration
        )
        profiler = self._profile(server, label)
        load: LoadResult = future.result()
        cpu = server.cpu() - cpu_before
        if profiler is not None:
            profiler.wait(timeout=60)
        if load.errors:
            print(
                f"  !! {server.name}: {load.errors} unexpected responses, "
                f"e.g.:\n{load.error_sample}"
            )
        return Measured(load, cpu / max(1, load.total) * 1000)

    def _profile(self, server: Server, label: str) -> subprocess.Popen[bytes] | None:
        """With --py-spy DIR: sample the server during the measured window (collapsed stacks)."""
        if self.profile_dir is None or server.process is None:
            return None
        py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
        time.sleep(self.warmup)
        out = self.profile_dir / f"{server.name}-{label}.txt"
        return subprocess.Popen(
            [
                py_spy,
                "record",
                "--pid",
                str(server.process.pid),
                "--duration",
                str(max(1, int(self.duration))),
                "--format",
                "raw",
                "--gil",
                "--nonblocking",
                "-o",
                str(out),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def close(self) -> None:
        self.pool.shutdown(cancel_futures=True)


# --------------------------------------------------------------------------------------------
# Databases: migrated templates, per-measurement copies, fast filling of the event log.
# --------------------------------------------------------------------------------------------


def assay_cli(*args: str, env: dict[str, str]) -> str:
    done = subprocess.run(
        [sys.executable, "-c", "from app.cli import main; main()", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=300,
    )
    if done.returncode != 0:
        raise RuntimeError(f"assay {' '.join(args[:2])} failed:\n{done.stdout}\n{done.stderr}")
    return done.stdout


def filler_rows(count: int, template: dict[str, Any]) -> Iterator[tuple[Any, ...]]:
    """`count` valid events of other streams: each its own item stream at version 1, of
    another evaluation than the one the GETs read (history that is not that evaluation's)."""
    base = uuid.uuid4().int >> 64 << 64  # sequential ids under a random prefix: cheap to index
    recorded_at = now_iso()
    data = json.loads(template["data"])
    data["evaluation_id"] = str(uuid.uuid4())
    template = {**template, "data": json.dumps(data)}
    for i in range(count):
        ident = str(uuid.UUID(int=base | i))
        yield (
            ident,
            "item",
            ident,
            1,
            template["event_type"],
            template["schema_version"],
            template["data"],
            template["metadata"],
            recorded_at,
        )


class Database:
    """One database of a backend: a SQLAlchemy URL for the service, raw access for the rest."""

    def __init__(self, backend: Backend, name: str) -> None:
        self.backend = backend
        self.name = name

    @property
    def url(self) -> str:
        return self.backend.sqlalchemy_url(self.name)

    @property
    def raw(self) -> str:
        return self.backend.raw_target(self.name)


class Backend:
    name = ""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir

    def sqlalchemy_url(self, name: str) -> str:
        raise NotImplementedError

    def raw_target(self, name: str) -> str:
        raise NotImplementedError

    def create_template(self, env: dict[str, str]) -> None:
        raise NotImplementedError

    def copy(self, label: str) -> Database:
        raise NotImplementedError

    def query(self, db: Database, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        raise NotImplementedError

    def fill(self, db: Database, count: int, template: dict[str, Any]) -> None:
        raise NotImplementedError

    def count_events(self, db: Database) -> int:
        return int(self.query(db, "SELECT count(*) FROM events")[0][0])

    def versions(self) -> str:
        raise NotImplementedError

    def cleanup(self) -> None:
        pass


class SqliteBackend(Backend):
    name = "sqlite"

    def sqlalchemy_url(self, name: str) -> str:
        return f"sqlite+aiosqlite:///{self.workdir / name}.db"

    def raw_target(self, name: str) -> str:
        return str(self.workdir / f"{name}.db")

    def create_template(self, env: dict[str, str]) -> None:
        self.template = Database(self, "template")
        assay_cli("db", "upgrade", "--database-url", self.template.url, env=env)

    def copy(self, label: str) -> Database:
        db = Database(self, label)
        shutil.copyfile(self.template.raw, db.raw)
        return db

    def query(self, db: Database, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        sql = re.sub(r"\$(\d+)", r"?\1", sql)  # numbered parameters, as asyncpg writes them
        with contextlib.closing(sqlite3.connect(db.raw)) as conn:
            return list(conn.execute(sql, args).fetchall())

    def fill(self, db: Database, count: int, template: dict[str, Any]) -> None:
        conn = sqlite3.connect(db.raw, isolation_level=None)
        try:
            conn.execute("PRAGMA synchronous=OFF")
            conn.execute("BEGIN IMMEDIATE")
            conn.executemany(SQLITE_INSERT_EVENT, filler_rows(count, template))
            conn.execute("COMMIT")
            # Fold the WAL back into the file so readers do not wade through it.
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            conn.execute("ANALYZE")
        finally:
            conn.close()

    def versions(self) -> str:
        return f"SQLite {sqlite3.sqlite_version}"


class PostgresBackend(Backend):
    name = "postgresql"

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir)
        self.admin = os.environ.get(
            "ASSAY_BENCH_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
        )
        self.prefix = f"assay_bench_{uuid.uuid4().hex[:10]}"
        self.created: list[str] = []

    def _dsn(self, database: str) -> str:
        return self.admin.rsplit("/", 1)[0] + "/" + database

    def sqlalchemy_url(self, name: str) -> str:
        return "postgresql+asyncpg://" + self._dsn(name).split("://", 1)[1]

    def raw_target(self, name: str) -> str:
        return self._dsn(name)

    def _admin(self, sql: str) -> None:
        import asyncpg

        async def go() -> None:
            conn = await asyncpg.connect(self.admin)
            try:
                await conn.execute(sql)
            finally:
                await conn.close()

        asyncio.run(go())

    def create_template(self, env: dict[str, str]) -> None:
        name = f"{self.prefix}_template"
        self._admin(f'CREATE DATABASE "{name}"')
        self.created.append(name)
        self.template = Database(self, name)
        assay_cli("db", "upgrade", "--database-url", self.template.url, env=env)

    def copy(self, label: str) -> Database:
        name = f"{self.prefix}_{label}"
        self._admin(f'CREATE DATABASE "{name}" TEMPLATE "{self.template.name}"')
        self.created.append(name)
        return Database(self, name)

    def query(self, db: Database, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        import asyncpg

        async def go() -> list[tuple[Any, ...]]:
            conn = await asyncpg.connect(db.raw)
            try:
                return [tuple(r) for r in await conn.fetch(sql, *args)]
            finally:
                await conn.close()

        return asyncio.run(go())

    def fill(self, db: Database, count: int, template: dict[str, Any]) -> None:
        import asyncpg

        async def go() -> None:
            conn = await asyncpg.connect(db.raw)
            try:
                rows = filler_rows(count, template)
                while True:
                    chunk = [row for _, row in zip(range(200_000), rows, strict=False)]
                    if not chunk:
                        break
                    await conn.copy_records_to_table("events", records=chunk, columns=EVENT_COLUMNS)
                # Leave autovacuum nothing to do during the measurements.
                await conn.execute("VACUUM ANALYZE events")
            finally:
                await conn.close()

        asyncio.run(go())

    def versions(self) -> str:
        rows = self.query(Database(self, self.admin.rsplit("/", 1)[1]), "SHOW server_version")
        return f"PostgreSQL {rows[0][0]}"

    def cleanup(self) -> None:
        for name in reversed(self.created):
            try:
                self._admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            except Exception as exc:
                print(f"  !! could not drop database {name}: {exc}", file=sys.stderr)
        self.created.clear()


# --------------------------------------------------------------------------------------------
# Event-store appends, in process.
# --------------------------------------------------------------------------------------------


@dataclass
class AppendResult:
    appends: int
    seconds: float
    latencies: list[float]

    @property
    def rate(self) -> float:
        return self.appends / self.seconds

    def percentile(self, p: float) -> float:
        ordered = sorted(self.latencies)
        return (
            ordered[min(len(ordered) - 1, int(p * len(ordered)))] * 1000
            if ordered
            else float("nan")
        )


async def _drive(
    append: Callable[[], Any], concurrency: int, warmup: float, duration: float
) -> AppendResult:
    began = time.perf_counter()
    start, end = began + warmup, began + warmup + duration
    latencies: list[float] = []

    async def worker() -> None:
        while True:
            sent = time.perf_counter()
            if sent >= end:
                return
            await append()
            finished = time.perf_counter()
            if start <= finished < end:
                latencies.append(finished - sent)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return AppendResult(len(latencies), duration, latencies)


def _event_rows(k: int, template: dict[str, Any]) -> list[tuple[Any, ...]]:
    stream = str(uuid.uuid4())
    recorded_at = now_iso()
    return [
        (
            str(uuid.uuid4()),
            "bench",
            stream,
            v,
            template["event_type"],
            template["schema_version"],
            template["data"],
            template["metadata"],
            recorded_at,
        )
        for v in range(1, k + 1)
    ]


async def bench_store(
    url: str, k: int, template: dict[str, Any], concurrency: int, warmup: float, duration: float
) -> AppendResult:
    from app.composition import open_store
    from infrastructure.db.engine import create_engine
    from infrastructure.eventstore import NewEvent, StreamAppend

    engine = create_engine(url)
    store, _leases = open_store(engine)

    async def append() -> None:
        events = [
            NewEvent(
                event_id=str(uuid.uuid4()),
                event_type=template["event_type"],
                data=template["data"],
                metadata=template["metadata"],
                schema_version=template["schema_version"],
            )
            for _ in range(k)
        ]
        await store.append(
            [
                StreamAppend(
                    stream_type="bench",
                    stream_id=str(uuid.uuid4()),
                    expected_version=0,
                    events=events,
                )
            ],
            recorded_at=now_iso(),
        )

    try:
        return await _drive(append, concurrency, warmup, duration)
    finally:
        await store.close()
        await engine.dispose()


async def bench_raw_sqlite(
    path: str, k: int, template: dict[str, Any], concurrency: int, warmup: float, duration: float
) -> AppendResult:
    # One writer thread with one connection (the embedded mode's single writer), one
    # transaction per append.
    executor = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    loop = asyncio.get_running_loop()
    holder: dict[str, sqlite3.Connection] = {}

    def connect() -> None:
        conn = sqlite3.connect(path, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA busy_timeout=10000")
        holder["conn"] = conn

    def one_transaction(rows: list[tuple[Any, ...]]) -> None:
        conn = holder["conn"]
        conn.execute("BEGIN IMMEDIATE")
        if len(rows) == 1:
            conn.execute(SQLITE_INSERT_EVENT, rows[0])
        else:
            conn.executemany(SQLITE_INSERT_EVENT, rows)
        conn.execute("COMMIT")

    await loop.run_in_executor(executor, connect)

    async def append() -> None:
        await loop.run_in_executor(executor, one_transaction, _event_rows(k, template))

    try:
        return await _drive(append, concurrency, warmup, duration)
    finally:
        await loop.run_in_executor(executor, lambda: holder["conn"].close())
        executor.shutdown()


async def bench_raw_pg(
    dsn: str, k: int, template: dict[str, Any], concurrency: int, warmup: float, duration: float
) -> AppendResult:
    import asyncpg

    pool = await asyncpg.create_pool(dsn, min_size=concurrency, max_size=concurrency)

    async def append() -> None:
        rows = _event_rows(k, template)
        async with pool.acquire() as conn, conn.transaction():
            if len(rows) == 1:
                await conn.execute(PG_INSERT_EVENT, *rows[0])
            else:
                await conn.executemany(PG_INSERT_EVENT, rows)

    try:
        return await _drive(append, concurrency, warmup, duration)
    finally:
        await pool.close()


def run_async(coroutine: Any) -> Any:
    try:
        import uvloop

        return uvloop.run(coroutine)
    except ImportError:
        return asyncio.run(coroutine)


# --------------------------------------------------------------------------------------------
# One backend, end to end.
# --------------------------------------------------------------------------------------------


@dataclass
class Row:
    metric: str
    assay: float
    ceiling: float
    unit: str
    detail_assay: str = ""
    detail_ceiling: str = ""
    note: str = ""

    @property
    def ratio(self) -> float:
        return self.assay / self.ceiling if self.ceiling else float("nan")


def latency_detail(load: LoadResult, cpu_ms: float | None = None) -> str:
    text = f"p50 {load.percentile(0.50):.1f} / p99 {load.percentile(0.99):.1f} ms"
    if cpu_ms is not None:
        text += f"; server {cpu_ms:.2f} ms CPU/req"
    return text + f"; load generator {load.client_cpu:.0%} of a core"


def saturation_note(*loads: LoadResult) -> str:
    busiest = max(load.client_cpu for load in loads)
    return (
        f"load generator at {busiest:.0%} of a core: a floor, not a ceiling"
        if busiest > 0.9
        else ""
    )


def http_row(metric: str, assay: Measured, ceiling: Measured) -> Row:
    return Row(
        metric,
        assay.rate,
        ceiling.rate,
        "req/s",
        latency_detail(assay.load, assay.server_cpu_ms),
        latency_detail(ceiling.load, ceiling.server_cpu_ms),
        saturation_note(assay.load, ceiling.load),
    )


def run_backend(
    backend: Backend, args: argparse.Namespace, runner: LoadRunner
) -> tuple[list[Row], list[str]]:
    from cryptography.fernet import Fernet

    name = backend.name
    notes: list[str] = []
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("ASSAY_")}
    base_env["ASSAY_SECRET_KEY"] = Fernet.generate_key().decode()
    progress(f"[{name}] migrating a template database")
    backend.create_template(base_env)
    service_db = backend.copy("service")
    ceiling_db = backend.copy("ceiling")
    bootstrap = ["admin", "bootstrap", "--org", ORG, "--workspace", WORKSPACE]
    bootstrap += ["--email", "bench@example.com", "--database-url", service_db.url, "--json"]
    key = json.loads(assay_cli(*bootstrap, env=base_env))["api_key"]
    # The API alone: no in-process worker picking up the items the benchmark creates.
    service_env = {
        **base_env,
        "ASSAY_DATABASE_URL": service_db.url,
        "ASSAY_RATE_LIMIT": "0",
        "ASSAY_WORKERS": "0",
        # The body names a model, so the openai agent: create wants an endpoint (never called).
        "ASSAY_OPENAI_BASE_URL": "http://127.0.0.1:9/v1",
    }
    base_path = f"/api/v1/org/{ORG}/ws/{WORKSPACE}"
    create_request = http_request(
        "POST", f"{base_path}/evaluation", key, json.dumps(CREATE_BODY).encode()
    )

    with Server(f"{name}-assay", "app.main:create_app", service_env, backend.workdir) as server:
        # The evaluation every GET reads, and what the service wrote for it (the ceiling's
        # templates, and the shape of the filler events).
        status, created = server.call("POST", f"{base_path}/evaluation", key, CREATE_BODY)
        if status != 201:
            raise RuntimeError(f"create answered {status}: {created[:500]!r}")
        evaluation_id = json.loads(created)["id"]
        status, fetched = server.call("GET", f"{base_path}/evaluation/{evaluation_id}", key)
        if status != 200:
            raise RuntimeError(f"get answered {status}: {fetched[:500]!r}")
        config = capture_ceiling_config(
            backend, service_db, ceiling_db, evaluation_id, created, fetched
        )
        filler = next(e for e in config["events"] if e["item"] is not None)
        get_request = http_request("GET", f"{base_path}/evaluation/{evaluation_id}", key)

        fill(backend, service_db, args.small_events, filler, notes)
        small = backend.count_events(service_db)
    # Each history size is measured on a server started over it (the filler goes straight into
    # the table, so a running server's log tail would still be reading it during the figure).
    with Server(
        f"{name}-assay-small", "app.main:create_app", service_env, backend.workdir
    ) as server:
        progress(f"[{name}] GET evaluation at {small:,} events (assay)")
        get_small = runner.measure(server, get_request, 200, "get-small")
        progress(f"[{name}] create evaluation (assay)")
        create = runner.measure(server, create_request, 201, "create")

        fill(
            backend, service_db, args.large_events - backend.count_events(service_db), filler, notes
        )
        large = backend.count_events(service_db)
    with Server(
        f"{name}-assay-large", "app.main:create_app", service_env, backend.workdir
    ) as server:
        progress(f"[{name}] GET evaluation at {large:,} events (assay)")
        get_large = runner.measure(server, get_request, 200, "get-large")

    config_path = backend.workdir / "ceiling.json"
    config_path.write_text(json.dumps(config))
    ceiling_env = {**base_env, "BENCH_CEILING_CONFIG": str(config_path)}
    app = "bench_ceilings:create_app"
    with Server(f"{name}-ceiling", app, ceiling_env, backend.workdir, SCRIPTS) as server:
        progress(f"[{name}] GET evaluation (ceiling)")
        get_small_ceiling = runner.measure(server, get_request, 200, "get-small")
        progress(f"[{name}] create evaluation (ceiling)")
        create_ceiling = runner.measure(server, create_request, 201, "create")
        progress(f"[{name}] GET evaluation (ceiling, again)")
        get_large_ceiling = runner.measure(server, get_request, 200, "get-large")
    per_create = len(config["events"])
    notes.append(
        f"each create writes {per_create} events + 1 evaluation row + {len(config['items'])} "
        f"item rows; the ceiling wrote {backend.count_events(ceiling_db):,} event rows"
    )

    rows = [
        http_row("create evaluation, 10 tasks (req/s)", create, create_ceiling),
        http_row(f"GET evaluation @ {small:,} events (req/s)", get_small, get_small_ceiling),
        http_row(f"GET evaluation @ {large:,} events (req/s)", get_large, get_large_ceiling),
    ]
    growth50 = get_large.load.percentile(0.5) / get_small.load.percentile(0.5)
    growth99 = get_large.load.percentile(0.99) / get_small.load.percentile(0.99)
    verdict = "flat" if growth50 <= 1.5 else "GROWS WITH HISTORY"
    notes.append(
        f"GET latency at {large:,} vs {small:,} events: p50 x{growth50:.2f}, "
        f"p99 x{growth99:.2f} ({verdict})"
    )

    # Event-store appends, in process, each side on a fresh database.
    raw_bench = bench_raw_sqlite if name == "sqlite" else bench_raw_pg
    timing = (args.concurrency, args.warmup, args.duration)
    for k in (1, 10):
        progress(f"[{name}] event-store appends, {k} event(s) each (EventStore)")
        store = run_async(bench_store(backend.copy(f"store{k}").url, k, filler, *timing))
        progress(f"[{name}] event-store appends, {k} event(s) each (raw driver)")
        raw = run_async(raw_bench(backend.copy(f"raw{k}").raw, k, filler, *timing))
        rows.append(
            Row(
                f"event-store appends, {k} event{'s' if k > 1 else ''}/append (appends/s)",
                store.rate,
                raw.rate,
                "appends/s",
                append_detail(store, k),
                append_detail(raw, k),
            )
        )
    return rows, notes


def append_detail(result: AppendResult, k: int) -> str:
    p50, p99 = result.percentile(0.5), result.percentile(0.99)
    return f"{result.rate * k:,.0f} events/s; p50 {p50:.1f} / p99 {p99:.1f} ms per append"


def fill(
    backend: Backend, db: Database, count: int, filler: dict[str, Any], notes: list[str]
) -> None:
    if count <= 0:
        return
    progress(f"[{backend.name}] loading {count:,} filler events")
    started = time.perf_counter()
    backend.fill(db, count, filler)
    seconds = time.perf_counter() - started
    notes.append(f"loaded {count:,} filler events in {seconds:.1f}s ({count / seconds:,.0f}/s)")


def capture_ceiling_config(
    backend: Backend,
    service_db: Database,
    ceiling_db: Database,
    evaluation_id: str,
    created: bytes,
    fetched: bytes,
) -> dict[str, Any]:
    """What the service wrote for one create, as templates for the ceiling to write again."""
    items = backend.query(
        service_db,
        "SELECT id, position, status, doc FROM items WHERE evaluation_id = $1 ORDER BY position",
        evaluation_id,
    )
    item_index = {row[0]: i for i, row in enumerate(items)}
    events = backend.query(
        service_db,
        "SELECT stream_type, stream_id, stream_version, event_type, schema_version, data, "
        "metadata FROM events WHERE stream_id = $1 "
        "OR stream_id IN (SELECT id FROM items WHERE evaluation_id = $1) ORDER BY position",
        evaluation_id,
    )
    evaluation = backend.query(
        service_db,
        "SELECT org_id, workspace_id, project_id, created_by, status, doc "
        "FROM evaluations WHERE id = $1",
        evaluation_id,
    )[0]
    config: dict[str, Any] = {
        "backend": backend.name,
        "events": [
            {
                "stream_type": e[0],
                "item": None if e[1] == evaluation_id else item_index[e[1]],
                "stream_version": e[2],
                "event_type": e[3],
                "schema_version": e[4],
                "data": e[5],
                "metadata": e[6],
            }
            for e in events
        ],
        "evaluation": dict(
            zip(
                ("org_id", "workspace_id", "project_id", "created_by", "status", "doc"),
                evaluation,
                strict=True,
            )
        ),
        "items": [{"position": r[1], "status": r[2], "doc": r[3]} for r in items],
        "create_response": created.decode(),
        "get_docs": {evaluation_id: fetched.decode()},
    }
    if backend.name == "sqlite":
        config["sqlite_path"] = ceiling_db.raw
    else:
        config["pg_dsn"] = ceiling_db.raw
    return config


# --------------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------------


def machine_info(backends: list[Backend]) -> list[str]:
    from importlib import metadata

    def version(name: str) -> str:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return "-"

    model = ""
    with contextlib.suppress(OSError):
        model = next(
            (
                ln.split(":", 1)[1].strip()
                for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")
            ),
            "",
        )
    cores = os.cpu_count()
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else cores
    packages = ", ".join(
        f"{n} {version(n)}"
        for n in (
            "litestar",
            "msgspec",
            "sqlalchemy",
            "aiosqlite",
            "asyncpg",
            "uvicorn",
            "uvloop",
            "httptools",
        )
    )
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    lines = [
        f"machine: {cores} cores ({usable} usable) {model}; {platform.platform()}; "
        f"load average {load} (other work on the box skews figures, not much their ratios)",
        f"python {platform.python_version()} ({platform.python_implementation()}); {packages}",
    ]
    for backend in backends:
        with contextlib.suppress(Exception):
            lines.append(f"{backend.name}: {backend.versions()}")
    return lines


def print_table(backend: str, rows: list[Row], notes: list[str], args: argparse.Namespace) -> None:
    print()
    print(
        f"== {backend} ==  ({args.concurrency} concurrent clients, "
        f"{args.warmup:g}s warm-up + {args.duration:g}s per figure)"
    )
    header = f"{'metric':<52} | {'assay':>10} | {'ceiling':>10} | {'ratio':>5} | target"
    print(header)
    print("-" * len(header))
    for row in rows:
        mark = "" if row.ratio >= TARGET else "  BELOW TARGET"
        print(
            f"{row.metric:<52} | {row.assay:>10,.0f} | {row.ceiling:>10,.0f} | "
            f"{row.ratio:>5.2f} | >= {TARGET}{mark}"
        )
        print(f"{'':<4}assay:   {row.detail_assay}")
        print(f"{'':<4}ceiling: {row.detail_ceiling}")
        if row.note:
            print(f"{'':<4}note: {row.note}")
    for note in notes:
        print(f"  * {note}")
    print(f"  * load average after: {', '.join(f'{x:.2f}' for x in os.getloadavg())}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", choices=["sqlite", "postgresql", "both"], default="both")
    parser.add_argument("--quick", action="store_true", help="0.5s warm-up + 2s per figure")
    parser.add_argument("--duration", type=float, help="seconds measured per figure (default 5)")
    parser.add_argument("--warmup", type=float, help="seconds of warm-up per figure (default 1)")
    parser.add_argument("--concurrency", type=int, default=CONCURRENCY)
    parser.add_argument("--small-events", type=int, default=10_000)
    parser.add_argument("--large-events", type=int, default=1_000_000)
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (logs)")
    parser.add_argument(
        "--py-spy",
        type=Path,
        metavar="DIR",
        help="sample each server with py-spy during each figure; collapsed stacks land in DIR",
    )
    args = parser.parse_args(argv)
    args.duration = args.duration or (2.0 if args.quick else 5.0)
    args.warmup = args.warmup if args.warmup is not None else (0.5 if args.quick else 1.0)
    sys.path.insert(0, str(ROOT))

    workdir = Path(tempfile.mkdtemp(prefix="assay-bench-"))
    names = ["sqlite", "postgresql"] if args.backend == "both" else [args.backend]
    backends: list[Backend] = [
        (SqliteBackend if n == "sqlite" else PostgresBackend)(workdir / n) for n in names
    ]
    for backend in backends:
        backend.workdir.mkdir(parents=True)
    print("Assay API benchmark: each figure beside its ceiling, measured in this run")
    print(f"command: {' '.join([Path(sys.executable).name, *sys.argv])}")
    for line in machine_info(backends):
        print(line)
    if args.py_spy is not None:
        args.py_spy.mkdir(parents=True, exist_ok=True)
    runner = LoadRunner(args.concurrency, args.warmup, args.duration, args.py_spy)
    failed = False
    try:
        for backend in backends:
            try:
                rows, notes = run_backend(backend, args, runner)
                print_table(backend.name, rows, notes, args)
            except Exception:
                failed = True
                print(f"\n== {backend.name} == FAILED")
                traceback.print_exc()
            finally:
                backend.cleanup()
    finally:
        runner.close()
        for backend in backends:
            backend.cleanup()
        if args.keep or failed:
            print(f"\nlogs and databases kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
