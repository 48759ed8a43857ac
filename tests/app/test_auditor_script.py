"""The README's standalone script recomputes an evaluation's chains from a live history answer,
and the README shows exactly the script the test runs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.app.conftest import Api

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "verify_history.py"
AUDIT_FIELDS = {
    "position", "event_id", "stream_type", "stream_id", "stream_version", "type",
    "schema_version", "data", "metadata", "recorded_at", "prev_hash", "hash",
    "chain_prev_hash", "chain_hash",
}  # fmt: skip


def run_script(answer: object, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    saved = tmp_path / "history.json"
    saved.write_text(json.dumps(answer))
    # -I: isolated mode, no site-packages: the script may only use the standard library.
    return subprocess.run(
        [sys.executable, "-I", str(SCRIPT), str(saved)], capture_output=True, text=True, timeout=60
    )


def test_readme_shows_the_script_the_test_runs() -> None:
    readme = (ROOT / "README.md").read_text()
    assert SCRIPT.read_text().strip() in readme


def test_history_answer_recomputes_with_the_standalone_script_and_tampering_is_caught(
    api: Api, tmp_path: Path
) -> None:
    created = api.create(name="audited ✓", task_names=["find-the-flag", "decode-payload"])
    assert created.status_code == 201, created.text
    evaluation_id = created.json()["id"]
    assert api.post(f"/evaluation/{evaluation_id}/cancel").status_code == 200
    answer = api.get(f"/evaluation/{evaluation_id}/events").json()
    events = answer["events"]
    assert len(events) == 6
    assert all(set(e) >= AUDIT_FIELDS for e in events)
    assert events[0]["metadata"]["request_id"] == events[0]["request_id"]

    result = run_script(answer, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith("ok: 6 events recompute")
    assert events[-1]["chain_hash"] in result.stdout

    events[2]["data"]["attempt"] = 7  # what a server that rewrote history would answer
    result = run_script(answer, tmp_path)
    assert result.returncode == 1
    assert f"position {events[2]['position']}: hash does not match" in result.stdout
