"""The task registry through the published `dn` client (2.0.52) against a live `assay serve`:
`dn task init/push/list/info/pull/publish/unpublish/delete`, ingest validation and version
immutability, and a pushed task run by an evaluation.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.app.dn_client import Dn, DnResult, LiveServer, _clean_env, assay_command
from tests.app.test_dn_client import dn_executable  # noqa: F401  (the session fixture)


def ok(result: DnResult) -> DnResult:
    assert result.returncode == 0, result.describe()
    return result


@pytest.fixture(scope="module")
def server(dn_executable: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:  # noqa: F811
    # A worker in the server, so a pushed task can be run end to end.
    live = LiveServer(tmp_path_factory.mktemp("registry-server"), env={"ASSAY_WORKERS": "2"})
    live.prepare()
    live.start()
    try:
        yield live
    finally:
        live.stop()


@pytest.fixture(scope="module")
def dn(dn_executable: Path, server: LiveServer, tmp_path_factory: pytest.TempPathFactory) -> Dn:  # noqa: F811
    return Dn(dn_executable, server, tmp_path_factory.mktemp("registry-home"))


@pytest.fixture(scope="module")
def other_dn(
    dn_executable: Path,  # noqa: F811
    server: LiveServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Dn:
    """The client of a second org on the same server."""
    done = subprocess.run(
        [
            *assay_command(),
            "admin",
            "bootstrap",
            "--org",
            "rival",
            "--workspace",
            "main",
            "--email",
            "rival@example.com",
            "--database-url",
            server.database_url,
            "--json",
        ],
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
        env=_clean_env(),
    )
    key = json.loads(done.stdout)["api_key"]
    client = Dn(dn_executable, server, tmp_path_factory.mktemp("rival-home"))
    client.env.update(DREADNODE_API_KEY=key, DREADNODE_ORGANIZATION="rival")
    return client


def init_task(dn: Dn, name: str, *, version: str = "0.1.0") -> Path:
    """`dn task init` a bundle, made solvable by Assay's local provider (the scaffold's
    service is a Dockerfile; the flag is written by the oracle's solution)."""
    ok(
        dn(
            "task",
            "init",
            name,
            "--initial-version",
            version,
            "--with-solution",
            "--description",
            f"{name} for the registry tests",
            "--tag",
            "registry",
        )
    )
    folder = dn.cwd / name
    task = yaml.safe_load((folder / "task.yaml").read_text())
    task["instruction"] = "Write the flag FLAG{pushed} to /tmp/result.txt"
    task["verification"] = {"method": "flag", "path": "/tmp/result.txt", "value": "FLAG{pushed}"}
    task.pop("ports", None)
    (folder / "task.yaml").write_text(yaml.safe_dump(task, sort_keys=False))
    (folder / "docker-compose.yaml").unlink()
    shutil.rmtree(folder / "challenge", ignore_errors=True)
    (folder / "solution.sh").write_text("#!/bin/sh\necho 'FLAG{pushed}' > /tmp/result.txt\n")
    return folder


def registry_get(server: LiveServer, path: str, key: str | None = None) -> tuple[int, Any]:
    assert server.tenant is not None
    request = urllib.request.Request(
        f"{server.url}/api/v1/org/{server.org}{path}",
        headers={"X-API-Key": key or server.tenant.api_key},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"null")


