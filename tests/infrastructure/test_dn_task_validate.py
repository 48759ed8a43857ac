"""The published client's own checks: `dn task validate` (dreadnode==2.0.52) passes every shipped
bundle written in its format, and a bundle `dn task init` scaffolds also loads in Assay.

The client is installed into its cached virtualenv (tests/app/dn_client.py). When pip cannot
reach the package index these tests skip with the reason, except under CI=true where they fail.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from infrastructure.tasks import (
    CheckerScriptVerification,
    FlagFileVerification,
    Task,
    load_bundle,
    load_catalog,
)
from tests.app.dn_client import dn_or_skip

DN_FORMAT_TASKS = sorted(task.name for task in load_catalog().tasks() if task.format == "dreadnode")


@pytest.fixture(scope="module")
def dn(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """How to run `dn`, with a throw-away HOME so no profile or config of this host is read."""
    return [str(dn_or_skip())]


def run_dn(dn: list[str], *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    home = cwd / ".dn-home"
    home.mkdir(exist_ok=True)
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("DREADNODE_", "ASSAY_"))
    }
    env.update(HOME=str(home), NO_COLOR="1", TERM="dumb", COLUMNS="200")
    return subprocess.run(
        [*dn, *args],
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=180,
    )


def test_path_traversal_is_written_in_the_clients_format() -> None:
    # The list below must not pass by being empty.
    assert "path-traversal" in DN_FORMAT_TASKS


@pytest.mark.parametrize("name", DN_FORMAT_TASKS)
def test_shipped_dn_bundle_passes_dn_task_validate_strict(
    dn: list[str], name: str, tmp_path: Path
) -> None:
    bundle = load_catalog().resolve(name).bundle_dir
    # --strict: a warning fails too, so a shipped bundle carries the metadata the client asks
    # for (description, source, solution).
    done = run_dn(dn, "task", "validate", "--strict", str(bundle), cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 ok, 0 warn, 0 failed" in done.stdout, done.stdout


def scaffold(dn: list[str], tmp_path: Path, name: str, *flags: str) -> Task:
    """`dn task init` a bundle, check the client validates it, and load it in Assay."""
    done = run_dn(dn, "task", "init", name, *flags, cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    checked = run_dn(dn, "task", "validate", name, cwd=tmp_path)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "0 failed" in checked.stdout, checked.stdout
    task = load_bundle(tmp_path / name)
    assert task.format == "dreadnode"
    # And through the catalog, as a deployment would load it.
    catalog = load_catalog([str(tmp_path / name)])
    assert catalog.problems == []
    assert catalog.resolve(name) == task
    return task


def test_a_bundle_dn_task_init_scaffolds_with_verify_and_solution_loads(
    dn: list[str], tmp_path: Path
) -> None:
    task = scaffold(dn, tmp_path, "fresh-task", "--with-verify", "--with-solution")
    bundle = (tmp_path / "fresh-task").resolve()
    assert task.version == "0.1.0"
    # The client's defaults: verify.sh where: environment, beside the only service.
    assert task.verification == CheckerScriptVerification(
        script="verify.sh", where="environment", timeout=30, service="challenge"
    )
    assert task.solution_path == bundle / "solution.sh"
    (challenge,) = task.services
    assert challenge.name == "challenge"
    assert challenge.context == str(bundle / "challenge")
    assert challenge.ports == (8080,)
    assert task.ports == {"challenge": (8080,)}
    # No x-assay.command: a docker provider can build it, the local provider cannot run it.
    assert task.service_problems("local") != ()
    assert task.service_problems("docker") == ()
    # The scaffold gives the agent nothing from the bundle.
    assert task.agent_tree().source is None
    assert "{{challenge_url}}" in task.instruction


def test_the_default_flag_scaffold_and_the_remote_scaffold_load(
    dn: list[str], tmp_path: Path
) -> None:
    flag = scaffold(dn, tmp_path, "flag-task")
    assert flag.verification == FlagFileVerification(
        path="/tmp/result.txt", value="FLAG{replace_me}"
    )
    remote = scaffold(dn, tmp_path, "remote-task", "--remote", "--with-verify")
    assert remote.services == ()
    assert remote.verification == CheckerScriptVerification(script="verify.sh", where="agent")
