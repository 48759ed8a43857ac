"""The `dn` client's read commands (dreadnode==2.0.52) against a live `assay serve` that runs
items: `dn sandbox list/get/logs/usage/delete`, `dn runtime list/get`, `dn capability
list/info`. The client is installed and skipped exactly as in test_dn_client.py."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.app.dn_client import Dn, DnResult, LiveServer, _clean_env, assay_command
from tests.app.execution_fixtures import write_bundle
from tests.app.test_dn_client import dn_executable  # noqa: F401  (the session fixture)

TERMINAL = {"completed", "partial", "failed", "cancelled"}


@pytest.fixture(scope="module")
def server(
    dn_executable: Path,  # noqa: F811
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[LiveServer]:
    workdir = tmp_path_factory.mktemp("dn-read-server")
    bundles = workdir / "bundles"
    write_bundle(bundles, "sleeps-a-while", solution="sleep 60\necho 'FLAG{ok}'\n")
    live = LiveServer(
        workdir,
        env={
            "ASSAY_WORKERS": "2",
            "ASSAY_POLL_SECONDS": "0.05",
            "ASSAY_SANDBOX_ROOT": str(workdir / "sandboxes"),
            "ASSAY_TASK_PATHS": str(bundles),
            "ASSAY_DEFAULT_MAX_RETRIES": "0",
        },
    )
    live.prepare()
    live.start()
    try:
        yield live
    finally:
        live.stop()


@pytest.fixture(scope="module")
def dn(
    dn_executable: Path,  # noqa: F811
    server: LiveServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Dn:
    return Dn(dn_executable, server, tmp_path_factory.mktemp("dn-read-home"))


def ok(result: DnResult) -> DnResult:
    assert result.returncode == 0, result.describe()
    return result


def org_api(server: LiveServer, method: str, path: str) -> tuple[int, Any]:
    """A call under /api/v1/org/{org} (the workspace-scoped helper cannot reach these)."""
    assert server.tenant is not None
    request = urllib.request.Request(
        f"{server.url}/api/v1/org/{server.org}{path}",
        method=method,
        headers={"X-API-Key": server.tenant.api_key},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"null")


def run_evaluation(server: LiveServer, **body: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """Create through the API and wait for the end; the evaluation and its one item."""
    status, created = server.api("POST", "/evaluation", {"name": "sbx", **body})
    assert status == 201, created
    deadline = time.monotonic() + 60
    while True:
        status, evaluation = server.api("GET", f"/evaluation/{created['id']}")
        if evaluation["status"] in TERMINAL:
            break
        assert time.monotonic() < deadline, evaluation
        time.sleep(0.1)
    status, items = server.api("GET", f"/evaluation/{created['id']}/items")
    [item] = items["items"]
    return evaluation, item


def wait_kept(server: LiveServer, evaluation_id: str, item_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 20
    while True:
        _status, item = server.api("GET", f"/evaluation/{evaluation_id}/items/{item_id}")
        if item["metadata_json"].get("sandbox", {}).get("kept"):
            return dict(item)
        assert time.monotonic() < deadline, item
        time.sleep(0.1)


@pytest.fixture(scope="module")
def finished(server: LiveServer) -> dict[str, dict[str, Any]]:
    """A failed nop item whose sandbox is kept, and a passed oracle item whose was destroyed."""
    kept_eval, kept_item = run_evaluation(
        server, capability="nop", task_names=["find-the-flag"], cleanup_policy="on_success"
    )
    assert kept_item["status"] == "failed"
    kept_item = wait_kept(server, kept_eval["id"], kept_item["id"])
    _gone_eval, gone_item = run_evaluation(
        server, capability="oracle", task_names=["decode-payload"]
    )
    assert gone_item["status"] == "passed"
    return {"kept": kept_item, "gone": gone_item}


# ---- dn sandbox ----


def test_sandbox_list_shows_each_item_sandbox_with_its_state(
    dn: Dn, finished: dict[str, dict[str, Any]]
) -> None:
    rows = ok(dn("sandbox", "list", "--json")).json()

    by_id = {row["id"]: row for row in rows}
    assert by_id[finished["kept"]["id"]]["state"] == "kept"
    assert by_id[finished["gone"]["id"]]["state"] == "killed"
    assert by_id[finished["kept"]["id"]]["sandbox_kind"] == "evaluation_item"
    assert by_id[finished["kept"]["id"]]["provider_sandbox_id"].startswith(finished["kept"]["id"])

    text = ok(dn("sandbox", "list")).stdout
    assert f"{finished['kept']['id']} kept evaluation_item" in text

    only_kept = ok(dn("sandbox", "list", "--state", "kept", "--json")).json()
    assert finished["kept"]["id"] in {row["id"] for row in only_kept}
    assert finished["gone"]["id"] not in {row["id"] for row in only_kept}


def test_sandbox_get_by_prefix_shows_provider_isolation_and_location(
    dn: Dn, finished: dict[str, dict[str, Any]]
) -> None:
    item = finished["kept"]
    body = ok(dn("sandbox", "get", item["id"][:8], "--json")).json()

    assert body["id"] == item["id"]
    assert body["provider"] == "local"
    assert body["isolation"]["level"] == item["metadata_json"]["sandbox"]["isolation"]["level"]
    assert body["location"] == item["metadata_json"]["sandbox"]["location"]
    assert Path(body["location"]).is_dir()
    assert body["created_at"] == item["started_at"]
    assert body["ended_at"] == item["completed_at"]

    by_provider_id = ok(dn("sandbox", "get", body["provider_sandbox_id"], "--json")).json()
    assert by_provider_id["id"] == item["id"]


def test_sandbox_logs_show_the_commands_run_and_their_output(
    dn: Dn, finished: dict[str, dict[str, Any]]
) -> None:
    logs = ok(dn("sandbox", "logs", finished["gone"]["id"])).stdout

    assert "$ bash solution.sh" in logs
    assert "exit code: 0" in logs
    assert "item passed" in logs


def test_sandbox_usage_counts_the_sessions(dn: Dn, finished: dict[str, dict[str, Any]]) -> None:
    usage = ok(dn("sandbox", "usage", "--json")).json()

    assert usage["sessions_count"] >= 2
    assert usage["kept_count"] >= 1
    assert usage["total_runtime_seconds"] >= 0
    assert "sessions" in ok(dn("sandbox", "usage")).stdout


def test_an_unknown_sandbox_is_a_404(dn: Dn, server: LiveServer) -> None:
    result = dn("sandbox", "get", "0123456789abcdef")
    assert result.returncode != 0
    assert org_api(server, "GET", "/sandboxes/0123456789abcdef")[0] == 404


def test_sandbox_delete_removes_a_kept_sandbox_and_records_it(
    dn: Dn, server: LiveServer, finished: dict[str, dict[str, Any]]
) -> None:
    item = finished["kept"]
    location = Path(item["metadata_json"]["sandbox"]["location"])
    assert location.is_dir()

    result = ok(dn("sandbox", "delete", item["id"], "--yes"))

    assert "Deleted sandbox" in result.output
    assert not location.exists()
    status, after = org_api(server, "GET", f"/sandboxes/{item['id']}")
    assert status == 200 and after["state"] == "killed"
    _status, view = server.api("GET", f"/evaluation/{item['evaluation_id']}/items/{item['id']}")
    assert view["metadata_json"]["sandbox"]["kept"] is False
    assert view["metadata_json"]["sandbox"]["discarded_at"]
    _status, history = server.api("GET", f"/evaluation/{item['evaluation_id']}/events")
    assert [e["type"] for e in history["events"]][-1] == "item.sandbox_discarded"

    again = dn("sandbox", "delete", item["id"], "--yes")
    assert again.returncode != 0
    assert "already removed" in again.output


def test_deleting_a_destroyed_sandbox_is_a_conflict(
    server: LiveServer, finished: dict[str, dict[str, Any]]
) -> None:
    status, body = org_api(server, "DELETE", f"/sandboxes/{finished['gone']['id']}")
    assert status == 409
    assert body["type"] == "conflict"


def test_deleting_the_sandbox_of_a_running_item_is_refused(dn: Dn, server: LiveServer) -> None:
    status, created = server.api(
        "POST",
        "/evaluation",
        {"name": "busy", "capability": "oracle", "task_names": ["sleeps-a-while"]},
    )
    assert status == 201, created
    deadline = time.monotonic() + 30
    while True:
        _s, items = server.api("GET", f"/evaluation/{created['id']}/items")
        [item] = items["items"]
        if item["status"] == "agent_running":
            break
        assert time.monotonic() < deadline, item
        time.sleep(0.1)
    try:
        listed = ok(dn("sandbox", "list", "--state", "running", "--json")).json()
        assert item["id"] in {row["id"] for row in listed}

        result = dn("sandbox", "delete", item["id"], "--yes")

        assert result.returncode != 0
        assert "in use" in result.output
        _s, still = server.api("GET", f"/evaluation/{created['id']}/items/{item['id']}")
        assert still["status"] == "agent_running"
    finally:
        server.api("POST", f"/evaluation/{created['id']}/cancel")


# ---- dn runtime ----


@pytest.fixture(scope="module")
def runtime(server: LiveServer) -> dict[str, str]:
    done = subprocess.run(
        [
            *assay_command(),
            "admin",
            "add-runtime",
            "--org",
            server.org,
            "--workspace",
            server.workspace,
            "--name",
            "gpu-box",
            "--base-url",
            "http://127.0.0.1:9/v1",
            "--database-url",
            server.database_url,
        ],
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
        env=_clean_env(),
    )
    runtime_id = done.stdout.strip().rsplit("id=", 1)[1]
    return {"id": runtime_id, "name": "gpu-box"}


def test_runtime_list_shows_the_workspace_runtimes(dn: Dn, runtime: dict[str, str]) -> None:
    rows = ok(dn("runtime", "list", "--json")).json()

    [row] = [r for r in rows if r["id"] == runtime["id"]]
    assert row["key"] == "gpu-box"
    assert row["status"] == "idle"
    assert row["owned_by_me"] is True
    assert f"{runtime['id']} idle gpu-box" in ok(dn("runtime", "list")).stdout


def test_runtime_get_by_id_or_name(dn: Dn, runtime: dict[str, str]) -> None:
    by_id = ok(dn("runtime", "get", runtime["id"], "--json")).json()
    assert by_id["name"] == "gpu-box"
    assert by_id["base_url"] == "http://127.0.0.1:9/v1"
    by_name = ok(dn("runtime", "get", "gpu-box", "--json")).json()
    assert by_name["id"] == runtime["id"]


def test_an_unknown_runtime_is_a_404(dn: Dn, server: LiveServer) -> None:
    assert dn("runtime", "get", "no-such-runtime").returncode != 0
    assert server.api("GET", "/runtimes/no-such-runtime")[0] == 404


# ---- dn capability ----


def test_capability_list_shows_the_agents_create_accepts(dn: Dn) -> None:
    rows = ok(dn("capability", "list", "--json")).json()

    # The client asks for sort_dir=desc; built-ins are ordered by name.
    assert [row["name"] for row in rows] == ["oracle", "openai", "nop"]
    openai = next(row for row in rows if row["name"] == "openai")
    assert openai["secrets"][0]["provider"] == "openai"
    assert openai["versions"] and openai["version_count"] == 1
    text = ok(dn("capability", "list")).stdout
    assert "oracle@" in text and "reference solution" in text


def test_capability_list_search_narrows_it(dn: Dn) -> None:
    rows = ok(dn("capability", "list", "--search", "chat completions", "--json")).json()
    assert [row["name"] for row in rows] == ["openai"]


def test_capability_info_shows_the_agent_and_its_version(dn: Dn, server: LiveServer) -> None:
    body = ok(dn("capability", "info", "oracle", "--json")).json()

    assert body["name"] == "oracle"
    assert body["available_versions"] == [body["version"]]
    assert body["needs_model"] is False
    text = ok(dn("capability", "info", "openai")).stdout
    assert "openai@" in text and "versions:" in text
    pinned = ok(dn("capability", "info", f"oracle@{body['version']}", "--json")).json()
    assert pinned["name"] == "oracle"
    status, facets = org_api(server, "GET", "/capabilities/facets")
    assert status == 200
    assert {"value": "baseline", "count": 2} in facets["keywords"]


def test_capability_info_readme_says_how_to_select_it(dn: Dn) -> None:
    text = ok(dn("capability", "info", "nop", "--readme")).stdout
    assert "--capability nop" in text


def test_an_unknown_capability_or_version_is_a_404(dn: Dn, server: LiveServer) -> None:
    assert dn("capability", "info", "no-such-agent").returncode != 0
    assert org_api(server, "GET", "/capabilities/no-such-agent")[0] == 404
    assert org_api(server, "GET", "/capabilities/oracle/99.0.0")[0] == 404
    assert org_api(server, "GET", "/capabilities/oracle/versions")[1]["versions"]
