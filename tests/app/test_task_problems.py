"""Broken task bundles are reported by name and reason: a log line per problem at start-up,
`GET /org/{org}/task-problems`, and `assay tasks check DIR...`; an unknown task at create
suggests the closest names."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog
from click.testing import CliRunner
from litestar.testing import TestClient
from structlog.testing import capture_logs

from app import composition as composition_module
from app.cli import main
from app.composition import build_container
from app.main import create_app
from infrastructure.identity.bootstrap import bootstrap
from infrastructure.settings import Settings
from tests.app.conftest import Api, make_settings, run_identity
from tests.app.execution_fixtures import write_bundle


def broken_bundles(root: Path) -> Path:
    write_bundle(root, "good-one")
    bad = root / "bad-yaml"
    bad.mkdir()
    (bad / "task.yaml").write_text("name: bad-yaml\ninstruction: [unclosed\n")
    nameless = root / "no-instruction"
    nameless.mkdir()
    (nameless / "task.yaml").write_text("name: no-instruction\nversion: '1.0.0'\n")
    return root


@pytest.fixture
def broken_settings(database_url: str, tmp_path: Path) -> Settings:
    return make_settings(database_url, task_paths=(str(broken_bundles(tmp_path / "bundles")),))


@pytest.fixture
def api(broken_settings: Settings) -> Iterator[Api]:
    tenant = run_identity(
        broken_settings,
        lambda store: bootstrap(store, org_key="acme", workspace_key="main", email="o@acme.test"),
    )
    with TestClient(create_app(broken_settings)) as client:
        yield Api(
            client=client,
            settings=broken_settings,
            org="acme",
            workspace="main",
            key=tenant.raw_key,
            user_id=tenant.user.id,
            headers={"X-API-Key": tenant.raw_key},
        )


def test_the_problems_route_names_each_broken_bundle_and_why(api: Api) -> None:
    response = api.client.get("/api/v1/org/acme/task-problems", headers=api.headers)

    assert response.status_code == 200, response.text
    body = response.json()
    by_name = {p["name"]: p for p in body["problems"]}
    assert set(by_name) == {"bad-yaml", "no-instruction"}
    assert body["total"] == 2
    assert "invalid YAML" in by_name["bad-yaml"]["error"]
    assert "instruction" in by_name["no-instruction"]["error"]
    assert by_name["bad-yaml"]["path"].endswith("bad-yaml")


def test_the_problems_route_needs_a_key_and_hides_other_orgs(api: Api) -> None:
    assert api.client.get("/api/v1/org/acme/task-problems").status_code == 401
    other = api.client.get("/api/v1/org/someone-else/task-problems", headers=api.headers)
    assert other.status_code == 404
    assert other.json()["type"] == "not_found"


def test_a_good_bundle_beside_broken_ones_still_loads_and_runs_create(api: Api) -> None:
    response = api.create(task_names=["good-one"], capability="nop")
    assert response.status_code == 201, response.text


def test_an_unknown_task_suggests_the_closest_names(api: Api) -> None:
    response = api.create(task_names=["find-the-flg"])

    assert response.status_code == 422
    [error] = response.json()["errors"]
    assert error["loc"] == ["body", "task_names", 0]
    assert error["msg"] == "unknown task 'find-the-flg'; did you mean 'find-the-flag'?"


def test_an_unknown_task_with_nothing_close_has_no_suggestion(api: Api) -> None:
    response = api.create(task_names=["zzzzzz"])
    assert response.json()["errors"][0]["msg"] == "unknown task 'zzzzzz'"


def test_start_up_logs_one_line_per_broken_bundle(
    broken_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    with capture_logs() as logs:
        # A fresh logger: the module's own may be cached with an earlier configuration.
        monkeypatch.setattr(composition_module, "log", structlog.get_logger("assay.server"))
        container = build_container(broken_settings)
    asyncio.run(container.close())

    problems = [entry for entry in logs if entry["event"] == "task_bundle_problem"]
    assert sorted(p["task"] for p in problems) == ["bad-yaml", "no-instruction"]
    assert all(p["log_level"] == "warning" and p["error"] and p["path"] for p in problems)


def test_tasks_check_exits_1_with_one_line_per_problem(tmp_path: Path) -> None:
    root = broken_bundles(tmp_path / "bundles")

    result = CliRunner().invoke(main, ["tasks", "check", str(root)])

    assert result.exit_code == 1, result.output
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 2
    assert any(line.startswith(str(root / "bad-yaml") + ": invalid YAML") for line in lines)
    assert any(line.startswith(str(root / "no-instruction") + ": ") for line in lines)


def test_tasks_check_exits_0_on_valid_bundles(tmp_path: Path) -> None:
    folder = write_bundle(tmp_path, "fine-task")

    result = CliRunner().invoke(main, ["tasks", "check", str(folder), "tasks"])

    assert result.exit_code == 0, result.output
    assert "ok fine-task@1.0.0 (assay format)" in result.stdout
    assert "ok find-the-flag@" in result.stdout


def test_tasks_check_of_a_missing_folder_is_a_problem(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["tasks", "check", str(tmp_path / "nowhere")])
    assert result.exit_code == 1
    assert "task folder not found" in result.stdout
