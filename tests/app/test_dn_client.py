"""The published `dn` client (dreadnode==2.0.52) against a live `assay serve`.

The client is installed into its own cached virtualenv (tests/app/dn_client.py); when pip
cannot reach the package index the module skips with the reason, except under CI=true where
it fails. One server (a subprocess on a free loopback port, fresh migrated SQLite file,
bootstrapped tenant) serves the whole module; every test makes its own evaluations. The server
runs no worker (ASSAY_WORKERS=0), so evaluations stay queued until a test cancels them.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import pytest

from tests.app import dn_client
from tests.app.dn_client import (
    Dn,
    DnResult,
    LiveServer,
    dn_or_skip,
)
from tests.app.execution_fixtures import leftover_sandboxes

MODEL = "openai/gpt-4o-mini"


@pytest.fixture(scope="session")
def dn_executable() -> Path:
    return dn_or_skip()


@pytest.fixture(scope="module")
def server(dn_executable: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    live = LiveServer(tmp_path_factory.mktemp("dn-server"))
    live.prepare()
    live.start()
    try:
        yield live
    finally:
        live.stop()


@pytest.fixture(scope="module")
def dn(dn_executable: Path, server: LiveServer, tmp_path_factory: pytest.TempPathFactory) -> Dn:
    return Dn(dn_executable, server, tmp_path_factory.mktemp("dn-home"))


def ok(result: DnResult) -> DnResult:
    assert result.returncode == 0, result.describe()
    return result


def create(dn: Dn, name: str, *tasks: str, model: str | None = MODEL) -> dict[str, Any]:
    args = ["evaluation", "create", name]
    for task in tasks or ("find-the-flag", "decode-payload"):
        args += ["--task", task]
    if model is not None:
        args += ["--model", model]
    body: dict[str, Any] = ok(dn(*args, "--json")).json()
    return body


def test_create_with_model_and_two_tasks(dn: Dn, server: LiveServer) -> None:
    body = create(dn, "dn-create-model", "find-the-flag", "decode-payload")

    assert body["name"] == "dn-create-model"
    assert body["model"] == MODEL
    assert body["capability"] is None
    assert body["job_status"] == body["status"] == "queued"
    assert body["dataset_size"] == 2
    assert body["item_counts"]["queued"] == 2
    assert len(body["item_counts"]) == 12
    assert body["created_by"] == server.tenant.user_id  # type: ignore[union-attr]

    status, stored = server.api("GET", f"/evaluation/{body['id']}")
    assert status == 200
    assert (stored["id"], stored["model"], stored["job_status"]) == (body["id"], MODEL, "queued")
    status, items = server.api("GET", f"/evaluation/{body['id']}/items")
    assert status == 200
    assert [i["task_name_snapshot"] for i in items["items"]] == ["find-the-flag", "decode-payload"]
    assert all(i["model"] == MODEL for i in items["items"])


def test_create_with_capability_prints_a_summary(dn: Dn, server: LiveServer) -> None:
    result = ok(
        dn(
            "evaluation",
            "create",
            "dn-create-oracle",
            "--task",
            "find-the-flag",
            "--capability",
            "oracle",
        )
    )

    assert "dn-create-oracle" in result.stdout
    assert "queued" in result.stdout
    hint = re.search(r"dn evaluation get ([0-9a-f]{8})\b", result.stdout)
    assert hint, result.describe()
    status, stored = server.api("GET", f"/evaluation/{hint[1]}")
    assert status == 200, stored
    assert stored["name"] == "dn-create-oracle"
    assert stored["capability"] == "oracle"
    assert stored["model"] is None
    assert stored["dataset_size"] == 1


def test_list_shows_the_evaluation(dn: Dn) -> None:
    body = create(dn, "dn-list-me")

    table = ok(dn("evaluation", "list"))
    line = next((ln for ln in table.stdout.splitlines() if body["id"][:8] in ln), None)
    assert line is not None, table.describe()
    assert "dn-list-me" in line
    assert "queued" in line
    assert MODEL in line

    rows = ok(dn("evaluation", "list", "--json")).json()
    found = [r for r in rows if r["id"] == body["id"]]
    assert len(found) == 1
    assert found[0]["job_status"] == "queued"
    assert found[0]["item_counts"]["queued"] == 2
    # Newest first: what we just made leads the list.
    assert rows[0]["id"] == body["id"]

    queued_only = ok(dn("evaluation", "list", "--status", "queued", "--json")).json()
    assert body["id"] in {r["id"] for r in queued_only}
    assert all(r["job_status"] == "queued" for r in queued_only)


def test_get_by_eight_character_prefix(dn: Dn) -> None:
    body = create(dn, "dn-get-me")
    prefix = body["id"][:8]

    detail = ok(dn("evaluation", "get", prefix))
    assert "dn-get-me" in detail.stdout
    assert body["id"] in detail.stdout
    assert MODEL in detail.stdout
    assert "queued=2" in detail.stdout

    fetched = ok(dn("evaluation", "get", prefix, "--json")).json()
    assert fetched["id"] == body["id"]
    assert fetched["job_status"] == "queued"
    assert fetched["item_counts"] == body["item_counts"]


def test_cancel_by_prefix(dn: Dn, server: LiveServer) -> None:
    body = create(dn, "dn-cancel-me")
    prefix = body["id"][:8]

    cancelled = ok(dn("evaluation", "cancel", prefix, "--yes", "--json")).json()
    assert cancelled["id"] == body["id"]
    assert cancelled["job_status"] == "cancelled"
    assert cancelled["item_counts"]["cancelled"] == 2

    status, stored = server.api("GET", f"/evaluation/{body['id']}")
    assert status == 200
    assert stored["job_status"] == stored["status"] == "cancelled"
    assert stored["completed_at"] is not None
    assert stored["item_counts"]["cancelled"] == 2
    assert stored["item_counts"]["queued"] == 0

    # The one-line summary form says so too.
    other = create(dn, "dn-cancel-me-too")
    summary = ok(dn("evaluation", "cancel", other["id"][:8], "--yes"))
    assert "cancelled" in summary.stdout
    assert "dn-cancel-me-too" in summary.stdout

    again = dn("evaluation", "cancel", prefix, "--yes")
    assert again.returncode != 0, again.describe()
    assert "already cancelled" in again.output


def test_get_of_a_finished_evaluation_includes_analytics(dn: Dn) -> None:
    body = create(dn, "dn-analytics")
    ok(dn("evaluation", "cancel", body["id"], "--yes"))

    fetched = ok(dn("evaluation", "get", body["id"][:8], "--json")).json()
    # For a terminal evaluation the client replaces `analytics` with GET .../analytics.
    analytics = fetched["analytics"]
    assert analytics["total_samples"] == 2
    assert analytics["passed_count"] == 0
    assert analytics["pass_rate"] is None
    assert {row["task_name"] for row in analytics["analytics_snapshot"]["task_breakdown"]} == {
        "find-the-flag",
        "decode-payload",
    }
    detail = ok(dn("evaluation", "get", body["id"][:8]))
    assert "cancelled" in detail.stdout


def test_retry_requeues_cancelled_items(dn: Dn) -> None:
    body = create(dn, "dn-retry-me")
    ok(dn("evaluation", "cancel", body["id"][:8], "--yes"))

    retried = ok(dn("evaluation", "retry", body["id"][:8], "--json")).json()
    assert retried["id"] == body["id"]
    assert retried["job_status"] == "queued"
    assert retried["item_counts"]["queued"] == 2


def test_samples_list_and_get(dn: Dn) -> None:
    body = create(dn, "dn-samples")
    prefix = body["id"][:8]

    rows = ok(dn("evaluation", "list-samples", prefix, "--json")).json()
    assert [(r["position"], r["task_name_snapshot"], r["item_status"]) for r in rows] == [
        (1, "find-the-flag", "queued"),
        (2, "decode-payload", "queued"),
    ]
    table = ok(dn("evaluation", "list-samples", prefix))
    assert "2 samples" in table.stdout

    sample = ok(dn("evaluation", "get-sample", f"{prefix}/{rows[1]['id'][:8]}", "--json")).json()
    assert sample["id"] == rows[1]["id"]
    assert sample["evaluation_id"] == body["id"]
    assert sample["task_name_snapshot"] == "decode-payload"


def test_export_and_compare(dn: Dn, tmp_path: Path) -> None:
    first = create(dn, "dn-export-a")
    second = create(dn, "dn-export-b", "crack-weak-hash")

    exported = ok(dn("evaluation", "export", first["id"][:8], "--json")).json()
    assert exported["job"]["id"] == first["id"]
    assert [s["task_name_snapshot"] for s in exported["samples"]] == [
        "find-the-flag",
        "decode-payload",
    ]
    # No item ever started an agent, so there is no transcript to export (404s are skipped).
    assert exported["transcripts"] == {}

    out = tmp_path / "export"
    ok(dn("evaluation", "export", first["id"][:8], "--no-transcripts", "--output", str(out)))
    assert len((out / "samples.jsonl").read_text().splitlines()) == 2

    compared = ok(dn("evaluation", "compare", first["id"][:8], second["id"][:8], "--json")).json()
    assert compared["a"]["job"]["id"] == first["id"]
    assert compared["b"]["job"]["id"] == second["id"]
    assert compared["b"]["job"]["dataset_size"] == 1


def test_unknown_task_is_refused_with_the_422_detail(dn: Dn, server: LiveServer) -> None:
    result = dn(
        "evaluation", "create", "dn-refused", "--task", "no-such-task", "--model", MODEL, "--json"
    )

    assert result.returncode != 0, result.describe()
    assert "422" in result.output
    assert "unknown task 'no-such-task'" in result.output
    status, page = server.api("GET", "/evaluations?page_size=200")
    assert status == 200
    assert "dn-refused" not in {e["name"] for e in page["items"]}


def test_unknown_prefix_is_a_404(dn: Dn) -> None:
    result = dn("evaluation", "get", "deadbeef")
    assert result.returncode != 0, result.describe()
    assert "404" in result.output
    assert "deadbeef" in result.output


def test_a_wrong_api_key_is_a_401(dn: Dn) -> None:
    result = dn("evaluation", "list", DREADNODE_API_KEY="assay_not_a_real_key")
    assert result.returncode != 0, result.describe()
    assert "401" in result.output


# ---- with a worker: --wait follows the evaluation to its end ----


@pytest.fixture(scope="module")
def working_server(
    dn_executable: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveServer]:
    """A second live server that runs an in-process worker (the module's `server` runs none)."""
    workdir = tmp_path_factory.mktemp("dn-worker-server")
    live = LiveServer(workdir)
    live.prepare()
    # LiveServer starts `assay serve` with ASSAY_WORKERS=0; these settings win over it.
    worker_env = {
        "ASSAY_WORKERS": "2",
        "ASSAY_SANDBOX_ROOT": str(workdir / "sandboxes"),
        "ASSAY_POLL_SECONDS": "0.1",
    }
    clean_env = dn_client._clean_env
    with mock.patch.object(
        dn_client, "_clean_env", lambda **extra: clean_env(**{**extra, **worker_env})
    ):
        live.start()
    try:
        yield live
    finally:
        live.stop()


def test_create_with_wait_follows_an_oracle_run_to_completed(
    dn_executable: Path, working_server: LiveServer, tmp_path: Path
) -> None:
    dn = Dn(dn_executable, working_server, tmp_path / "dn-home")

    result = dn(
        "evaluation",
        "create",
        "dn-wait-oracle",
        "--task",
        "decode-payload",
        "--task",
        "find-the-flag",
        "--capability",
        "oracle",
        "--wait",
        "--poll-interval-sec",
        "1",
    )

    assert result.returncode == 0, result.describe() + "\n" + working_server.log_tail()
    assert "completed" in result.stdout
    assert "dn-wait-oracle" in result.stdout
    assert re.search(r"pass: 100%", result.stdout), result.describe()
    assert "passed=2" in result.stdout
    assert re.search(r"decode-payload\s+100% \(1/1\)", result.stdout), result.describe()
    assert re.search(r"find-the-flag\s+100% \(1/1\)", result.stdout), result.describe()
    status, page = working_server.api("GET", "/evaluations?page_size=200")
    assert status == 200
    [stored] = [e for e in page["items"] if e["name"] == "dn-wait-oracle"]
    assert stored["job_status"] == "completed"
    assert stored["item_counts"]["passed"] == 2
    # The worker cleans up after itself (cleanup_policy always), right after each verdict.
    sandboxes = working_server.workdir / "sandboxes"
    deadline = time.monotonic() + 10
    while leftovers := leftover_sandboxes(sandboxes):
        assert time.monotonic() < deadline, leftovers
        time.sleep(0.1)
