"""The first hour with the real `dn` client (dreadnode==2.0.52) against a live `assay serve`
that runs a worker: a model the endpoint does not know is an error, not a failure.

See tests/app/test_dn_client.py for how the client is installed and driven.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.app.dn_client import Dn, LiveServer, assay_command, dn_or_skip
from tests.app.execution_fixtures import SHIPPED_FLAGS
from tests.infrastructure.scripted_openai import ScriptedOpenAI, completion, error, tool_call

MODEL = "openai/gpt-4o-mini"  # what the client suggests; the endpoint must see gpt-4o-mini
FLAG = SHIPPED_FLAGS["decode-payload"]


@pytest.fixture(scope="module")
def dn_executable() -> Path:
    return dn_or_skip()


@pytest.fixture(scope="module")
def endpoint() -> Iterator[ScriptedOpenAI]:
    with ScriptedOpenAI() as server:
        yield server


@pytest.fixture(scope="module")
def server(
    dn_executable: Path, endpoint: ScriptedOpenAI, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveServer]:
    workdir = tmp_path_factory.mktemp("dn-worker-server")
    live = LiveServer(
        workdir,
        env={
            "ASSAY_WORKERS": "1",
            "ASSAY_OPENAI_BASE_URL": endpoint.base_url,
            "ASSAY_SANDBOX_ROOT": str(workdir / "sandboxes"),
            "ASSAY_POLL_SECONDS": "0.1",
            "ASSAY_DEFAULT_MAX_RETRIES": "2",
        },
    )
    live.prepare()
    live.start()
    try:
        yield live
    finally:
        live.stop()


@pytest.fixture(scope="module")
def dn(dn_executable: Path, server: LiveServer, tmp_path_factory: pytest.TempPathFactory) -> Dn:
    return Dn(dn_executable, server, tmp_path_factory.mktemp("dn-home"))


def test_an_unknown_model_ends_errored_the_wait_fails_and_list_samples_says_why(
    dn: Dn, server: LiveServer, endpoint: ScriptedOpenAI
) -> None:
    endpoint.push(error(404, "The model `gpt-4o-mini` does not exist or you do not have access"))

    waited = dn(
        "evaluation",
        "create",
        "unknown-model",
        "--task",
        "decode-payload",
        "--model",
        MODEL,
        "--wait",
        "--poll-interval-sec",
        "0.5",
        "--timeout-sec",
        "90",
        timeout=150,
    )

    assert waited.returncode != 0, waited.describe()
    assert "partial" in waited.output, waited.describe()
    # The endpoint was asked once (a 404 is not retried), for the model without its prefix.
    [request] = endpoint.requests
    assert request.body["model"] == "gpt-4o-mini"

    status, listed = server.api("GET", "/evaluations")
    assert status == 200
    [evaluation] = [e for e in listed["items"] if e["name"] == "unknown-model"]
    assert evaluation["status"] == "partial"
    samples = dn("evaluation", "list-samples", evaluation["id"])
    assert samples.returncode == 0, samples.describe()
    row = next(ln for ln in samples.stdout.splitlines() if "decode-payload" in ln)
    assert "errored" in row
    assert "HTTP 404" in row
    as_json = dn("evaluation", "list-samples", evaluation["id"], "--json").json()
    assert [s["status"] for s in as_json] == ["errored"]
    status, analytics = server.api("GET", f"/evaluation/{evaluation['id']}/analytics")
    assert analytics["error_count"] == 1
    assert analytics["failed_count"] == 0


def test_the_readme_recipe_for_a_real_model_passes_with_the_users_secret_as_the_key(
    dn: Dn, server: LiveServer, endpoint: ScriptedOpenAI
) -> None:
    key = "sk-proj-recipe-0123456789abcdef"
    added = subprocess.run(
        [
            *assay_command(),
            *("admin", "add-secret", "--email", "demo@example.com"),
            *("--name", "OPENAI_API_KEY", "--provider", "openai", "--value-stdin"),
            *("--database-url", server.database_url),
        ],
        input=key + "\n",
        capture_output=True,
        text=True,
        timeout=60,
        env={k: v for k, v in os.environ.items() if not k.startswith("ASSAY_")},
    )
    assert added.returncode == 0, added.stderr
    endpoint.push(completion(tool_calls=[tool_call("submit", {"answer": FLAG})]))

    waited = dn(
        *("evaluation", "create", "real-model", "--task", "decode-payload"),
        *("--model", MODEL, "--secret", "OPENAI_API_KEY", "--wait"),
        *("--poll-interval-sec", "0.5", "--timeout-sec", "90"),
        timeout=150,
    )

    assert waited.returncode == 0, waited.describe()
    request = endpoint.requests[-1]
    assert request.body["model"] == "gpt-4o-mini"
    assert request.headers["authorization"] == f"Bearer {key}"
    assert key not in waited.output
