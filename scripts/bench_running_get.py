"""Polls of a running evaluation: GET p50/p99 under 32 polling clients while the server's own
workers run its items, and the server CPU each GET adds.

    .venv/bin/python scripts/bench_running_get.py [--backend sqlite|postgresql]
        [--workers 32] [--items 1500] [--duration 3] [--code DIR]

One server (`ASSAY_WORKERS` item slots in process, the strict sandbox unless
`--isolation weak`) runs an evaluation of `--items` oracle items at concurrency `--workers`.
While it runs, the same window is measured twice: workers alone, then workers plus 32
clients polling `GET /evaluation/{id}` (the `dn --wait` and dashboard read). CPU per GET is
(CPU of the loaded window - CPU of the quiet window) / GETs completed.

`--writer worker-process` runs the same slots in an `assay worker` process of their own beside
the server (how a deployment runs them: the server's loop then serves reads only, and learns
of the worker's appends through its tailer); the quiet window then counts the server alone.
`--writer api` replaces the workers (whose sandboxes dominate this box's CPU) with
`--writers` clients that cancel and retry the polled evaluation in a loop: each accepted
request is an append made by the serving process itself, the case where an evicting cache
misses on nearly every poll. `--code DIR` runs the server from another checkout (e.g. an
export of main) with this venv, for a before/after.
Targets (issue 10): at most 0.5 ms of server CPU per GET, p99 under 50 ms.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parent
sys.path.insert(0, str(SCRIPTS))

import bench_api  # noqa: E402
from bench_api import (  # noqa: E402
    ORG,
    WORKSPACE,
    Backend,
    LoadRunner,
    PostgresBackend,
    Server,
    SqliteBackend,
    assay_cli,
    http_request,
    progress,
)


def status_of(server: Server, path: str, key: str) -> dict[str, object]:
    code, body = server.call("GET", path, key)
    if code != 200:
        raise RuntimeError(f"GET answered {code}: {body[:300]!r}")
    parsed: dict[str, object] = json.loads(body)
    return parsed


WRITES = [0]


WORKER_ARGV = (sys.executable, "-c", "from app.cli import main; main()", "worker", "--slots")


def churn(server: Server, path: str, key: str, stop: threading.Event) -> None:
    """Cancel and retry the evaluation until told to stop (each one append in the server)."""
    while not stop.is_set():
        for action in ("cancel", "retry-failed"):
            code, _ = server.call("POST", f"{path}/{action}", key)
            WRITES[0] += code == 200


def finished(evaluation: dict[str, object]) -> int:
    counts = evaluation["item_counts"]
    assert isinstance(counts, dict)
    return sum(counts[s] for s in ("passed", "failed", "errored", "infra_error", "timed_out"))


def run(backend: Backend, args: argparse.Namespace) -> None:
    from cryptography.fernet import Fernet

    env = {k: v for k, v in os.environ.items() if not k.startswith("ASSAY_")}
    env["ASSAY_SECRET_KEY"] = Fernet.generate_key().decode()
    backend.create_template(env)
    db = backend.copy("running")
    bootstrap = ["admin", "bootstrap", "--org", ORG, "--workspace", WORKSPACE]
    bootstrap += ["--email", "bench@example.com", "--database-url", db.url, "--json"]
    key = json.loads(assay_cli(*bootstrap, env=env))["api_key"]
    server_env = {
        **env,
        "ASSAY_DATABASE_URL": db.url,
        "ASSAY_RATE_LIMIT": "0",
        "ASSAY_WORKERS": str(args.workers if args.writer == "workers" else 0),
        "ASSAY_SANDBOX_ISOLATION": args.isolation,
        "ASSAY_SANDBOX_ROOT": str(backend.workdir / "sandboxes"),
        "ASSAY_BUNDLE_CACHE": str(backend.workdir / "bundles"),
    }
    base = f"/api/v1/org/{ORG}/ws/{WORKSPACE}"
    body = {
        "name": "running",
        "capability": "oracle",
        "task_names": ["find-the-flag"] * args.items,
        "concurrency": args.workers,
    }
    runner = LoadRunner(32, args.warmup, args.duration)
    try:
        with Server(
            f"{backend.name}-running", "app.main:create_app", server_env, backend.workdir
        ) as server:
            code, created = server.call("POST", f"{base}/evaluation", key, body)
            if code != 201:
                raise RuntimeError(f"create answered {code}: {created[:300]!r}")
            path = f"{base}/evaluation/{json.loads(created)['id']}"
            writes = 0
            worker: subprocess.Popen[bytes] | None = None
            stop = threading.Event()
            writers = [
                threading.Thread(target=churn, args=(server, path, key, stop))
                for _ in range(args.writers if args.writer == "api" else 0)
            ]
            for writer in writers:
                writer.start()
            if args.writer == "worker-process":
                worker = subprocess.Popen(
                    [*WORKER_ARGV, str(args.workers)],
                    env={**server_env, "ASSAY_WORKERS": str(args.workers)},
                    cwd=bench_api.ROOT,
                    stdout=subprocess.DEVNULL,
                    stderr=(backend.workdir / "worker.log").open("ab"),
                    start_new_session=True,
                )
            if not writers:
                # Measure once items flow (the first sandboxes take a while to provision).
                deadline = time.monotonic() + 120
                while finished(status_of(server, path, key)) < args.workers:
                    if time.monotonic() > deadline:
                        raise RuntimeError("the evaluation's items never finished")
                    time.sleep(0.2)
            time.sleep(args.warmup)
            quiet_cpu = server.cpu()
            time.sleep(args.duration)
            quiet_cpu = server.cpu() - quiet_cpu
            progress(f"[{backend.name}] polling a running evaluation with 32 clients")
            loaded = runner.measure(server, http_request("GET", path, key), 200, "running-get")
            window = args.warmup + args.duration
            gets_cpu = (
                loaded.server_cpu_ms * loaded.load.total / 1000 - quiet_cpu * window / args.duration
            )
            stop.set()
            for writer in writers:
                writer.join()
            if worker is not None:
                worker.terminate()
                worker.wait(timeout=60)
            writes = WRITES[0]
            after = status_of(server, path, key)
            done = finished(after)
            source = (
                f"{args.writers} cancel/retry clients"
                if writers
                else f"{args.workers} workers"
                + (" in an `assay worker` process" if worker is not None else " in process")
            )
            print(
                f"{backend.name}: GET of a running evaluation, {source}, 32 polling "
                f"clients, {args.duration}s: p50 {loaded.load.percentile(0.5):.1f} ms, p99 "
                f"{loaded.load.percentile(0.99):.1f} ms, {loaded.rate:,.0f} GET/s, server CPU per "
                f"GET {gets_cpu / max(1, loaded.load.total) * 1000:.2f} ms (workers alone "
                f"{quiet_cpu / args.duration * 100:.0f}% of a core); status after: "
                f"{after['status']}, {done} of {args.items} items finished"
                + (f"; {writes} cancel/retry writes" if writes else "")
            )
    finally:
        runner.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", choices=["sqlite", "postgresql"], default="sqlite")
    parser.add_argument("--workers", type=int, default=32)
    parser.add_argument("--items", type=int, default=1500)
    parser.add_argument("--duration", type=float, default=3.0)
    parser.add_argument("--warmup", type=float, default=0.5)
    parser.add_argument("--isolation", choices=["strict", "weak"], default="strict")
    parser.add_argument("--writer", choices=["workers", "worker-process", "api"], default="workers")
    parser.add_argument("--writers", type=int, default=4, help="clients writing, with api")
    parser.add_argument("--code", type=Path, help="serve from this checkout instead")
    args = parser.parse_args(argv)
    if args.code is not None:
        bench_api.ROOT = args.code.resolve()
    with tempfile.TemporaryDirectory(prefix="assay-running-") as workdir:
        backend: Backend = (
            SqliteBackend(Path(workdir))
            if args.backend == "sqlite"
            else PostgresBackend(Path(workdir))
        )
        try:
            run(backend, args)
        finally:
            backend.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
