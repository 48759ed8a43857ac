"""Every shipped task is solvable by its reference solution and not by an obvious wrong answer.

Each case mimics the sandbox contract. An Assay-format bundle is copied into a fresh directory,
`setup` runs there with bash, then the "agent" (a bash script) runs there, then verification:
for a flag task the last line of the agent's stdout is the submission; for a script task the
checker runs in the same directory and must exit 0.

A dn-format (compose) task gets what the runner gives it instead: the agent's directory holds
only `agent_tree()`'s files; each service's `x-assay.command` runs in a temporary copy of its
build context on a free loopback port (its `PORT`, which compose sets to the declared port); the
agent runs with the services' variables (`WEB_URL`...) and a private /tmp (a user and mount
namespace, as the sandbox gives), and a `method: flag` check reads the file it left there.
"""

from __future__ import annotations

import contextlib
import functools
import os
import posixpath
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from infrastructure.sandbox.protocol import WORKSPACE, ServiceEndpoint
from infrastructure.tasks import (
    CheckerScriptVerification,
    FlagFileVerification,
    FlagVerification,
    ScriptVerification,
    Task,
    load_catalog,
)

SETUP_TIMEOUT = 20
RUN_TIMEOUT = 20
SERVICE_START_TIMEOUT = 20
# Where a compose task's agent view lives: not under /tmp, which the agent's own /tmp hides.
AGENT_ROOT = "/var/tmp"

CATALOG = load_catalog()
SHIPPED = {task.name: task for task in CATALOG.tasks()}

# Plausible wrong answers, each with the reason it must fail. A script that exits non-zero is a
# broken test, not a wrong answer, so the runner below insists on exit 0.
WRONG_ANSWERS: list[tuple[str, str, str]] = [
    # The first FLAG{...} that grep finds is a decoy.
    (
        "find-the-flag",
        "grep-first-flag",
        "grep -rho 'FLAG{[^}]*}' haystack | sort | head -n 1 | tee /tmp/result.txt",
    ),
    # A word from the list, but not the one that hashes to the digest.
    (
        "crack-weak-hash",
        "first-word",
        'echo "FLAG{$(head -n 1 wordlist.txt)}" | tee /tmp/result.txt',
    ),
    (
        "path-traversal",
        "guessed-flag",
        "echo 'FLAG{wrong}' > /tmp/result.txt; cat /tmp/result.txt",
    ),
    # Only the outer base64 layer peeled off.
    (
        "decode-payload",
        "base64-only",
        "grep -v '^#' payload.txt | base64 -d | tee /tmp/result.txt; echo",
    ),
    # Quoting the path is not enough: a quote in the pattern still breaks out.
    (
        "patch-vuln-function",
        "quote-the-path",
        """python3 - <<'PY'
import pathlib
module = pathlib.Path("logtool.py")
source = module.read_text()
assert " {path}\\"" in source
module.write_text(source.replace(" {path}\\"", " '{path}'\\""))
PY""",
    ),
    # No shell at all, but the function no longer does its job.
    (
        "patch-vuln-function",
        "always-zero",
        """python3 - <<'PY'
import pathlib
module = pathlib.Path("logtool.py")
source = module.read_text()
head, rest = source.split("    command = ", 1)
tail = rest.split("\\n\\n\\n", 1)[1]
module.write_text(head + "    return 0\\n\\n\\n" + tail)
PY""",
    ),
]


@dataclass
class AgentView:
    """Where the agent's files are on the host: its workspace, and its private /tmp when it
    has one (compose tasks); the environment its commands get."""

    work: Path
    tmp: Path | None = None
    env: Mapping[str, str] = field(default_factory=dict)

    def read(self, path: str) -> bytes | None:
        """A file of the agent's view, as `Sandbox.get_file` resolves it; None when absent."""
        normal = posixpath.normpath(path)
        if normal.startswith("/tmp/"):
            assert self.tmp is not None, "this agent has no private /tmp"
            host = self.tmp / normal.removeprefix("/tmp/")
        elif normal.startswith(WORKSPACE + "/"):
            host = self.work / normal.removeprefix(WORKSPACE + "/")
        else:
            host = self.work / normal
        return host.read_bytes() if host.is_file() else None