def test_a_task_dn_task_init_scaffolds_is_pushed_listed_shown_and_pulled_back(
    dn: Dn, server: LiveServer, tmp_path: Path
) -> None:
    folder = init_task(dn, "roundtrip")
    pushed = ok(dn("task", "push", str(folder)))
    assert "Pushed" in pushed.output and "roundtrip" in pushed.output and "sha256:" in pushed.output

    listed = ok(dn("task", "list", "--json")).json()
    rows = {row["name"]: row for row in listed}
    assert rows["roundtrip"]["version"] == "0.1.0"
    assert rows["roundtrip"]["is_public"] is False
    # Built-in tasks are listed beside pushed ones, as public entries.
    assert rows["find-the-flag"]["is_public"] is True
    assert rows["find-the-flag"]["source"] == "built-in"

    info = ok(dn("task", "info", "roundtrip"))
    assert "roundtrip" in info.output and "Write the flag FLAG{pushed}" in info.output
    detail = ok(dn("task", "info", "roundtrip@0.1.0", "--json")).json()
    assert detail["oci_digest"].startswith("sha256:")

    # The same bytes again: accepted, nothing new (the client compares the layer digest).
    ok(dn("task", "push", str(folder)))
    ok(dn("task", "push", str(folder), "--force"))
    status, versions = registry_get(server, "/tasks/roundtrip/versions")
    assert (status, versions["versions"]) == (200, ["0.1.0"])

    out = tmp_path / "pulled"
    ok(dn("task", "pull", "roundtrip", "--output", str(out)))
    assert (out / "task.yaml").read_text() == (folder / "task.yaml").read_text()
    assert (out / "solution.sh").read_text() == (folder / "solution.sh").read_text()


def test_a_bundle_assay_cannot_run_is_refused_at_push_with_the_reason(dn: Dn) -> None:
    folder = init_task(dn, "broken")
    task = yaml.safe_load((folder / "task.yaml").read_text())
    task["verification"] = {"method": "llm_judge", "rubric": "be nice"}
    (folder / "task.yaml").write_text(yaml.safe_dump(task, sort_keys=False))
    refused = dn("task", "push", str(folder), "--skip-validate")
    assert refused.returncode != 0
    assert "task bundle rejected" in refused.output, refused.describe()
    assert "broken" not in {row["name"] for row in ok(dn("task", "list", "--json")).json()}


def test_pushing_other_bytes_under_a_pushed_version_is_refused(dn: Dn) -> None:
    folder = init_task(dn, "immutable")
    ok(dn("task", "push", str(folder)))
    (folder / "notes.txt").write_text("a change\n")
    refused = dn("task", "push", str(folder))
    assert refused.returncode != 0
    assert "immutable" in refused.output and "409" in refused.output, refused.describe()


def test_publish_and_unpublish_decide_what_another_org_sees(
    dn: Dn, other_dn: Dn, server: LiveServer, tmp_path: Path
) -> None:
    folder = init_task(dn, "shared")
    ok(dn("task", "push", str(folder)))
    assert server.tenant is not None
    ref = f"{server.tenant.org}/shared"

    def rival_sees() -> bool:
        listed = ok(other_dn("task", "list", "--include-public", "--json")).json()
        return any(r["name"] == "shared" and r["org_key"] == "demo" for r in listed)

    assert not rival_sees()
    assert other_dn("task", "pull", ref, "--output", str(tmp_path / "a")).returncode != 0

    hidden = other_dn("task", "info", ref)
    assert hidden.returncode != 0 and "not found" in hidden.output

    ok(dn("task", "publish", "shared"))
    assert rival_sees()
    shown = ok(other_dn("task", "info", ref))
    assert "shared" in shown.output and "public" in shown.output
    ok(other_dn("task", "pull", ref, "--output", str(tmp_path / "b")))
    assert (tmp_path / "b" / "task.yaml").is_file()

    ok(dn("task", "unpublish", "shared"))
    assert not rival_sees()


def test_a_deleted_version_is_gone_from_list_and_info(dn: Dn) -> None:
    folder = init_task(dn, "doomed")
    ok(dn("task", "push", str(folder)))
    ok(dn("task", "delete", "doomed@0.1.0", "--yes"))
    assert "doomed" not in {row["name"] for row in ok(dn("task", "list", "--json")).json()}
    assert dn("task", "info", "doomed@0.1.0").returncode != 0


