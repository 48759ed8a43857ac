"""Live transcripts: what the agent said and did is readable while it runs, from the
transcripts table (side data), with no event added to the log for it; the final write after
the agent returns leaves exactly one row per message."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.app.execution_fixtures import SHIPPED_FLAGS, Engine, running_service
from tests.infrastructure.scripted_openai import Reply, ScriptedOpenAI, completion, tool_call


@pytest.fixture
def endpoint() -> Iterator[ScriptedOpenAI]:
    with ScriptedOpenAI() as server:
        yield server


@pytest.fixture
def engine(database_url: str, tmp_path: Path, endpoint: ScriptedOpenAI) -> Iterator[Engine]:
    with running_service(database_url, tmp_path, openai_base_url=endpoint.base_url) as started:
        yield started


def test_the_transcript_shows_the_first_messages_while_the_model_is_still_thinking(
    engine: Engine, endpoint: ScriptedOpenAI
) -> None:
    thinking = threading.Event()
    flag = SHIPPED_FLAGS["decode-payload"]
    submit = completion(tool_calls=[tool_call("submit", {"answer": flag})])
    endpoint.push(
        completion("Looking first.", tool_calls=[tool_call("shell", {"command": "echo seen"})]),
        Reply(status=submit.status, body=submit.body, gate=thinking),
    )
    try:
        created = engine.create(name="live", model="m", task_names=["decode-payload"])
        item_id = engine.items(created["id"])[0]["id"]
        messages = wait_for_messages(engine, created["id"], item_id, count=4)
        item = engine.item(created["id"], item_id)
        events_meanwhile = engine.item_events(created["id"], item_id)
    finally:
        thinking.set()

    # The model has not answered its second call: the agent is mid-run.
    assert item["status"] == "agent_running", item
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "tool"]
    assert "seen" in messages[3]["content"]
    # No event was appended for the messages: the item's history is its state changes only.
    assert [e["type"] for e in events_meanwhile] == [
        "item.queued",
        "item.claimed",
        "item.provisioning",
        "item.agent_started",
    ]

    done = engine.wait(created["id"], timeout=60)
    assert done["status"] == "completed", done
    final = engine.transcript(created["id"], item_id).json()["messages"]
    assert [m["seq"] for m in final] == [1, 2, 3, 4, 5, 6]
    assert final[:4] == messages
    assert [m["role"] for m in final[4:]] == ["assistant", "tool"]


def wait_for_messages(
    engine: Engine, evaluation_id: str, item_id: str, *, count: int, timeout: float = 30.0
) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    seen: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        response = engine.transcript(evaluation_id, item_id)
        if response.status_code == 200:
            seen = response.json()["messages"]
            if len(seen) >= count:
                return seen
        time.sleep(0.1)
    raise AssertionError(f"only {len(seen)} transcript messages after {timeout}s: {seen}")


def test_a_timed_out_agent_keeps_the_transcript_it_had(
    database_url: str, tmp_path: Path, endpoint: ScriptedOpenAI
) -> None:
    never = threading.Event()
    endpoint.push(
        completion("Step one.", tool_calls=[tool_call("shell", {"command": "echo one"})]),
        Reply(status=200, body={}, gate=never),
    )
    with contextlib.ExitStack() as stack:
        engine = stack.enter_context(
            running_service(database_url, tmp_path, openai_base_url=endpoint.base_url)
        )
        stack.callback(never.set)
        created = engine.create(
            name="slow", model="m", task_names=["decode-payload"], task_timeout_sec=3
        )
        done = engine.wait(created["id"], timeout=60)
        [item] = engine.items(created["id"])
        messages = engine.transcript(created["id"], item["id"]).json()["messages"]

    assert item["status"] == "timed_out", item
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "tool"]
    assert done["status"] == "partial"
