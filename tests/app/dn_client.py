"""The published `dn` client (PyPI dreadnode==2.0.52) and a live `assay serve` to point it at.

`ensure_dn()` installs the client into its own virtualenv, cached between runs at
`${ASSAY_DN_VENV:-~/.cache/assay/dreadnode-2.0.52}`. A marker file written after a successful
install (or after checking a venv someone installed by hand) is what makes a venv trusted; a
venv without it is checked, and rebuilt when the check fails. `LiveServer` runs the real
service as a subprocess on a free loopback port against a fresh migrated SQLite file with a
bootstrapped tenant.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DN_VERSION = "2.0.52"
DN_REQUIREMENT = f"dreadnode=={DN_VERSION}"
MARKER = ".assay-dn-installed"
# A fresh install resolves and downloads a few hundred packages: give it room.
PIP_UPGRADE_TIMEOUT = 600
INSTALL_TIMEOUT = 1800
PROBE_TIMEOUT = 120


class DnUnavailable(Exception):
    """pip could not reach the package index, so the client cannot be installed here."""


class DnInstallFailed(Exception):
    """The index was reachable but installing the client failed: a real error."""


def venv_path() -> Path:
    configured = os.environ.get("ASSAY_DN_VENV")
    if configured:
        return Path(configured).expanduser()
    return Path.home() / ".cache" / "assay" / f"dreadnode-{DN_VERSION}"


def ensure_dn(venv: Path | None = None, *, log: Any = None) -> Path:
    """The `dn` executable of a verified dreadnode==2.0.52 venv, installing it when needed."""
    venv = venv or venv_path()
    say = log or (lambda message: print(message, file=sys.stderr, flush=True))
    venv.parent.mkdir(parents=True, exist_ok=True)
    dn = venv / "bin" / "dn"
    with _locked(venv.with_name(venv.name + ".lock")):
        if (venv / MARKER).is_file() and dn.exists():
            return dn
        if dn.exists() and _verify(venv):
            # Installed by hand or by a run that died before writing the marker: it checks out.
            (venv / MARKER).write_text(DN_REQUIREMENT + "\n")
            return dn
        say(f"installing {DN_REQUIREMENT} into {venv} (a fresh install takes a minute or two)")
        _install(venv, say)
        if not _verify(venv):
            raise DnInstallFailed(
                f"{venv}: installed, but `dreadnode` {DN_VERSION} does not import"
            )
        (venv / MARKER).write_text(DN_REQUIREMENT + "\n")
        return dn


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """One installer at a time (parallel test processes share the cache)."""
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _verify(venv: Path) -> bool:
    python = venv / "bin" / "python"
    if not python.exists():
        return False
    check = (
        "import importlib.metadata as m, dreadnode.app.cli.evaluation; "
        "print(m.version('dreadnode'))"
    )
    try:
        done = subprocess.run(
            [str(python), "-c", check], capture_output=True, text=True, timeout=180
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0 and done.stdout.strip().splitlines()[-1:] == [DN_VERSION]


def _install(venv: Path, say: Any) -> None:
    if venv.exists() and any(venv.iterdir()) and not (venv / "pyvenv.cfg").exists():
        raise DnInstallFailed(
            f"{venv} exists and is not a virtualenv; refusing to clear it (set ASSAY_DN_VENV)"
        )
    # --clear: a venv without the marker may be half-installed; start from nothing.
    _run([sys.executable, "-m", "venv", "--clear", str(venv)], timeout=300, what="create venv")
    pip = [str(venv / "bin" / "python"), "-m", "pip", "--disable-pip-version-check"]
    env = {**os.environ, "PIP_NO_INPUT": "1"}
    env.pop("PIP_REQUIRE_VIRTUALENV", None)
    try:
        # The pip that ships with the venv cannot resolve dreadnode's dependencies: upgrade it.
        _run(
            [*pip, "install", "--upgrade", "pip"],
            timeout=PIP_UPGRADE_TIMEOUT,
            what="upgrade pip",
            env=env,
        )
        say(f"pip upgraded; installing {DN_REQUIREMENT}")
        _run([*pip, "install", DN_REQUIREMENT], timeout=INSTALL_TIMEOUT, what="install", env=env)
    except DnInstallFailed as failure:
        reason = _index_unreachable(pip, env)
        if reason is not None:
            raise DnUnavailable(reason) from failure
        raise


def _index_unreachable(pip: list[str], env: dict[str, str]) -> str | None:
    """Why pip cannot fetch the client from its index, or None when it can (after a failure)."""
    with tempfile.TemporaryDirectory() as scratch:
        try:
            done = subprocess.run(
                [
                    *pip,
                    "download",
                    "--no-deps",
                    "--no-cache-dir",
                    "--retries",
                    "1",
                    "--timeout",
                    "15",
                    "--dest",
                    scratch,
                    DN_REQUIREMENT,
                ],
                capture_output=True,
                text=True,
                timeout=PROBE_TIMEOUT,
                env=env,
            )
        except subprocess.TimeoutExpired:
            return f"pip could not download {DN_REQUIREMENT} within {PROBE_TIMEOUT}s"
    if done.returncode == 0:
        return None
    lines = (done.stderr or done.stdout).strip().splitlines()
    # pip's first complaint names the unreachable host; its last says what it gave up on.
    first = next((ln for ln in lines if "Error" in ln or "error" in ln), "")[:300]
    last = lines[-1][:200] if lines else ""
    return f"pip cannot reach the package index for {DN_REQUIREMENT}: {first} / {last}"


def _run(cmd: list[str], *, timeout: float, what: str, env: dict[str, str] | None = None) -> None:
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired as exc:
        raise DnInstallFailed(f"{what}: timed out after {timeout:.0f}s") from exc
    if done.returncode != 0:
        tail = "\n".join((done.stderr + done.stdout).strip().splitlines()[-15:])
        raise DnInstallFailed(f"{what} failed (exit {done.returncode}):\n{tail}")


# ---- the live server ----


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def assay_command() -> list[str]:
    """The `assay` console script of this interpreter's environment."""
    script = Path(sys.executable).with_name("assay")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "from app.cli import main; main()"]


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ASSAY_", "DREADNODE_"))}
    env.update(extra)
    return env


