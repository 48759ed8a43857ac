"""Assay side by side with its peers, each run interleaved with the other, min / median / max.

    .venv/bin/python scripts/bench_compare.py [--only inspect|eventsourcing|scale]
        [--runs N] [--samples N] [--concurrency C] [--backend sqlite|postgresql|both]
        [--warm-pool on|off|both]

Peers are installed into virtualenvs of their own under `.bench-venvs/` (never into the
project's): `inspect` is Inspect AI at `INSPECT_VERSION`, created on first use.

- `inspect` (orchestration): N samples (default 300), each running one command in a sandbox
  (`echo FLAG{bench}`), scored by exact flag, concurrency C (default 32). Inspect AI runs them
  with its `local` sandbox (a temporary folder and a bare `bash`: no isolation) and the
  `mockllm` model; Assay runs an evaluation of N items of a flag task with the `oracle` agent
  through its worker (`WorkerPool`, what `assay worker --slots C` runs) on SQLite (and
  PostgreSQL with `--backend`), in the strict sandbox, the worker's default. Each side runs in
  a process of its own, after a warm-up of 8 samples in that process; wall is from the
  start of the run (Inspect's `eval`, Assay's create) to its last result, CPU is the process's
  and its children's over the same span. Runs alternate which side goes first. Printed: wall
  and CPU per sample of each side, and the ratio Assay / Inspect of each pair of runs.
- `eventsourcing` and `scale`: the other comparisons live in scripts of their own, run from
  here when present (`EXTRA_COMPARISONS`: a script per name, called with --runs).

The machine is shared: compare ratios within one run, not figures across runs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
VENVS = ROOT / ".bench-venvs"
INSPECT_VERSION = "0.3.285"
FLAG = "FLAG{bench}"
TASK = "bench-one-command"
WARM_UP = 8
# The other comparisons of issue 10, each a script of its own, run when it exists.
EXTRA_COMPARISONS = {
    "eventsourcing": ROOT / "scripts" / "compare_eventsourcing.py",
    "scale": ROOT / "scripts" / "compare_scale.py",
}


def progress(message: str) -> None:
    print(f"  .. {message}", file=sys.stderr, flush=True)


def cpu_seconds() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def summary(values: list[float], digits: int = 1) -> str:
    return " / ".join(
        f"{v:.{digits}f}" for v in (min(values), statistics.median(values), max(values))
    )


# --------------------------------------------------------------------------------------------
# Inspect AI, in its own virtualenv
# --------------------------------------------------------------------------------------------

INSPECT_PROGRAM = textwrap.dedent(
    f"""
    import json, resource, sys, time
    from inspect_ai import Task, eval
    from inspect_ai.dataset import Sample
    from inspect_ai.scorer import includes
    from inspect_ai.solver import Generate, TaskState, solver
    from inspect_ai.util import sandbox

    @solver
    def one_command():
        async def solve(state: TaskState, generate: Generate) -> TaskState:
            result = await sandbox().exec(["bash", "-c", "echo '{FLAG}'"])
            state.output.completion = result.stdout
            return state
        return solve

    def cpu():
        own = resource.getrusage(resource.RUSAGE_SELF)
        kids = resource.getrusage(resource.RUSAGE_CHILDREN)
        return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime

    def run(samples, concurrency, log_dir):
        dataset = [Sample(input="Submit the flag.", target="{FLAG}") for _ in range(samples)]
        task = Task(dataset=dataset, solver=one_command(), scorer=includes(), sandbox="local")
        return eval(task, model="mockllm/model", max_samples=concurrency,
                    max_sandboxes=concurrency, max_subprocesses=concurrency, display="none",
                    log_dir=log_dir, log_level="warning")[0]

    samples, concurrency, log_dir = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    run({WARM_UP}, 4, log_dir)
    cpu0, t0 = cpu(), time.perf_counter()
    log = run(samples, concurrency, log_dir)
    wall, used = time.perf_counter() - t0, cpu() - cpu0
    accuracy = log.results.scores[0].metrics["accuracy"].value if log.results else None
    print(json.dumps({{"wall": wall, "cpu": used, "samples": samples, "passed": accuracy}}))
    """
)


def peer_python(name: str, requirement: str) -> Path:
    """The Python of the peer's own virtualenv, created (and the peer installed) if missing."""
    venv = VENVS / name
    python = venv / "bin" / "python"
    marker = venv / ".installed"
    if marker.is_file() and marker.read_text() == requirement:
        return python
    progress(f"installing {requirement} into {venv} (once)")
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
    subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", requirement],
        check=True,
    )
    marker.write_text(requirement)
    return python


