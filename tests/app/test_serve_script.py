"""`scripts/serve` prints a block that works when pasted: run by bash with the real `dn`
client on PATH, it completes the demo evaluation, on a new database and on an existing one."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from tests.app.dn_client import _clean_env, free_port
from tests.app.test_dn_first_hour import dn_executable  # noqa: F401  (the fixture)

ROOT = Path(__file__).resolve().parents[2]
BLOCK = re.compile(r"^# ---- paste into another shell.*?\n(.*?)^# ---- end ----$", re.S | re.M)


@contextlib.contextmanager
def serving(tmp_path: Path, port: int) -> Iterator[str]:
    """scripts/serve on `port`; yields the block it printed once the server answers."""
    log = (tmp_path / f"serve-{time.monotonic_ns()}.log").open("w+")
    env = _clean_env(
        ASSAY_DATABASE_URL=f"sqlite+aiosqlite:///{tmp_path / 'assay.db'}",
        ASSAY_PORT=str(port),
        ASSAY_WORKERS="2",
        ASSAY_SANDBOX_ROOT=str(tmp_path / "sandboxes"),
        ASSAY_POLL_SECONDS="0.1",
        ASSAY_LOG_LEVEL="WARNING",
    )
    process = subprocess.Popen(
        ["bash", str(ROOT / "scripts" / "serve")],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None, Path(log.name).read_text()
            assert time.monotonic() < deadline, Path(log.name).read_text()
            with (
                contextlib.suppress(OSError),
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2),
            ):
                break
            time.sleep(0.2)
        printed = Path(log.name).read_text()
        found = BLOCK.search(printed)
        assert found, printed
        yield found[1]
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)
        log.close()


def run_block(block: str, dn: Path, home: Path) -> subprocess.CompletedProcess[str]:
    home.mkdir(exist_ok=True)
    env = _clean_env(
        PATH=f"{dn.parent}{os.pathsep}{os.environ['PATH']}",
        HOME=str(home),
        XDG_CONFIG_HOME=str(home / ".config"),
        NO_COLOR="1",
        TERM="dumb",
        COLUMNS="200",
    )
    return subprocess.run(
        ["bash", "-e", "-c", block],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        cwd=home,
    )


def test_the_printed_block_pasted_into_bash_completes_the_demo(
    dn_executable: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    port = free_port()
    with serving(tmp_path, port) as block:
        assert "export DREADNODE_SERVER=" in block
        assert f"127.0.0.1:{port}" in block
        first = run_block(block, dn_executable, tmp_path / "home")
    assert first.returncode == 0, first.stdout + first.stderr
    assert "completed" in first.stdout
    assert "demo" in first.stdout

    # Again on the existing database: the key line asks the database for a new key.
    with serving(tmp_path, port) as block:
        assert "admin create-key" in block
        again = run_block(block, dn_executable, tmp_path / "home2")
    assert again.returncode == 0, again.stdout + again.stderr
    assert "completed" in again.stdout
