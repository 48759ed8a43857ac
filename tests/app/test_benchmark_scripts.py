"""The comparison scripts' own runs of Assay still work: they drive the product through its
composition root and event store, and a rename there used to break them silently (the
figures of issue 10 come from these). Each runs its smallest real measurement."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.infrastructure.strict_support import require_root

ROOT = Path(__file__).resolve().parents[2]
PAYLOAD = '{"n": %9d, "pad": "' + "x" * 173 + '"}'


def run_script(*args: str) -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, cwd=ROOT, timeout=240
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert isinstance(result, dict)
    return result


def test_bench_compare_runs_an_evaluation_of_sandboxed_samples_to_the_end() -> None:
    require_root()  # the worker's default, strict, sandbox
    result = run_script("scripts/bench_compare.py", "_assay", "sqlite", "6", "3", "True")
    assert result["samples"] == 6 and result["passed"] == "6"


def test_compare_eventsourcing_measures_the_store_and_its_driver_floor(tmp_path: Path) -> None:
    for side, per_append in (("_assay", 1), ("_assay", 50), ("_floor", 1)):
        url = f"sqlite+aiosqlite:///{tmp_path / f'{side}-{per_append}.db'}"
        spec = {"url": url, "writers": 2, "per_append": per_append, "duration": 0.2}
        spec |= {"warm_up": 0.05, "payload": PAYLOAD}
        result = run_script("scripts/compare_eventsourcing.py", side, json.dumps(spec))
        assert float(str(result["rate"])) > 0
