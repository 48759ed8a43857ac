"""Errors are not failures: an item whose agent could not run (the model endpoint refused the
request, the agent crashed, the oracle had no reference solution, the worker lacks the task)
ends `errored` with the reason, counts in `error_count`, and leaves the evaluation `partial`;
one that may pass on a later try (429, 5xx, connection refused) ends `infra_error`.
Through HTTP, with an in-process worker, on both backends.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.app.conftest import run_identity
from tests.app.execution_fixtures import Engine, Start, running_service, write_bundle
from tests.infrastructure.scripted_openai import ScriptedOpenAI, error


def run_openai(engine: Engine, base_url: str, **body: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    async def provision(store: Any) -> str:
        runtime = await store.create_runtime(engine.workspace_id, "scripted", base_url=base_url)
        return str(runtime.id)

    runtime_id = run_identity(engine.settings, provision)
    created = engine.create(
        name="refused",
        model="no-such-model",
        task_names=["decode-payload"],
        runtime_id=runtime_id,
        **body,
    )
    done = engine.wait(created["id"], timeout=60)
    [item] = engine.items(created["id"])
    return done, item


def test_a_model_endpoint_404_ends_the_item_errored_and_the_evaluation_partial(
    service: Start,
) -> None:
    with ScriptedOpenAI() as server:
        server.push(error(404, "The model `no-such-model` does not exist"))
        engine = service(openai_base_url=None, default_max_retries=2)
        done, item = run_openai(engine, server.base_url)
        requests = server.requests

    assert len(requests) == 1  # a 4xx is not retried: the same request gets the same answer
    assert done["status"] == "partial", done
    assert item["status"] == "errored", item
    assert "HTTP 404" in item["error"]
    assert "no-such-model" in item["error"]
    assert item["retry_count"] == 0
    analytics = engine.analytics(done["id"])
    assert analytics["error_count"] == 1
    assert analytics["failed_count"] == 0
    summary = analytics["analytics_snapshot"]["error_summary"]
    assert [e["count"] for e in summary] == [1]
    assert "HTTP 404" in summary[0]["error"]
    # The refusal is in the transcript too, where the user reads what the agent did.
    transcript = engine.transcript(done["id"], item["id"]).json()
    assert transcript["messages"][-1]["content"] == item["error"]


@pytest.mark.parametrize("status", [401, 403, 400, 422])
def test_every_refusing_4xx_ends_errored(service: Start, status: int) -> None:
    with ScriptedOpenAI() as server:
        server.push(error(status, "refused"))
        engine = service(openai_base_url=None)
        done, item = run_openai(engine, server.base_url)

    assert (done["status"], item["status"]) == ("partial", "errored")
    assert f"HTTP {status}" in item["error"]


def test_a_429_ends_infra_error_after_its_retries(service: Start) -> None:
    with ScriptedOpenAI() as server:
        server.push(*[error(429, "slow down")] * 10)
        engine = service(openai_base_url=None, default_max_retries=1)
        done, item = run_openai(engine, server.base_url)

    assert (done["status"], item["status"]) == ("partial", "infra_error")
    assert "HTTP 429" in item["error"]
    assert item["retry_count"] == 1


def test_an_unreachable_endpoint_ends_infra_error(service: Start) -> None:
    engine = service(openai_base_url=None, default_max_retries=0)
    done, item = run_openai(engine, "http://127.0.0.1:9/v1")

    assert (done["status"], item["status"]) == ("partial", "infra_error")
    assert "model endpoint failed" in item["error"]


def test_the_oracle_on_a_task_without_a_solution_ends_errored(
    service: Start, bundles: Path
) -> None:
    write_bundle(bundles, "unsolved", solution=None)
    engine = service()

    created = engine.create(name="oracle", capability="oracle", task_names=["unsolved"])
    done = engine.wait(created["id"])
    [item] = engine.items(created["id"])

    assert (done["status"], item["status"]) == ("partial", "errored"), item
    assert item["error"] == "task has no reference solution"
    assert engine.analytics(created["id"])["error_count"] == 1


def test_a_worker_without_the_apis_task_folders_runs_the_bundle_the_item_recorded(
    database_url: str, tmp_path: Path, bundles: Path
) -> None:
    """The item recorded its bundle's digest at create; a worker started with other task
    folders fetches and runs exactly those bytes instead of failing or diverging."""
    write_bundle(bundles, "only-on-the-api", solution="echo FLAG{ok}")
    # The API knows the task (its folders include the bundle); no worker runs yet.
    with running_service(database_url, tmp_path, task_paths=(str(bundles),), workers=0) as api:
        created = api.create(name="elsewhere", capability="oracle", task_names=["only-on-the-api"])
        [queued] = api.items(created["id"])
    digest = queued["metadata_json"]["bundle_digest"]
    assert digest.startswith("sha256:")
    # A worker started without that folder claims the item.
    with running_service(database_url, tmp_path, default_max_retries=2) as worker:
        done = worker.wait(created["id"])
        [item] = worker.items(created["id"])

    assert (done["status"], item["status"]) == ("completed", "passed"), item
    assert item["metadata_json"]["bundle_digest"] == digest
    assert item["retry_count"] == 0


def test_a_crashing_agent_ends_errored_with_its_exception(
    service: Start, monkeypatch: pytest.MonkeyPatch
) -> None:
    from infrastructure.agents.oracle import OracleAgent

    async def crash(self: OracleAgent, sandbox: Any, context: Any) -> Any:
        raise KeyError("choices")

    monkeypatch.setattr(OracleAgent, "run", crash)
    engine = service(default_max_retries=2)

    created = engine.create(name="crash", capability="oracle", task_names=["decode-payload"])
    done = engine.wait(created["id"])
    [item] = engine.items(created["id"])

    assert (done["status"], item["status"]) == ("partial", "errored"), item
    assert item["error"] == "agent oracle crashed: KeyError: 'choices'"
    assert item["retry_count"] == 0
