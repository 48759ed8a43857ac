"""Live streams through a real HTTP client against `assay serve` in a subprocess, on both
backends. Events are appended by another process than the server's (this test process, as a
worker would) while the client reads, disconnects every few messages and resumes, by
`Last-Event-ID` and by `?after=`: the union of what it read is the history, exactly once."""

from __future__ import annotations

import itertools
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.app.dn_client import LiveServer, assay_command
from tests.app.live_helpers import Message, SimulatedWorker, live_server, messages

# A guard against a hang, never an assertion on speed: the streams end in a few seconds.
READ_TIMEOUT = 90.0
TERMINAL = {"completed", "partial", "failed", "cancelled"}


@pytest.fixture
def server(database_url: str, tmp_path: Path) -> Any:
    with live_server(database_url, tmp_path / "server", ASSAY_SSE_HEARTBEAT_SECONDS="0.3") as s:
        yield s


def headers(server: LiveServer, **extra: str) -> dict[str, str]:
    assert server.tenant is not None
    return {"X-API-Key": server.tenant.api_key, **extra}


def create(server: LiveServer, tasks: int) -> dict[str, Any]:
    status, body = server.api(
        "POST",
        "/evaluation",
        {"name": "live", "agent_type": "oracle", "task_names": ["find-the-flag"] * tasks},
    )
    assert status == 201, body
    items_status, items = server.api("GET", f"/evaluation/{body['id']}/items")
    assert items_status == 200
    body["item_ids"] = [i["id"] for i in items["items"]]
    return body


def history_positions(server: LiveServer, evaluation_id: str) -> list[int]:
    status, body = server.api("GET", f"/evaluation/{evaluation_id}/events")
    assert status == 200 and body["next_after"] is None
    return [e["position"] for e in body["events"]]


def read_with_resumes(
    server: LiveServer, url: str, *, every: int, stop: Any = None
) -> tuple[list[Message], int]:
    """Read `url`, hanging up after `every` messages and resuming from the last id (header
    and query in turn), until the server ends the stream or `stop(messages)` says so.
    Returns every message read and how many connections it took."""
    read: list[Message] = []
    last_id: str | None = None
    connections = 0
    deadline = time.monotonic() + READ_TIMEOUT
    with httpx.Client(timeout=httpx.Timeout(30.0)) as client:
        while True:
            extra: dict[str, str] = {}
            params: dict[str, str] = {}
            if last_id is not None:
                if connections % 2:
                    extra["Last-Event-ID"] = last_id
                else:
                    params["after"] = last_id
            connections += 1
            with client.stream("GET", url, headers=headers(server, **extra), params=params) as r:
                assert r.status_code == 200, r.read()
                assert r.headers["content-type"].startswith("text/event-stream")
                count = 0
                ended = True
                for message in messages(r):
                    if time.monotonic() > deadline:
                        raise AssertionError(
                            f"the stream did not end; read {len(read)} messages:\n"
                            + "\n".join(f"{m.id} {m.event}" for m in read[-20:])
                            + "\n"
                            + server.log_tail()
                        )
                    if message.comment is not None:
                        continue
                    read.append(message)
                    last_id = message.id
                    count += 1
                    if stop is not None and stop(read):
                        return read, connections
                    if count >= every:
                        ended = False
                        break  # hang up mid-stream
            if ended:
                return read, connections


def test_evaluation_stream_resumed_under_load_loses_and_repeats_nothing(
    server: LiveServer,
) -> None:
    evaluation = create(server, tasks=6)
    worker = SimulatedWorker(server.database_url, evaluation["id"], evaluation["item_ids"]).start()
    base = f"{server.url}/api/v1/org/{server.org}/ws/{server.workspace}"
    url = f"{base}/evaluation/{evaluation['id']}/stream"
    read, connections = read_with_resumes(server, url, every=7)
    worker.join()

    events = [m for m in read if m.event != "evaluation"]
    positions = [int(m.id or 0) for m in events]
    assert positions == history_positions(server, evaluation["id"])
    assert connections > 5
    # Each event is followed by the evaluation as it then was, under the same id.
    for before, after in itertools.pairwise(read):
        if before.event != "evaluation" and after.event == "evaluation":
            assert after.id == before.id
    # The data is the history's shape; the stream ended because the evaluation is terminal.
    first = events[0].json()
    assert (first["type"], events[0].event) == ("evaluation.created", "evaluation.created")
    last_evaluation = [m for m in read if m.event == "evaluation"][-1].json()
    assert last_evaluation["id"] == evaluation["id"]
    assert last_evaluation["status"] in TERMINAL
    assert last_evaluation["item_counts"]["passed"] == 3