@dataclass
class Tenant:
    org: str
    workspace: str
    user_id: str
    api_key: str


class LiveServer:
    """`assay serve` on a free loopback port over a migrated, bootstrapped SQLite file."""

    def __init__(
        self,
        workdir: Path,
        *,
        org: str = "demo",
        workspace: str = "main",
        env: dict[str, str] | None = None,
    ) -> None:
        self.workdir = workdir
        # ASSAY_* settings of the server that override the defaults below (a worker, an
        # endpoint, log format).
        self.extra_env = dict(env or {})
        self.database_url = f"sqlite+aiosqlite:///{workdir / 'assay.db'}"
        self.log_path = workdir / "server.log"
        self.org = org
        self.workspace = workspace
        self.port = 0
        self.tenant: Tenant | None = None
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def prepare(self) -> Tenant:
        env = _clean_env()
        cli = assay_command()
        subprocess.run(
            [*cli, "db", "upgrade", "--database-url", self.database_url],
            check=True,
            capture_output=True,
            timeout=120,
            env=env,
        )
        done = subprocess.run(
            [
                *cli,
                "admin",
                "bootstrap",
                "--org",
                self.org,
                "--workspace",
                self.workspace,
                "--email",
                "demo@example.com",
                "--database-url",
                self.database_url,
                "--json",
            ],
            check=True,
            capture_output=True,
            text=True,
            timeout=120,
            env=env,
        )
        data = json.loads(done.stdout)
        self.tenant = Tenant(
            org=data["org"],
            workspace=data["workspace"],
            user_id=data["user_id"],
            api_key=data["api_key"],
        )
        return self.tenant

    def start(self, *, attempts: int = 3, timeout: float = 60.0) -> None:
        last = ""
        for _ in range(attempts):
            self.port = free_port()
            defaults = {
                "ASSAY_DATABASE_URL": self.database_url,
                "ASSAY_RATE_LIMIT": "0",
                "ASSAY_LOG_LEVEL": "WARNING",
                # No in-process worker: evaluations stay queued, so cancel always has work.
                "ASSAY_WORKERS": "0",
                # `--model` alone picks the openai agent, which create refuses without an
                # endpoint; nothing ever calls this one (no worker runs).
                "ASSAY_OPENAI_BASE_URL": "http://127.0.0.1:9/v1",
                "ASSAY_BUNDLE_CACHE": str(self.workdir / "bundles"),
                "ASSAY_SANDBOX_ROOT": str(self.workdir / "sandboxes"),
            }
            env = _clean_env(**{**defaults, **self.extra_env})
            with self.log_path.open("ab") as log:
                self._process = subprocess.Popen(
                    [*assay_command(), "serve", "--port", str(self.port)],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=env,
                    start_new_session=True,
                )
            if self._wait_healthy(timeout):
                return
            last = self.log_tail()
            self.stop()  # most likely someone took the port between probe and bind: try another
        raise RuntimeError(f"assay serve did not become healthy; its log ends with:\n{last}")

    def _wait_healthy(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self._process is not None
            if self._process.poll() is not None:
                return False
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=2) as response:
                    if response.status == 200:
                        return True
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.1)
        return False

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=15)

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    # A plain HTTP client for checking what the client did, straight from the API.
    def api(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        assert self.tenant is not None
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(
            f"{self.url}/api/v1/org/{self.org}/ws/{self.workspace}{path}",
            data=data,
            method=method,
            headers={"X-API-Key": self.tenant.api_key, "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, json.loads(response.read() or b"null")
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read() or b"null")


@dataclass
class DnResult:
    args: list[str]
    returncode: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr

    def json(self) -> Any:
        """The JSON document the client printed (it may print a blank line before it)."""
        text = self.stdout
        starts = [i for i in (text.find("{"), text.find("[")) if i >= 0]
        if not starts:
            raise AssertionError(
                f"no JSON in the output of dn {' '.join(self.args)}:\n{self.output}"
            )
        return json.loads(text[min(starts) :])

    def describe(self) -> str:
        return f"dn {' '.join(self.args)} -> exit {self.returncode}\n{self.output}"


class Dn:
    """Runs the `dn` client against a server with a throw-away HOME (no profile on disk)."""

    def __init__(self, executable: Path, server: LiveServer, home: Path) -> None:
        assert server.tenant is not None
        self.executable = executable
        self.server = server
        home.mkdir(parents=True, exist_ok=True)
        self.env = _clean_env(
            HOME=str(home),
            XDG_CONFIG_HOME=str(home / ".config"),
            XDG_CACHE_HOME=str(home / ".cache"),
            XDG_DATA_HOME=str(home / ".local" / "share"),
            DREADNODE_HOME=str(home / ".dreadnode"),
            DREADNODE_SERVER=server.url,
            DREADNODE_API_KEY=server.tenant.api_key,
            DREADNODE_ORGANIZATION=server.tenant.org,
            DREADNODE_WORKSPACE=server.tenant.workspace,
            # Plain, wide output: no colour codes, no wrapping of ids and names.
            NO_COLOR="1",
            TERM="dumb",
            COLUMNS="200",
            PYTHONIOENCODING="utf-8",
        )
        self.cwd = home

    def __call__(self, *args: str, timeout: float = 120, **env: str) -> DnResult:
        done = subprocess.run(
            [str(self.executable), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**self.env, **env},
            cwd=self.cwd,
            stdin=subprocess.DEVNULL,
        )
        return DnResult(list(args), done.returncode, done.stdout, done.stderr)


def dn_or_skip() -> Path:
    """The `dn` executable for a test, or a skip with the reason where the package index is
    out of reach (a failure under CI=true, where it must run); a broken install fails."""
    import pytest

    from tests.ci import unavailable

    try:
        return ensure_dn()
    except DnUnavailable as exc:
        unavailable("the dn client", f"it cannot be installed: {exc}")
    except DnInstallFailed as exc:
        pytest.fail(f"installing the dn client failed: {exc}")
