"""The execution engine end to end, through HTTP the way a user sees it, on both backends.

Each test starts the API with an in-process worker (`running_service`), creates evaluations,
and polls GET evaluation until a terminal status. Outcomes the shipped tasks cannot produce
(a deadline overrun, a failing setup, a broken checker, a long-running solution) come from
bundles written into a temporary folder passed through `task_paths`. Solutions that must be
observed from outside the sandbox write a heartbeat (the wall-clock time, `date +%s.%N`) to an
absolute path outside it: the path is written into the bundle when it is generated, so a
heartbeat that stops changing proves the sandbox's process tree is gone.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from app.worker.runner import CANCEL_POLL_SECONDS
from infrastructure.sandbox.local.provider import STRICT_VIEWS_ROOT
from infrastructure.tasks import SHIPPED_TASKS_DIR
from tests.app.conftest import run_identity
from tests.app.execution_fixtures import (
    FLAG_FILES,
    HAPPY_PATH,
    SHIPPED_FLAGS,
    SHIPPED_TASKS,
    Engine,
    Start,
    epoch,
    leftover_sandboxes,
    write_bundle,
)
from tests.infrastructure.scripted_openai import ScriptedOpenAI, completion, tool_call

AGENT_RESULT_KEYS = {
    "agent",
    "stop_reason",
    "generation_steps",
    "total_tool_calls",
    "total_tokens",
    "input_tokens",
    "output_tokens",
    "duration_ms",
    "error",
}
# Events that take an item out of flight (a requeue after an infra failure counts too).
LEAVES_FLIGHT = {
    "item.verdict",
    "item.timed_out",
    "item.cancelled",
    "item.infra_failed",
    "item.errored",
}


# The tests below watch a sandbox's processes from the host through files they write outside
# the sandbox, which the strict view (rightly) forbids: they run the weak sandbox, whose kills
# are the same engine code paths. The strict view's own kills (deadline, end of turn, cancel)
# are pinned in tests/infrastructure/test_strict_sandbox.py and the adversarial suites.
WITNESSED = "weak"


def heartbeat_loop(path: Path | str, seconds: int | None = None) -> str:
    """Bash that writes the wall-clock time to `path` every 50 ms, forever or for `seconds`
    (a loop the test fails to stop then ends by itself). A str `path` is a shell word, such as
    '"$hb"' for a file named at run time."""
    target = f"'{path}'" if isinstance(path, Path) else path
    beat = f"date +%s.%N > {target}.tmp && mv -f {target}.tmp {target}"
    if seconds is None:
        return f"while true; do {beat}; sleep 0.05; done"
    return f"end=$((SECONDS + {seconds})); while [ $SECONDS -lt $end ]; do {beat}; sleep 0.05; done"


def read_beat(path: Path) -> float | None:
    try:
        return float(path.read_text().strip())
    except (OSError, ValueError):
        return None


def wait_for_beat(path: Path, timeout: float = 15.0) -> float:
    deadline = time.monotonic() + timeout
    while (beat := read_beat(path)) is None:
        assert time.monotonic() < deadline, f"no heartbeat at {path} after {timeout}s"
        time.sleep(0.05)
    return beat


def last_beat_once_stopped(path: Path, give_up_at: float) -> float:
    """The heartbeat's final value, once it has not changed for half a second (ten beats);
    fails if it still beats at `give_up_at` (wall clock, time.time())."""
    beat = read_beat(path)
    while True:
        time.sleep(0.5)
        now = read_beat(path)
        if now == beat:
            assert beat is not None
            return beat
        assert time.time() < give_up_at, (
            f"heartbeat {path} still beating {time.time() - give_up_at:.1f}s past the bound"
        )
        beat = now


def item_event_types(engine: Engine, evaluation_id: str, item_id: str) -> list[str]:
    # Every event, lease renewals included if any were appended (none should be: a renewal
    # is kept in the lease table, not in the log).
    return [e["type"] for e in engine.item_events(evaluation_id, item_id)]


def max_in_flight(events: list[dict[str, Any]]) -> int:
    """Most items in flight at once, replaying the history in commit order: a claim puts an
    item in flight, its ending (or a requeue after an infra failure) takes it out."""
    in_flight: set[str] = set()
    peak = 0
    for event in sorted(events, key=lambda e: e["position"]):
        if event["stream_type"] != "item":
            continue
        if event["type"] == "item.claimed":
            assert event["stream_id"] not in in_flight, event
            in_flight.add(event["stream_id"])
            peak = max(peak, len(in_flight))
        elif event["type"] in LEAVES_FLIGHT:
            in_flight.discard(event["stream_id"])
    assert not in_flight
    return peak


# ---- verdicts ----


def test_oracle_passes_every_shipped_task_through_every_phase(service: Start) -> None:
    engine = service()
    created = engine.create(
        name="oracle-all", capability="oracle", task_names=list(SHIPPED_TASKS), concurrency=5
    )
    # Requested 5, the one worker has 4 slots.
    assert created["requested_concurrency"] == 5
    assert created["effective_concurrency"] == 4

    done = engine.wait(created["id"], timeout=60)

    assert done["status"] == done["job_status"] == "completed"
    assert done["item_counts"]["passed"] == 5
    assert sum(done["item_counts"].values()) == 5
    assert done["started_at"] is not None and done["completed_at"] is not None
    assert done["analytics"]["status"] == "ready"

    analytics = engine.analytics(created["id"])
    assert analytics["status"] == "ready"
    assert (analytics["total_samples"], analytics["passed_count"]) == (5, 5)
    assert (analytics["failed_count"], analytics["error_count"]) == (0, 0)
    assert analytics["pass_rate"] == 1.0
    ci = analytics["pass_rate_ci95"]
    assert 0.0 < ci["low"] < 1.0 and ci["high"] == 1.0
    breakdown = analytics["analytics_snapshot"]["task_breakdown"]
    assert [
        (b["task_name"], b["passed_count"], b["total_samples"], b["pass_rate"]) for b in breakdown
    ] == [(name, 1, 1, 1.0) for name in sorted(SHIPPED_TASKS)]
    durations = analytics["analytics_snapshot"]["runtime_durations_ms"]
    assert 0 < durations["p50_ms"] <= durations["p95_ms"] <= durations["max_ms"] < 60_000

    items = engine.items(created["id"])
    assert [i["task_name_snapshot"] for i in items] == list(SHIPPED_TASKS)
    for item in items:
        assert item["status"] == item["item_status"] == "passed", item
        assert item["passed"] is True
        assert item["error"] is None
        assert item["retry_count"] == 0
        assert item["worker_id"] is None and item["lease_expires_at"] is None
        stamps = [
            item["queued_at"],
            item["started_at"],
            item["agent_finished_at"],
            item["verified_at"],
            item["completed_at"],
        ]
        assert all(stamps), item
        assert [epoch(s) for s in stamps] == sorted(epoch(s) for s in stamps)
        name = item["task_name_snapshot"]
        if name in FLAG_FILES:
            assert item["result_json"] == {
                "verification": "flag",
                "path": FLAG_FILES[name],
                "found": True,
                "submitted": SHIPPED_FLAGS[name],
                "correct": True,
            }
        elif name in SHIPPED_FLAGS:
            assert item["result_json"] == {
                "verification": "flag",
                "submitted": SHIPPED_FLAGS[name],
                "correct": True,
            }
        else:
            assert item["result_json"]["verification"] == "script"
            assert item["result_json"]["exit_code"] == 0

        result = item["metadata_json"]["_dreadnode"]["agent_result"]
        assert set(result) == AGENT_RESULT_KEYS
        assert result["agent"] == "oracle"
        assert result["stop_reason"] == "finished"
        assert result["total_tool_calls"] == 1
        assert isinstance(result["generation_steps"], int)
        assert result["total_tokens"] == result["input_tokens"] + result["output_tokens"] == 0
        assert result["duration_ms"] > 0
        assert result["error"] is None

        assert item_event_types(engine, created["id"], item["id"]) == list(HAPPY_PATH)
        # Transitions with nothing timed between them share an append: for a flag task the
        # verdict lands with the agent's finish; a checker script gets an append of its own.
        appended_at = {
            e["type"]: e["recorded_at"] for e in engine.item_events(created["id"], item["id"])
        }
        finish = {appended_at[t] for t in ("item.agent_finished", "item.verifying")}
        assert len(finish) == 1
        flag_task = item["task_name_snapshot"] in SHIPPED_FLAGS
        assert (appended_at["item.verdict"] in finish) is flag_task

        transcript = engine.transcript(created["id"], item["id"])
        assert transcript.status_code == 200, transcript.text
        body = transcript.json()
        assert body["session"]["id"] == item["session_id"]
        assert body["session"]["agent"] == "oracle"
        assert body["has_more"] is False
        messages = body["messages"]
        assert [m["seq"] for m in messages] == list(range(1, len(messages) + 1))
        assert [m["role"] for m in messages] == ["assistant", "tool"]
        assert messages[0]["tool_calls"][0]["function"]["name"] == "shell"
        assert messages[1]["tool_call_id"] == messages[0]["tool_calls"][0]["id"]
        assert "exit code: 0" in messages[1]["content"]


def test_nop_fails_every_shipped_task_and_the_evaluation_still_completes(service: Start) -> None:
    engine = service()
    created = engine.create(
        name="nop-all", capability="nop", task_names=list(SHIPPED_TASKS), concurrency=4
    )

    done = engine.wait(created["id"], timeout=60)

    assert done["status"] == "completed"
    assert done["item_counts"]["failed"] == 5
    analytics = engine.analytics(created["id"])
    assert (analytics["passed_count"], analytics["failed_count"], analytics["error_count"]) == (
        0,
        5,
        0,
    )
    assert analytics["pass_rate"] == 0.0
    assert analytics["pass_rate_ci95"]["low"] == 0.0
    for item in engine.items(created["id"]):
        assert item["status"] == "failed", item
        assert item["passed"] is False
        assert item["error"] is None
        assert item["verified_at"] is not None
        result = item["metadata_json"]["_dreadnode"]["agent_result"]
        assert (result["agent"], result["stop_reason"]) == ("nop", "finished")
        name = item["task_name_snapshot"]
        if name in FLAG_FILES:
            # nop wrote nothing: a missing answer file is a wrong answer, not an error.
            assert item["result_json"] == {
                "verification": "flag",
                "path": FLAG_FILES[name],
                "found": False,
            }
        elif name in SHIPPED_FLAGS:
            assert item["result_json"] == {
                "verification": "flag",
                "submitted": "",
                "correct": False,
            }
        else:
            assert item["result_json"]["exit_code"] == 1
        assert item_event_types(engine, created["id"], item["id"]) == list(HAPPY_PATH)
        messages = engine.transcript(created["id"], item["id"]).json()["messages"]
        assert [(m["seq"], m["role"]) for m in messages] == [(1, "assistant")]


# ---- endings without a verdict ----


def test_an_item_past_its_deadline_is_timed_out_and_its_process_tree_killed(
    service: Start, bundles: Path, tmp_path: Path
) -> None:
    heartbeat = tmp_path / "timeout.heartbeat"
    # The heartbeat runs in its own session, detached from the solution: the deadline must
    # kill it too, not only the solution's shell.
    write_bundle(
        bundles,
        "outlives-deadline",
        solution=f"""
            setsid bash -c "{heartbeat_loop(heartbeat)}" < /dev/null > /dev/null 2>&1 &
            sleep 60
            echo 'FLAG{{ok}}'
        """,
    )
    engine = service(sandbox_isolation=WITNESSED)
    created = engine.create(
        name="deadline", capability="oracle", task_names=["outlives-deadline"], task_timeout_sec=2
    )
    assert created["task_timeout_sec"] == 2

    done = engine.wait(created["id"], timeout=30)

    assert done["status"] == "partial"
    assert done["item_counts"]["timed_out"] == 1
    [item] = engine.items(created["id"])
    assert item["status"] == "timed_out"
    assert item["passed"] is None
    assert "task_timeout_sec (2s) exceeded" in item["error"]
    assert item["retry_count"] == 0  # timeouts are never retried automatically
    types = item_event_types(engine, created["id"], item["id"])
    assert types == [*HAPPY_PATH[:4], "item.timed_out"]

    deadline = epoch(item["started_at"]) + 2
    last = last_beat_once_stopped(heartbeat, give_up_at=deadline + 4)
    # It did beat while the item ran, and stopped within 2 s of the deadline.
    assert last > epoch(item["started_at"])
    assert last <= deadline + 2.0, f"heartbeat went on {last - deadline:.2f}s past the deadline"
    # Ended about when the deadline said, not when the solution's 60 s sleep would have.
    assert epoch(item["completed_at"]) - epoch(item["started_at"]) < 10

    analytics = engine.analytics(created["id"])
    assert analytics["error_count"] == 1
    assert analytics["pass_rate"] is None


def test_an_infra_failure_is_retried_with_backoff_then_ends_in_infra_error(
    service: Start, bundles: Path
) -> None:
    write_bundle(
        bundles,
        "broken-setup",
        setup="echo 'cannot fetch the toolchain' >&2\nexit 1\n",
        solution="echo 'FLAG{ok}'",
    )
    engine = service(default_max_retries=2, retry_backoff_seconds=0.1)
    created = engine.create(name="infra", capability="oracle", task_names=["broken-setup"])

    done = engine.wait(created["id"], timeout=30)

    assert done["status"] == "partial"
    assert done["item_counts"]["infra_error"] == 1
    [item] = engine.items(created["id"])
    assert item["status"] == "infra_error"
    assert (item["retry_count"], item["max_retries"]) == (2, 2)
    assert "task setup failed with exit 1" in item["error"]
    assert "cannot fetch the toolchain" in item["error"]
    assert item["session_id"] is None  # never got as far as the agent

    events = engine.item_events(created["id"], item["id"])
    attempt = ["item.claimed", "item.provisioning", "item.infra_failed"]
    assert [e["type"] for e in events] == ["item.queued", *attempt * 3]
    failures = [e for e in events if e["type"] == "item.infra_failed"]
    assert [f["data"]["will_retry"] for f in failures] == [True, True, False]
    claims = [e for e in events if e["type"] == "item.claimed"]
    # Each retry waited for its backoff, and the backoff doubled.
    gaps = []
    for failure, next_claim in zip(failures[:2], claims[1:], strict=True):
        not_before = epoch(failure["data"]["retry_not_before"])
        assert epoch(next_claim["recorded_at"]) >= not_before
        gaps.append(not_before - epoch(failure["recorded_at"]))
    assert 0 < gaps[0] < gaps[1]

    analytics = engine.analytics(created["id"])
    assert analytics["error_count"] == 1
    assert analytics["analytics_snapshot"]["error_summary"] == [
        {"error": item["error"], "count": 1}
    ]
    # Nothing of the sandbox stays behind (cleanup_policy always).
    assert engine.leftover_sandboxes(item["id"]) == []


def test_a_checker_that_breaks_ends_the_item_errored_without_a_retry(
    service: Start, bundles: Path
) -> None:
    write_bundle(
        bundles,
        "broken-checker",
        solution="echo 'patched'",
        checker="echo 'checking'\necho 'checker: missing fixture' >&2\nexit 3\n",
    )
    engine = service(default_max_retries=2)
    created = engine.create(name="errored", capability="oracle", task_names=["broken-checker"])

    done = engine.wait(created["id"], timeout=30)

    assert done["status"] == "partial"
    assert done["item_counts"]["errored"] == 1
    [item] = engine.items(created["id"])
    assert item["status"] == "errored"
    assert item["passed"] is None
    assert "checker exited 3" in item["error"]
    assert "checker: missing fixture" in item["error"]
    assert item["retry_count"] == 0
    assert item_event_types(engine, created["id"], item["id"]) == [
        *HAPPY_PATH[:-1],
        "item.errored",
    ]
    assert engine.analytics(created["id"])["error_count"] == 1


def test_cancel_kills_the_running_sandbox_and_cancels_queued_siblings(
    service: Start, bundles: Path, tmp_path: Path
) -> None:
    heartbeat = tmp_path / "cancel.heartbeat"
    write_bundle(
        bundles,
        "long-haul",
        solution=f"""
            {heartbeat_loop(heartbeat, seconds=60)}
            echo 'FLAG{{ok}}'
        """,
    )
    engine = service(sandbox_isolation=WITNESSED)
    created = engine.create(
        name="cancel-me", capability="oracle", task_names=["long-haul"] * 3, concurrency=1
    )
    first, *siblings = engine.items(created["id"])
    engine.wait_item(created["id"], first["id"], {"agent_running"})
    wait_for_beat(heartbeat)

    cancelled_at = time.time()
    response = engine.cancel(created["id"])

    assert response["status"] == "cancelled"
    assert response["item_counts"]["cancelled"] == 3
    last = last_beat_once_stopped(heartbeat, give_up_at=cancelled_at + 6)
    assert last <= cancelled_at + 5.0, f"heartbeat went on {last - cancelled_at:.2f}s after cancel"

    done = engine.evaluation(created["id"])
    assert done["status"] == "cancelled"
    assert done["item_counts"]["cancelled"] == 3
    assert sum(done["item_counts"].values()) == 3
    items = engine.items(created["id"])
    assert [i["status"] for i in items] == ["cancelled"] * 3
    # The running item ended with its cancellation: nothing the worker did afterwards counts.
    assert item_event_types(engine, created["id"], first["id"]) == [
        *HAPPY_PATH[:4],
        "item.cancelled",
    ]
    for sibling in siblings:
        assert item_event_types(engine, created["id"], sibling["id"]) == [
            "item.queued",
            "item.cancelled",
        ]
        # Its agent never started: no transcript.
        missing = engine.transcript(created["id"], sibling["id"])
        assert missing.status_code == 404, missing.text
        assert missing.json()["type"] == "not_found"
    # The killed sandbox is removed too (cleanup_policy always).
    deadline = time.monotonic() + 10
    while engine.leftover_sandboxes(first["id"]):
        assert time.monotonic() < deadline, engine.leftover_sandboxes(first["id"])
        time.sleep(0.1)


def test_cancel_during_setup_kills_the_sandbox_too(
    service: Start, bundles: Path, tmp_path: Path
) -> None:
    heartbeat = tmp_path / "setup.heartbeat"
    write_bundle(
        bundles,
        "slow-setup",
        setup=heartbeat_loop(heartbeat, seconds=60),
        solution="echo 'FLAG{ok}'",
    )
    engine = service(sandbox_isolation=WITNESSED)
    created = engine.create(
        name="cancel-setup", capability="oracle", task_names=["slow-setup"], task_timeout_sec=20
    )
    [item] = engine.items(created["id"])
    engine.wait_item(created["id"], item["id"], {"provisioning"})
    wait_for_beat(heartbeat)

    cancelled_at = time.time()
    assert engine.cancel(created["id"])["status"] == "cancelled"

    last = last_beat_once_stopped(heartbeat, give_up_at=cancelled_at + 6)
    assert last <= cancelled_at + 5.0
    assert item_event_types(engine, created["id"], item["id"]) == [
        *HAPPY_PATH[:3],
        "item.cancelled",
    ]


def test_a_cancelled_run_stops_even_when_its_item_is_requeued_at_once(
    service: Start, bundles: Path, tmp_path: Path
) -> None:
    beats = tmp_path / "beats"
    beats.mkdir()
    # Each run beats into its own file, so the cancelled run can be told from the new one.
    write_bundle(
        bundles,
        "per-run-beat",
        solution=f"""
            hb=$(mktemp -p '{beats}' run.XXXXXX)
            {heartbeat_loop('"$hb"', seconds=10)}
            echo 'FLAG{{ok}}'
        """,
    )
    engine = service(sandbox_isolation=WITNESSED)
    created = engine.create(name="flip", capability="oracle", task_names=["per-run-beat"])
    [item] = engine.items(created["id"])
    engine.wait_item(created["id"], item["id"], {"agent_running"})
    deadline = time.monotonic() + 15
    while not (first_runs := [p for p in beats.iterdir() if not p.name.endswith(".tmp")]):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    [first_run] = first_runs
    wait_for_beat(first_run)
    # The runner polls the item's status every 0.5 s from the agent's start: act just after a
    # poll, so that the next one comes after the item is running again (as it would, unluckily,
    # in production), not in the ~0.1 s between the cancel and the new claim.
    [started] = [
        e
        for e in engine.item_events(created["id"], item["id"])
        if e["type"] == "item.agent_started"
    ]
    phase = (time.time() - epoch(started["recorded_at"])) % CANCEL_POLL_SECONDS
    time.sleep((0.1 - phase) % CANCEL_POLL_SECONDS)

    cancelled_at = time.time()
    engine.cancel(created["id"])
    engine.retry_failed(created["id"])  # at once: the requeued item is claimed again

    last = last_beat_once_stopped(first_run, give_up_at=cancelled_at + 6)
    assert last <= cancelled_at + 5.0


def test_an_item_requeued_right_after_a_cancel_runs_again_with_its_lease_kept(
    service: Start, bundles: Path, tmp_path: Path
) -> None:
    marker = tmp_path / "first-run-done"
    # The first run is short, the second one longer than the first plus a lease.
    write_bundle(
        bundles,
        "second-run-longer",
        solution=f"""
            if [ -e '{marker}' ]; then sleep 4; else touch '{marker}'; sleep 2; fi
            echo 'FLAG{{ok}}'
        """,
    )
    # Short leases, so a lease that is not renewed lapses within the test.
    engine = service(lease_seconds=1.0, sandbox_isolation=WITNESSED)
    created = engine.create(name="flip", capability="oracle", task_names=["second-run-longer"])
    [item] = engine.items(created["id"])
    engine.wait_item(created["id"], item["id"], {"agent_running"})
    # The first run's solution has started (so the next run takes the long path).
    deadline = time.monotonic() + 15
    while not marker.exists():
        assert time.monotonic() < deadline
        time.sleep(0.02)

    engine.cancel(created["id"])
    engine.retry_failed(created["id"])  # at once: the cancelled run is still winding down

    done = engine.wait(created["id"], timeout=30)
    errors = [
        e["data"]["error"]
        for e in engine.item_events(created["id"], item["id"])
        if e["type"] == "item.infra_failed"
    ]
    assert errors == [], errors
    assert done["status"] == "completed"
    assert engine.item(created["id"], item["id"])["status"] == "passed"


# ---- cleanup policy ----


def wait_until_no_sandbox(engine: Engine, item_id: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while leftovers := engine.leftover_sandboxes(item_id):
        assert time.monotonic() < deadline, f"sandbox of {item_id} still there: {leftovers}"
        time.sleep(0.05)


def test_cleanup_on_success_keeps_the_sandbox_of_an_item_that_did_not_pass(
    service: Start,
) -> None:
    engine = service()
    kept = engine.create(
        name="keep", capability="nop", task_names=["find-the-flag"], cleanup_policy="on_success"
    )
    assert kept["cleanup_policy"] == "on_success"
    passed = engine.create(
        name="pass", capability="oracle", task_names=["decode-payload"], cleanup_policy="on_success"
    )
    assert engine.wait(kept["id"])["status"] == "completed"
    assert engine.wait(passed["id"])["status"] == "completed"

    [failed_item] = engine.items(kept["id"])
    assert failed_item["status"] == "failed"
    # The sandbox is kept right after the verdict: poll for the note.
    deadline = time.monotonic() + 10
    while not failed_item["metadata_json"]["sandbox"].get("kept"):
        assert time.monotonic() < deadline, failed_item
        time.sleep(0.05)
        failed_item = engine.item(kept["id"], failed_item["id"])
    location = Path(failed_item["metadata_json"]["sandbox"]["location"])
    assert failed_item["metadata_json"]["sandbox"]["kept"] is True
    assert location.is_dir()
    # A root worker's strict views live under /run/assay (see LocalSandboxProvider.views_root).
    assert location.parent in (engine.sandbox_root.absolute(), STRICT_VIEWS_ROOT)
    assert location.name.startswith(failed_item["id"])
    # What the setup made is still there for an operator to look at, in the agent's workspace.
    assert (location / "agent" / "workspace" / "haystack").is_dir()
    assert failed_item["status"] == "failed"  # keeping it changed nothing else

    [passed_item] = engine.items(passed["id"])
    assert passed_item["status"] == "passed"
    wait_until_no_sandbox(engine, passed_item["id"])
    assert "kept" not in engine.item(passed["id"], passed_item["id"])["metadata_json"]["sandbox"]


def test_cleanup_always_removes_the_sandbox_once_the_item_ends(service: Start) -> None:
    engine = service()
    created = engine.create(
        name="always",
        capability="nop",
        task_names=["find-the-flag", "path-traversal"],
        cleanup_policy="always",
        concurrency=2,
    )
    assert engine.wait(created["id"])["status"] == "completed"

    for item in engine.items(created["id"]):
        assert item["status"] == "failed"
        wait_until_no_sandbox(engine, item["id"])
        sandbox = engine.item(created["id"], item["id"])["metadata_json"]["sandbox"]
        assert "kept" not in sandbox and sandbox["isolation"]["level"] == "strict"
    # The worker made the sandboxes under sandbox_root and left nothing there (but the empty
    # folder of item networks, the views' shared /etc of a non-root worker, and the sandboxes
    # its warm pool holds for the next items).
    assert engine.sandbox_root.is_dir()
    assert leftover_sandboxes(engine.sandbox_root) == []


# ---- retry-failed ----


def test_retry_failed_runs_the_failed_items_again(service: Start) -> None:
    engine = service()
    created = engine.create(
        name="again", capability="nop", task_names=["decode-payload", "find-the-flag"]
    )
    assert engine.wait(created["id"])["item_counts"]["failed"] == 2

    reopened = engine.retry_failed(created["id"])

    assert reopened["status"] in {"queued", "running"}
    assert reopened["item_counts"]["failed"] == 0
    done = engine.wait(created["id"])
    assert done["status"] == "completed"
    assert done["item_counts"]["failed"] == 2
    assert engine.analytics(created["id"])["pass_rate"] == 0.0
    for item in engine.items(created["id"]):
        assert item["status"] == "failed"
        types = item_event_types(engine, created["id"], item["id"])
        assert types == [*HAPPY_PATH, "item.requeued", *HAPPY_PATH[1:]]
        # The requeue is an explicit request, not an automatic retry.
        assert item["retry_count"] == 0


# ---- scheduling ----


def test_items_in_flight_never_exceed_the_evaluation_concurrency(
    service: Start, bundles: Path
) -> None:
    write_bundle(bundles, "short-nap", solution="sleep 0.3\necho 'FLAG{ok}'")
    engine = service(workers=4)
    created = engine.create(
        name="capped", capability="oracle", task_names=["short-nap"] * 8, concurrency=2
    )
    assert (created["requested_concurrency"], created["effective_concurrency"]) == (2, 2)

    done = engine.wait(created["id"], timeout=60)

    assert done["status"] == "completed"
    assert done["item_counts"]["passed"] == 8
    # The cap was reached (two at a time) and never passed.
    assert max_in_flight(engine.events(created["id"])) == 2

    # More than the workers have: granted what the live workers' slots allow.
    wide = engine.create(name="wide", capability="nop", task_names=["short-nap"], concurrency=10)
    assert (wide["requested_concurrency"], wide["effective_concurrency"]) == (10, 4)
    assert engine.evaluation(wide["id"])["effective_concurrency"] == 4
    engine.wait(wide["id"])


def test_a_small_evaluation_is_not_starved_by_a_big_one_created_before_it(
    service: Start, bundles: Path
) -> None:
    write_bundle(bundles, "takes-a-while", solution="sleep 0.6\necho 'FLAG{ok}'")
    engine = service(workers=2)
    big = engine.create(
        name="big", capability="oracle", task_names=["takes-a-while"] * 8, concurrency=4
    )
    # The big one has taken both slots before the small one exists.
    deadline = time.monotonic() + 15
    while engine.evaluation(big["id"])["item_counts"]["agent_running"] < 2:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    small = engine.create(
        name="small", capability="oracle", task_names=["takes-a-while"] * 2, concurrency=4
    )

    small_done = engine.wait(small["id"], timeout=60)
    big_done = engine.wait(big["id"], timeout=60)

    assert small_done["status"] == big_done["status"] == "completed"
    assert epoch(small_done["completed_at"]) < epoch(big_done["completed_at"])
    # Not merely last-in-line luck: most of the big one was still to run.
    big_items = engine.items(big["id"])
    after_small = [
        i for i in big_items if epoch(i["started_at"]) > epoch(small_done["completed_at"])
    ]
    assert len(after_small) >= 2, [(i["started_at"], i["completed_at"]) for i in big_items]
    # And the worker never ran more than its two slots across both.
    assert max_in_flight(engine.events(big["id"]) + engine.events(small["id"])) == 2


# ---- the openai agent ----


def test_openai_agent_solves_a_task_against_a_scripted_endpoint(
    service: Start, bundles: Path
) -> None:
    secret_value = "sk-test-0123456789abcdef"
    model = "gpt-scripted-mini"
    flag = SHIPPED_FLAGS["decode-payload"]
    # A task graded on the agent's submission (Assay's own format): `submit` is the answer.
    folder = write_bundle(
        bundles,
        "submit-the-payload",
        instruction="./payload.txt hides a flag. Submit it.",
        flag=flag,
    )
    (folder / "payload.txt").write_text(
        (SHIPPED_TASKS_DIR / "decode-payload" / "workspace" / "payload.txt").read_text()
    )
    with ScriptedOpenAI() as server:
        server.push(
            completion(
                "Let me look at the payload.",
                tool_calls=[
                    tool_call(
                        "shell", {"command": "head -c 20 payload.txt; echo; echo $OPENAI_KEY"}
                    )
                ],
            ),
            completion(tool_calls=[tool_call("submit", {"answer": flag})]),
        )
        engine = service(openai_base_url=None)

        async def provision(store: Any) -> tuple[str, str]:
            runtime = await store.create_runtime(
                engine.workspace_id, "scripted", base_url=server.base_url
            )
            secret = await store.create_secret(
                engine.api.user_id, "openai-key", "openai", secret_value
            )
            return runtime.id, secret.id

        runtime_id, secret_id = run_identity(engine.settings, provision)
        created = engine.create(
            name="openai",
            model=model,
            task_names=["submit-the-payload"],
            runtime_id=runtime_id,
            secret_ids=[secret_id],
        )
        done = engine.wait(created["id"], timeout=60)
        requests = server.requests
        exhausted = server.exhausted

    assert done["status"] == "completed", done
    [item] = engine.items(created["id"])
    assert item["status"] == "passed", item
    assert item["result_json"]["submitted"] == flag
    result = item["metadata_json"]["_dreadnode"]["agent_result"]
    assert result["agent"] == "openai"
    assert result["stop_reason"] == "submitted"
    assert (result["generation_steps"], result["total_tool_calls"]) == (2, 2)
    assert (result["input_tokens"], result["output_tokens"], result["total_tokens"]) == (
        200,
        40,
        240,
    )

    # The endpoint saw the secret as the bearer key and the evaluation's model, and nothing more.
    assert not exhausted
    assert len(requests) == 2
    for request in requests:
        assert request.path == "/v1/chat/completions"
        assert request.headers["authorization"] == f"Bearer {secret_value}"
        assert request.body["model"] == model
    # The secret reached the sandbox's environment, but the tool output sent back was redacted.
    tool_reply = requests[1].body["messages"][-1]
    assert tool_reply["role"] == "tool"
    assert "[REDACTED]" in tool_reply["content"]
    assert secret_value not in json.dumps(requests[1].body)

    transcript = engine.transcript(created["id"], item["id"])
    assert transcript.status_code == 200
    body = transcript.json()
    assert body["session"]["agent"] == "openai"
    assert body["session"]["model"] == model
    messages = body["messages"]
    assert [m["seq"] for m in messages] == list(range(1, len(messages) + 1))
    assert [m["role"] for m in messages] == [
        "system",
        "user",
        "assistant",
        "tool",
        "assistant",
        "tool",
    ]
    assert "payload.txt" in messages[1]["content"]
    assert "[REDACTED]" in messages[3]["content"]
    assert secret_value not in transcript.text
    # Nor anywhere in the item, the evaluation or its history.
    assert secret_value not in json.dumps(item)
    assert secret_value not in json.dumps(engine.events(created["id"]))


def test_a_model_without_an_endpoint_is_refused_naming_what_is_missing(service: Start) -> None:
    engine = service(openai_base_url=None)

    response = engine.api.create(name="nowhere", model="gpt-x", task_names=["decode-payload"])

    assert response.status_code == 422, response.text
    body = response.json()
    assert body["type"] == "validation_error"
    assert "ASSAY_OPENAI_BASE_URL" in body["detail"]
    assert "runtime_id" in body["detail"]
    assert [e["loc"] for e in body["errors"]] == [["body", "runtime_id"]]
    listed = engine.api.get("/evaluations").json()
    assert listed["total"] == 0