def run_inspect(python: Path, samples: int, concurrency: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-inspect-") as folder:
        program = Path(folder) / "bench_inspect.py"
        program.write_text(INSPECT_PROGRAM)
        out = subprocess.run(
            [str(python), str(program), str(samples), str(concurrency), f"{folder}/logs"],
            check=True,
            capture_output=True,
            text=True,
            cwd=folder,
        )
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


# --------------------------------------------------------------------------------------------
# Assay, through its worker (this script, in a process of its own: `_assay`)
# --------------------------------------------------------------------------------------------


def run_assay(backend: str, samples: int, concurrency: int, warm: bool) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, __file__, "_assay", backend, str(samples), str(concurrency), str(warm)],
        check=True,
        capture_output=True,
        text=True,
    )
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


async def assay_once(backend: str, samples: int, concurrency: int, warm: bool) -> dict[str, Any]:
    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(ROOT / "scripts"))
    from bench_worker import PgDatabase
    from cryptography.fernet import Fernet

    from app.api.schemas import CreateEvaluationRequest
    from app.composition import build_container
    from app.logging import configure_logging
    from app.services.evaluations import CommandContext
    from domain.evaluation import TERMINAL_STATUSES
    from infrastructure.db.migrate import upgrade
    from infrastructure.identity.bootstrap import bootstrap
    from infrastructure.settings import Settings

    configure_logging("WARNING", json=True)
    workdir = Path(tempfile.mkdtemp(prefix="bench-assay-"))
    bundle = workdir / "tasks" / TASK
    bundle.mkdir(parents=True)
    (bundle / "task.yaml").write_text(
        f"name: {TASK}\nversion: '1.0.0'\ninstruction: Submit the flag.\n"
        f"verification:\n  type: flag\n  flag: '{FLAG}'\n"
    )
    # The oracle runs this in the sandbox: the one command of the sample.
    (bundle / "solution.sh").write_text(f"echo '{FLAG}'\n")
    pg = PgDatabase() if backend == "postgresql" else None
    if pg is not None:
        await pg.create()
        url = pg.url
    else:
        url = f"sqlite+aiosqlite:///{workdir / 'bench.db'}"
    try:
        await upgrade(url)
        settings = Settings(
            database_url=url,
            workers=0,
            rate_limit=0,
            secret_key=Fernet.generate_key().decode(),
            task_paths=(str(workdir / "tasks"),),
            sandbox_root=str(workdir / "sandboxes"),
            sandbox_warm=-1 if warm else 0,
            log_level="WARNING",
        )
        container = build_container(settings)
        try:
            boot = await bootstrap(
                container.identity, org_key="bench", workspace_key="main", email="b@x.y"
            )
            principal = await container.identity.authenticate(boot.raw_key)
            assert principal is not None
            ctx = CommandContext(
                principal=principal, org_id=boot.org.id, workspace_id=boot.workspace.id
            )
            pool = container.worker_pool(concurrency)
            await pool.start()
            try:

                async def evaluation(count: int, limit: int) -> str:
                    view = await container.evaluations.create(
                        ctx,
                        CreateEvaluationRequest(
                            name="bench",
                            model="bench",
                            agent_type="oracle",
                            task_names=[TASK] * count,
                            concurrency=limit,
                        ),
                    )
                    while True:
                        current = await container.queries.evaluation(view.id)
                        assert current is not None
                        if current.status in TERMINAL_STATUSES:
                            return str(current.item_counts.get("passed", 0))
                        await asyncio.sleep(0.05)

                await evaluation(WARM_UP, 4)
                cpu0, started = cpu_seconds(), time.perf_counter()
                passed = await evaluation(samples, concurrency)
                wall, used = time.perf_counter() - started, cpu_seconds() - cpu0
            finally:
                await pool.stop()
        finally:
            await container.close()
    finally:
        if pg is not None:
            await pg.drop()
        shutil.rmtree(workdir, ignore_errors=True)
    return {"wall": wall, "cpu": used, "samples": samples, "passed": passed}


# --------------------------------------------------------------------------------------------
# The comparison
# --------------------------------------------------------------------------------------------