def test_feed_stream_resumed_under_load_matches_the_feed(server: LiveServer) -> None:
    evaluation = create(server, tasks=4)
    worker = SimulatedWorker(server.database_url, evaluation["id"], evaluation["item_ids"]).start()
    url = f"{server.url}/api/v1/org/{server.org}/events/stream"
    expected = 1 + 4 + 4 * 9  # created, queued, then nine events per item

    read, _ = read_with_resumes(server, url, every=5, stop=lambda r: len(r) >= expected)
    worker.join()
    with httpx.Client() as client:
        feed = client.get(
            f"{server.url}/api/v1/org/{server.org}/events", headers=headers(server)
        ).json()
    assert [int(m.id or 0) for m in read] == [e["position"] for e in feed["events"]]
    assert [m.event for m in read] == [e["type"] for e in feed["events"]]


def test_idle_stream_sends_keep_alives_and_bad_last_event_id_is_refused(
    server: LiveServer,
) -> None:
    url = f"{server.url}/api/v1/org/{server.org}/events/stream"
    with httpx.Client(timeout=30) as client:
        with client.stream("GET", url, headers=headers(server)) as r:
            comments = []
            for message in messages(r):
                comments.append(message.comment)
                if len(comments) == 2:
                    break
        assert comments == ["keep-alive", "keep-alive"]
        refused = client.get(url, headers=headers(server, **{"Last-Event-ID": "soon"}))
        assert refused.status_code == 422
        assert "Last-Event-ID" in refused.json()["detail"]


def test_a_consumer_too_far_behind_is_dropped_and_resumes_without_loss(
    database_url: str, tmp_path: Path
) -> None:
    with live_server(database_url, tmp_path / "s", ASSAY_SSE_QUEUE_LIMIT="5") as server:
        evaluation = create(server, tasks=1)
        url = f"{server.url}/api/v1/org/{server.org}/events/stream"
        with httpx.Client(timeout=30) as client:
            with client.stream("GET", url, headers=headers(server)) as r:
                stream = messages(r)
                # Caught up (created + queued), then a burst larger than its queue arrives.
                seen = [next(stream), next(stream)]
                big = create(server, tasks=40)
                rest = list(stream)
            assert rest[-1].comment is not None and "dropped" in rest[-1].comment
            resumed_from = [m for m in seen + rest if m.id is not None][-1].id
            assert resumed_from is not None
            final = history_positions(server, big["id"])[-1]
            more: list[Message] = []
            if int(resumed_from) < final:
                resumed = headers(server, **{"Last-Event-ID": resumed_from})
                with client.stream("GET", url, headers=resumed) as again:
                    for message in messages(again):
                        if message.comment is None:
                            more.append(message)
                        if more and int(more[-1].id or 0) >= final:
                            break
        ids = [int(m.id or 0) for m in seen + rest + more if m.id is not None]
        positions = history_positions(server, evaluation["id"]) + history_positions(
            server, big["id"]
        )
        assert ids == positions


def test_events_of_a_real_worker_process_reach_the_stream(
    database_url: str, tmp_path: Path
) -> None:
    """`assay worker` in its own process runs the items; the server (no worker of its own)
    streams every event the worker recorded, then ends the stream at the terminal status."""
    key_file = str(tmp_path / "key")
    with live_server(database_url, tmp_path / "server", ASSAY_SECRET_KEY_FILE=key_file) as server:
        evaluation = create(server, tasks=2)
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("ASSAY_")},
            "ASSAY_DATABASE_URL": server.database_url,
            "ASSAY_SECRET_KEY_FILE": key_file,
            "ASSAY_SANDBOX_ROOT": str(tmp_path / "sandboxes"),
            "ASSAY_SANDBOX_ISOLATION": "weak",
            "ASSAY_POLL_SECONDS": "0.1",
            "ASSAY_BUNDLE_CACHE": str(tmp_path / "bundles"),
            "ASSAY_LOG_LEVEL": "WARNING",
        }
        log = tmp_path / "worker.log"
        with log.open("wb") as out:
            worker = subprocess.Popen(
                [*assay_command(), "worker", "--slots", "2"],
                env=env,
                cwd=tmp_path,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        try:
            base = f"{server.url}/api/v1/org/{server.org}/ws/{server.workspace}"
            url = f"{base}/evaluation/{evaluation['id']}/stream"
            read, _ = read_with_resumes(server, url, every=1_000_000)
        finally:
            worker.terminate()
            worker.wait(timeout=30)
        events = [m for m in read if m.event != "evaluation"]
        assert [int(m.id or 0) for m in events] == history_positions(server, evaluation["id"])
        # Whatever the sandbox of this host made of the items, the worker process recorded
        # their claims and ends, and the stream ended with the evaluation terminal.
        claims = [m.json() for m in events if m.event == "item.claimed"]
        assert len(claims) >= 2, log.read_text()[-3000:]
        assert all(c["data"]["worker_id"] for c in claims)
        final = [m for m in read if m.event == "evaluation"][-1].json()
        assert final["status"] in TERMINAL, log.read_text()[-3000:]
        assert final["item_counts"]["queued"] == 0
