"""Logs an operator can follow: `assay serve` (with its in-process worker) run as a process,
its stderr read line by line. With ASSAY_LOG_JSON on, every line is one JSON object, the
libraries' lines included; the lines an operator watches for are there: where it listens, one
access line per request, and each item's claim, verdict, infrastructure error and retry, and
the worker's start and stop."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from tests.app.dn_client import LiveServer


def wait_for(server: LiveServer, evaluation_id: str, timeout: float = 90) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status, body = server.api("GET", f"/evaluation/{evaluation_id}")
        assert status == 200, body
        if body["status"] in ("completed", "partial", "failed", "cancelled"):
            return dict(body)
        time.sleep(0.2)
    raise AssertionError(f"evaluation {evaluation_id} still {body['status']}:\n{server.log_tail()}")


def test_every_line_is_json_and_the_operators_events_are_there(tmp_path: Path) -> None:
    server = LiveServer(
        tmp_path,
        env={
            "ASSAY_LOG_JSON": "1",
            "ASSAY_LOG_LEVEL": "INFO",
            "ASSAY_WORKERS": "1",
            "ASSAY_SANDBOX_ROOT": str(tmp_path / "sandboxes"),
            "ASSAY_POLL_SECONDS": "0.1",
            "ASSAY_RETRY_BACKOFF_SECONDS": "0.1",
            "ASSAY_DEFAULT_MAX_RETRIES": "1",
        },
    )
    server.prepare()
    server.start()
    try:
        status, passing = server.api(
            "POST",
            "/evaluation",
            {"name": "logged", "capability": "oracle", "task_names": ["decode-payload"]},
        )
        assert status == 201, passing
        # The server's openai endpoint (127.0.0.1:9) refuses connections: an infra error.
        status, refused = server.api(
            "POST",
            "/evaluation",
            {"name": "unreachable", "model": "m", "task_names": ["decode-payload"]},
        )
        assert status == 201, refused
        assert wait_for(server, passing["id"])["status"] == "completed"
        assert wait_for(server, refused["id"])["status"] == "partial"
    finally:
        server.stop()

    lines = [ln for ln in server.log_path.read_text().splitlines() if ln.strip()]
    records = []
    for line in lines:
        try:
            records.append(json.loads(line))
        except ValueError:
            raise AssertionError(f"not a JSON line: {line!r}") from None
    events = [r.get("event") for r in records]

    [listening] = [r for r in records if r.get("event") == "listening"]
    assert listening["port"] == server.port
    assert listening["host"] == "127.0.0.1"
    created = [
        r
        for r in records
        if r.get("event") == "request"
        and r["method"] == "POST"
        and r["path"].endswith("/evaluation")
    ]
    assert len(created) == 2
    for access in created:
        assert access["status"] == 201
        assert isinstance(access["duration_ms"], float)
        assert len(access["request_id"]) >= 16
    assert all(
        r["status"] == 200 for r in records if r.get("event") == "request" and r["method"] == "GET"
    )

    def of(event: str, evaluation: dict[str, Any]) -> list[dict[str, Any]]:
        return [
            r
            for r in records
            if r.get("event") == event and r.get("evaluation_id") == evaluation["id"]
        ]

    assert len(of("item_claimed", passing)) == 1
    [verdict] = of("item_verdict", passing)
    assert verdict["passed"] is True
    # Claimed twice (one retry), an infra error each time, the first one retried.
    assert len(of("item_claimed", refused)) == 2
    infra = of("item_infra_error", refused)
    assert [r["will_retry"] for r in infra] == [True, False]
    assert "model endpoint failed" in infra[0]["error"]
    [retry] = of("item_retry_scheduled", refused)
    assert (retry["retry"], retry["max_retries"]) == (1, 1)
    assert events.count("worker_started") == 1
    assert events.count("worker_stopped") == 1
    assert events.index("worker_started") < events.index("worker_stopped")
    # A library's own line (uvicorn's), in the same JSON shape.
    uvicorn = [r for r in records if str(r.get("logger", "")).startswith("uvicorn")]
    assert uvicorn, events
    assert all({"event", "level", "timestamp"} <= set(r) for r in uvicorn)
    # No SQL statements (they carry bound parameters: key hashes), no second access line.
    assert not [r for r in records if str(r.get("logger", "")).startswith("sqlalchemy")]
    assert not [r for r in records if r.get("logger") == "uvicorn.access"]