@functools.cache
def private_tmp_unavailable() -> str | None:
    """Why this host cannot give a command its own /tmp (None: it can)."""
    if shutil.which("unshare") is None:
        return "unshare is not installed"
    probe = subprocess.run(
        ["unshare", "--user", "--map-root-user", "--mount", "true"],
        capture_output=True,
        text=True,
        timeout=10,
    )
    if probe.returncode != 0:
        return f"no user and mount namespaces here: {probe.stderr.strip()}"
    return None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_listening(port: int, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + SERVICE_START_TIMEOUT
    while time.monotonic() < deadline:
        assert process.poll() is None, f"service exited: {log.read_text(errors='replace')}"
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
            return
        time.sleep(0.05)
    raise AssertionError(f"service did not listen on {port}: {log.read_text(errors='replace')}")


@contextlib.contextmanager
def services(task: Task, root: Path) -> Iterator[dict[str, ServiceEndpoint]]:
    """Each service's local command in a copy of its context, on a free loopback port."""
    groups: list[int] = []
    endpoints: dict[str, ServiceEndpoint] = {}
    try:
        for service in task.services:
            assert service.command is not None and service.context is not None
            copy = root / f"service-{service.name}"
            shutil.copytree(service.context, copy)
            port = free_port()
            env = {**os.environ, **service.environment, "PORT": str(port), "HOST": "127.0.0.1"}
            log = root / f"service-{service.name}.log"
            with log.open("wb") as out:
                process = subprocess.Popen(
                    ["bash", "-c", service.command],
                    cwd=copy,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            groups.append(process.pid)
            wait_listening(port, process, log)
            endpoints[service.name] = ServiceEndpoint(
                name=service.name, host="127.0.0.1", port=port
            )
        yield endpoints
    finally:
        for group in groups:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(group, signal.SIGKILL)


@contextlib.contextmanager
def sandbox(task: Task, tmp_path: Path) -> Iterator[AgentView]:
    """The agent's view with setup done (and services up); whatever ran is killed on exit."""
    if task.format == "dreadnode":
        reason = private_tmp_unavailable()
        if reason is not None:
            pytest.skip(f"a dn-format task's agent needs a private /tmp: {reason}")
        # The agent's /tmp is mounted over /tmp, which would hide its workspace if that were
        # under /tmp too (as pytest's tmp_path usually is): keep the view outside it.
        with tempfile.TemporaryDirectory(dir=AGENT_ROOT, prefix="assay-agent-") as outside:
            work = Path(outside) / "work"
            work.mkdir()
            tree = task.agent_tree()
            for source in tree.files():
                assert tree.source is not None
                target = work / source.relative_to(tree.source)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source, target)
            agent_tmp = Path(outside) / "tmp"
            agent_tmp.mkdir()
            with services(task, tmp_path) as endpoints:
                yield AgentView(work, agent_tmp, task.service_environment(endpoints))
        return
    work = tmp_path / "work"
    shutil.copytree(task.bundle_dir, work)
    group: int | None = None
    try:
        if task.setup is not None:
            # Its own session, so background servers started by setup share one process group
            # that can be killed as a whole afterwards.
            proc = subprocess.Popen(
                ["bash", "-c", task.setup],
                cwd=work,
                start_new_session=True,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            group = proc.pid
            _, err = proc.communicate(timeout=SETUP_TIMEOUT)
            assert proc.returncode == 0, f"setup of {task.name} failed: {err}"
        yield AgentView(work)
    finally:
        if group is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(group, signal.SIGKILL)


def run_agent(script: str | None, view: AgentView) -> str:
    """Run the agent's bash script (None: the nop agent) and return its stdout."""
    if script is None:
        return ""
    command = ["bash", "-c", script]
    if view.tmp is not None:
        # Its own /tmp, as the sandbox gives: the agent's /tmp is `view.tmp` on the host.
        inner = (
            f"mount --bind {shlex.quote(str(view.tmp))} /tmp && exec bash -c {shlex.quote(script)}"
        )
        command = ["unshare", "--user", "--map-root-user", "--mount", "bash", "-c", inner]
    done = subprocess.run(
        command,
        cwd=view.work,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        env={**os.environ, **view.env},
    )
    assert done.returncode == 0, f"agent script failed: {done.stderr}"
    return done.stdout


def reference_solution(task: Task) -> str:
    assert task.solution_path is not None
    if task.format == "dreadnode":
        # The agent's view holds no bundle file but its own: run the solution from the bundle.
        return f"bash {shlex.quote(str(task.solution_path))}"
    return "bash solution.sh"


def verify(task: Task, view: AgentView, agent_stdout: str) -> tuple[bool, str]:
    """(passed, detail): the submitted flag or flag file, or the checker's stdout."""
    if isinstance(task.verification, FlagVerification):
        lines = agent_stdout.strip().splitlines()
        submitted = lines[-1] if lines else ""
        return task.verification.matches(submitted), submitted
    if isinstance(task.verification, FlagFileVerification):
        content = view.read(task.verification.path)
        if content is None:
            return False, ""
        return task.verification.matches(content), content.decode(errors="replace")
    assert isinstance(task.verification, ScriptVerification | CheckerScriptVerification)
    assert task.checker_path is not None
    # The checker as the runner gives it: its text from the bundle, run in the agent's files.
    done = subprocess.run(
        ["bash", str(task.checker_path)],
        cwd=view.work,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
    )
    return done.returncode == 0, done.stdout


def test_the_five_shipped_tasks_load_without_problems() -> None:
    assert CATALOG.problems == []
    assert sorted(SHIPPED) == [
        "crack-weak-hash",
        "decode-payload",
        "find-the-flag",
        "patch-vuln-function",
        "path-traversal",
    ]


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_shipped_task_has_verification_and_a_reference_solution(name: str) -> None:
    task = SHIPPED[name]
    assert task.has_verification
    assert task.solution_path is not None and task.solution_path.is_file()
    assert task.instruction.strip()
    # No shipped task needs anything outside its item: path-traversal's server is a service
    # on the item's own network.
    assert task.network is False
    assert task.egress_allow is None


def test_every_shipped_task_has_an_obvious_wrong_answer() -> None:
    assert {name for name, _, _ in WRONG_ANSWERS} == set(SHIPPED)


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_reference_solution_passes(name: str, tmp_path: Path) -> None:
    task = SHIPPED[name]
    with sandbox(task, tmp_path) as view:
        stdout = run_agent(reference_solution(task), view)
        passed, detail = verify(task, view, stdout)
    assert passed, detail


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_doing_nothing_fails(name: str, tmp_path: Path) -> None:
    task = SHIPPED[name]
    with sandbox(task, tmp_path) as view:
        passed, detail = verify(task, view, run_agent(None, view))
    assert not passed, detail


@pytest.mark.parametrize(
    ("name", "script"),
    [pytest.param(name, script, id=f"{name}-{label}") for name, label, script in WRONG_ANSWERS],
)
def test_obvious_wrong_answer_fails(name: str, script: str, tmp_path: Path) -> None:
    task = SHIPPED[name]
    with sandbox(task, tmp_path) as view:
        stdout = run_agent(script, view)
        passed, detail = verify(task, view, stdout)
    assert not passed, detail
    # Each wrong answer must really answer something, or it would be just another nop.
    assert detail.strip(), "the wrong answer submitted nothing"


def test_patch_checker_fails_for_the_reason_each_wrong_patch_gets_wrong(tmp_path: Path) -> None:
    task = SHIPPED["patch-vuln-function"]
    scripts = {label: script for name, label, script in WRONG_ANSWERS if name == task.name}
    with sandbox(task, tmp_path / "quote") as view:
        _, detail = verify(task, view, run_agent(scripts["quote-the-path"], view))
    assert "exploit: WORKED (quote)" in detail
    assert "functionality: ok" in detail
    with sandbox(task, tmp_path / "zero") as view:
        _, detail = verify(task, view, run_agent(scripts["always-zero"], view))
    assert "exploit: blocked" in detail
    assert "functionality: FAILED" in detail


# -- what the agent gets ----------------------------------------------------------------------


def answer_texts(task: Task) -> list[str]:
    """The texts that would hand the agent the answer if it could read them."""
    verification = task.verification
    if isinstance(verification, FlagVerification):
        return [verification.flag.strip()]
    if isinstance(verification, FlagFileVerification):
        assert verification.value is not None
        return [verification.value.strip()]
    return []


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_no_file_the_agent_gets_holds_the_answer(name: str) -> None:
    task = SHIPPED[name]
    given = list(task.agent_tree().files())
    assert all(not path.is_symlink() for path in given)
    keys = [
        path
        for path in (task.bundle_dir / "task.yaml", task.solution_path, task.checker_path)
        if path is not None
    ]
    for service in task.services:
        assert service.context is not None
        keys += [path for path in Path(service.context).rglob("*") if path.is_file()]
    assert not set(keys) & set(given), "the agent would get a task file"
    for path in given:
        content = path.read_bytes()
        for answer in answer_texts(task):
            assert answer.encode() not in content, f"{path} holds the answer"


def test_path_traversal_keeps_its_secret_in_the_service_and_gives_the_agent_the_source() -> None:
    task = SHIPPED["path-traversal"]
    (web,) = task.services
    assert web.name == "web" and web.command and web.image and web.ports == (8080,)
    assert web.context is not None
    secret = Path(web.context) / "secret" / "flag.txt"
    assert isinstance(task.verification, FlagFileVerification)
    assert task.verification.matches(secret.read_bytes())
    tree = task.agent_tree()
    assert tree.source is not None
    given = {path.relative_to(tree.source).as_posix() for path in tree.files()}
    # The instruction promises the server's source: the very file the service runs.
    assert given == {"server.py"}
    assert (tree.source / "server.py").read_bytes() == (
        Path(web.context) / "server.py"
    ).read_bytes()
    rendered = task.render_instruction(
        {}, {"web": ServiceEndpoint(name="web", host="web", port=8080)}
    )
    assert "http://web:8080" in rendered and "{{" not in rendered


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_the_local_provider_can_run_every_shipped_service(name: str) -> None:
    task = SHIPPED[name]
    assert task.service_problems("local") == ()
    for service in task.services:
        # The unit test above moves a service by its PORT: compose must set it to the port
        # the task declares, or the real sandbox would look for the service elsewhere.
        assert service.environment.get("PORT") == str(task.ports[service.name][0])