def test_a_pushed_task_runs_in_an_evaluation_from_its_recorded_digest(
    dn: Dn, server: LiveServer
) -> None:
    folder = init_task(dn, "runnable")
    ok(dn("task", "push", str(folder)))
    digest = ok(dn("task", "info", "runnable@0.1.0", "--json")).json()["oci_digest"]
    created = ok(
        dn(
            "evaluation",
            "create",
            "run-pushed",
            "--task",
            "runnable@0.1.0",
            "--capability",
            "oracle",
            "--wait",
            "--json",
            timeout=300,
        )
    )
    evaluation = created.json()
    status, items = server.api("GET", f"/evaluation/{evaluation['id']}/items")
    assert status == 200
    (item,) = items["items"]
    assert item["metadata_json"]["bundle_digest"] == digest
    assert item["status"] == "passed", item


def test_a_task_set_is_pushed_extended_listed_shown_and_run_with_its_skipped_members_printed(
    dn: Dn, server: LiveServer
) -> None:
    ok(dn("task", "push", str(init_task(dn, "member-one"))))
    ok(dn("task", "push", str(init_task(dn, "member-two"))))
    ok(dn("task-set", "init", "suite"))
    manifest = dn.cwd / "task-set.yaml"
    body = yaml.safe_load(manifest.read_text())
    body["members"] = ["demo/member-one", "demo/ghost"]
    body["description"] = "registry suite"
    manifest.write_text(yaml.safe_dump(body))
    pushed = ok(dn("task-set", "push", str(manifest)))
    assert "Created demo/suite (2 members)" in pushed.output, pushed.describe()

    added = ok(dn("task-set", "add", "demo/suite", "demo/member-two@0.1.0"))
    assert "Added 1 member(s)" in added.output and "3 total" in added.output

    listed = ok(dn("task-set", "list", "--json")).json()
    assert [(s["name"], s["member_count"]) for s in listed] == [("suite", 3)]
    info = ok(dn("task-set", "info", "demo/suite"))
    assert "1 of 3 members unresolvable" in info.output, info.describe()
    assert "not_found" in info.output

    run = ok(
        dn(
            "evaluation",
            "create",
            "run-suite",
            "--task-set",
            "demo/suite",
            "--capability",
            "oracle",
            "--wait",
            timeout=300,
        )
    )
    assert "Skipped 1 unresolvable member(s)" in run.output, run.describe()
    assert "demo/ghost (not_found)" in run.output
    status, evaluations = server.api("GET", "/evaluations")
    assert status == 200
    evaluation = next(e for e in evaluations["items"] if e["name"] == "run-suite")
    assert evaluation["status"] == "completed"
    _, items = server.api("GET", f"/evaluation/{evaluation['id']}/items")
    assert sorted(i["task_ref"] for i in items["items"]) == [
        "demo/member-one@0.1.0",
        "demo/member-two@0.1.0",
    ]
    assert all(i["status"] == "passed" for i in items["items"])

    removed = ok(dn("task-set", "remove", "demo/suite", "demo/ghost"))
    assert "2 remaining" in removed.output
    ok(dn("task-set", "delete", "demo/suite", "--yes"))
    assert ok(dn("task-set", "list", "--json")).json() == []


def test_dn_task_sync_pushes_every_task_of_a_folder_and_skips_unchanged_ones(
    dn: Dn, server: LiveServer
) -> None:
    folder = dn.cwd / "synced"
    folder.mkdir()
    for name in ("sync-a", "sync-b"):
        shutil.move(str(init_task(dn, name)), str(folder / name))
    first = ok(dn("task", "sync", str(folder)))
    assert "2 uploaded" in first.output, first.describe()
    second = ok(dn("task", "sync", str(folder)))
    assert "0 uploaded" in second.output and "2 skipped" in second.output, second.describe()
    for name in ("sync-a", "sync-b"):
        assert registry_get(server, f"/tasks/{name}/versions")[1]["versions"] == ["0.1.0"]