def compare_inspect(args: argparse.Namespace) -> None:
    python = peer_python("inspect", f"inspect-ai=={INSPECT_VERSION}")
    backends = ["sqlite", "postgresql"] if args.backend == "both" else [args.backend]
    pools = {"on": [""], "off": ["-nowarm"], "both": ["", "-nowarm"]}[args.warm_pool]
    sides = ["inspect", *(f"assay-{b}{p}" for b in backends for p in pools)]
    figures: dict[str, list[dict[str, Any]]] = {side: [] for side in sides}
    for run in range(args.runs):
        order = sides if run % 2 == 0 else list(reversed(sides))
        for side in order:
            progress(f"run {run + 1}/{args.runs}: {side}, {args.samples} samples")
            if side == "inspect":
                result = run_inspect(python, args.samples, args.concurrency)
            else:
                backend = side.split("-")[1]
                warm = not side.endswith("-nowarm")
                result = run_assay(backend, args.samples, args.concurrency, warm)
            figures[side].append(result)
            progress(f"   wall {result['wall']:.2f}s, CPU {result['cpu']:.2f}s")
    print(
        f"\n## Orchestration: {args.samples} samples of one sandboxed command, concurrency "
        f"{args.concurrency}, {args.runs} interleaved runs; min / median / max "
        f"({os.cpu_count()} cores, shared)\n"
    )
    print("| system | wall for all (s) | wall ms/sample | CPU ms/sample | passed |")
    print("|---|---|---|---|---|")
    for side, rows in figures.items():
        label = (
            f"Inspect AI {INSPECT_VERSION}, `local` sandbox (no isolation)"
            if side == "inspect"
            else f"Assay, {side.split('-')[1]}, strict sandbox"
            + (", no warm pool" if side.endswith("-nowarm") else ", warm pool")
        )
        walls = [r["wall"] for r in rows]
        per = [r["wall"] * 1000 / r["samples"] for r in rows]
        cpu = [r["cpu"] * 1000 / r["samples"] for r in rows]
        passed = sorted({str(r["passed"]) for r in rows})
        print(
            f"| {label} | {summary(walls, 2)} | {summary(per)} | {summary(cpu)} "
            f"| {', '.join(passed)} |"
        )
    print("\n| ratio (paired by run) | wall, min / median / max | CPU, min / median / max |")
    print("|---|---|---|")
    for side in sides[1:]:
        walls = [
            a["wall"] / i["wall"] for a, i in zip(figures[side], figures["inspect"], strict=True)
        ]
        cpus = [a["cpu"] / i["cpu"] for a, i in zip(figures[side], figures["inspect"], strict=True)]
        verdict = "met" if statistics.median(walls) <= 1.0 else "not met"
        print(
            f"| {side} / inspect | {summary(walls, 2)} | {summary(cpus, 2)} |"
            f" target <= 1.0: {verdict}"
        )


def run_extra(name: str, args: argparse.Namespace) -> None:
    script = EXTRA_COMPARISONS[name]
    if not script.is_file():
        print(f"\n## {name}: {script.relative_to(ROOT)} is not there yet (skipped)")
        return
    progress(f"{name}: {script.relative_to(ROOT)} --runs {args.runs}")
    subprocess.run([sys.executable, str(script), "--runs", str(args.runs)], check=True)


def main(argv: list[str]) -> int:
    if argv[:1] == ["_assay"]:
        backend, samples, concurrency, warm = argv[1], int(argv[2]), int(argv[3]), argv[4]
        print(json.dumps(asyncio.run(assay_once(backend, samples, concurrency, warm == "True"))))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=["inspect", *EXTRA_COMPARISONS], default=None)
    parser.add_argument("--runs", type=int, default=3, help="interleaved runs (default 3)")
    parser.add_argument("--samples", type=int, default=300, help="samples per run (inspect)")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument(
        "--backend", choices=["sqlite", "postgresql", "both"], default="sqlite", help="Assay's"
    )
    parser.add_argument(
        "--warm-pool",
        choices=["on", "off", "both"],
        default="on",
        help="Assay's worker with its warm sandbox pool (the default), without, or both",
    )
    args = parser.parse_args(argv)
    for name in ["inspect", *EXTRA_COMPARISONS]:
        if args.only in (None, name):
            compare_inspect(args) if name == "inspect" else run_extra(name, args)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
