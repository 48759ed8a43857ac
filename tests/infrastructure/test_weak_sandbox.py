"""The `local` sandbox provider in its weak mode (opted into with ASSAY_SANDBOX_ISOLATION=weak),
with real processes and the real kernel (no OS mocks).

Tests that depend on isolation this host may not give (PID or network namespaces) run in both
modes where it matters: "namespaces" (skipped, with the reason, when the host refuses them) and
"process-groups" (the fallback, always available). Nothing that needs a missing feature passes
silently.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from infrastructure.sandbox.local import (
    LocalSandboxProvider,
    SandboxFileNotFound,
    WeakSandbox,
    probe_isolation,
    processes,
)
from infrastructure.sandbox.protocol import (
    EgressPolicy,
    SandboxError,
    SandboxPathUnavailable,
    SandboxProvider,
    SandboxSpec,
)
from infrastructure.sandbox.registry import (
    ProviderRegistry,
    UnknownProvider,
    default_registry,
    provider_names,
)
from infrastructure.tasks import FlagFileVerification, load_catalog

REPO = Path(__file__).resolve().parents[2]
ISOLATION = probe_isolation()
MODES = ["namespaces", "process-groups"]


def heartbeat(name: str) -> str:
    """A shell loop that rewrites `name` with the time every 50 ms, for as long as it lives."""
    return f"while :; do date +%s%N > {name}; sleep 0.05; done"


def make_provider(root: Path, mode: str) -> LocalSandboxProvider:
    if mode == "namespaces" and not ISOLATION.pid_namespace:
        pytest.skip("this host gives no PID namespace: " + repr(ISOLATION.report()))
    return LocalSandboxProvider(root, isolation="weak", namespaces=mode == "namespaces")


def spec(**fields: object) -> SandboxSpec:
    values: dict[str, object] = {"item_id": "item-1", "worker_id": "worker-1"} | fields
    return SandboxSpec(**values)  # type: ignore[arg-type]


@pytest.fixture(params=MODES)
def mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def sandbox(tmp_path: Path) -> AsyncIterator[WeakSandbox]:
    provider = LocalSandboxProvider(tmp_path / "sandboxes", isolation="weak")
    box = await provider.provision(spec(env={"TASK_VAR": "from-spec"}))
    yield box
    await box.destroy()


def processes_in(directory: Path) -> list[int]:
    """Live (non-zombie) processes whose working directory is inside `directory`, even after
    the directory was removed (the kernel then shows it as '<path> (deleted)')."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cwd = os.readlink(f"/proc/{entry}/cwd")
            with open(f"/proc/{entry}/stat") as handle:
                state = handle.read().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if cwd.startswith(str(directory)) and state not in ("Z", "X"):
            found.append(int(entry))
    return found


async def beating(path: Path, window: float = 0.3) -> bool:
    """Whether the heartbeat file at `path` changes within `window` seconds."""
    before = path.read_bytes() if path.exists() else b""
    await asyncio.sleep(window)
    return path.exists() and path.read_bytes() != before


async def eventually_quiet(directory: Path, beats: list[Path], within: float) -> float:
    """Wait until no heartbeat changes and no process runs in `directory`; return how long."""
    start = time.monotonic()
    while time.monotonic() - start < within:
        if not processes_in(directory) and not any([await beating(b, 0.2) for b in beats]):
            return time.monotonic() - start
        await asyncio.sleep(0.05)
    raise AssertionError(f"still running after {within}s: {processes_in(directory)}")


# -- running commands -----------------------------------------------------------------------


async def test_run_captures_stdout_stderr_and_exit_code(sandbox: WeakSandbox) -> None:
    result = await sandbox.run("echo out; echo err >&2; exit 3", timeout_sec=10)
    assert (result.exit_code, result.stdout, result.stderr) == (3, "out\n", "err\n")
    assert not result.timed_out
    assert result.duration_ms > 0


async def test_commands_run_in_the_sandbox_directory_with_bash(sandbox: WeakSandbox) -> None:
    result = await sandbox.run('pwd; echo "$HOME"; echo "$BASH_VERSION" | cut -c1', timeout_sec=10)
    assert result.stdout.splitlines()[:2] == [sandbox.location, sandbox.location]
    assert result.stdout.splitlines()[2].isdigit()


async def test_environment_is_clean_and_carries_spec_and_call_env(
    sandbox: WeakSandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ASSAY_WORKER_SECRET", "must-not-leak")
    result = await sandbox.run("env", timeout_sec=10, env={"CALL_VAR": "from-call"})
    env = dict(line.split("=", 1) for line in result.stdout.splitlines())
    assert "ASSAY_WORKER_SECRET" not in env
    assert env["TASK_VAR"] == "from-spec"
    assert env["CALL_VAR"] == "from-call"
    assert env["HOME"] == sandbox.location
    assert env["LANG"] == "C.UTF-8"
    assert ".venv" not in env["PATH"]


async def test_call_env_overrides_spec_env(sandbox: WeakSandbox) -> None:
    result = await sandbox.run('echo "$TASK_VAR"', timeout_sec=10, env={"TASK_VAR": "override"})
    assert result.stdout == "override\n"


async def test_stdin_is_fed_to_the_command(sandbox: WeakSandbox) -> None:
    result = await sandbox.run("tr a-z A-Z", timeout_sec=10, stdin="hello\n")
    assert result.stdout == "HELLO\n"


async def test_output_beyond_the_cap_is_truncated_with_a_note(tmp_path: Path) -> None:
    provider = LocalSandboxProvider(tmp_path, isolation="weak", output_limit=1000)
    box = await provider.provision(spec())
    try:
        result = await box.run("head -c 50000 /dev/zero | tr '\\0' a", timeout_sec=10)
    finally:
        await box.destroy()
    assert result.exit_code == 0
    assert result.stdout.startswith("a" * 1000)
    assert "truncated, 49000 more bytes" in result.stdout


async def test_a_background_child_holding_the_output_does_not_hold_up_the_result(
    sandbox: WeakSandbox,
) -> None:
    start = time.monotonic()
    result = await sandbox.run("sleep 20 & echo started", timeout_sec=10)
    assert (result.exit_code, result.stdout, result.timed_out) == (0, "started\n", False)
    assert time.monotonic() - start < 2


# -- deadline and killing -------------------------------------------------------------------


async def test_timeout_kills_the_whole_tree_including_detached_grandchildren_within_2s(
    tmp_path: Path, mode: str
) -> None:
    box = await make_provider(tmp_path, mode).provision(spec())
    # One grandchild detached with setsid + nohup, one double-forked (its parent exits at once,
    # so it is orphaned), both out of the command's process group, both beating.
    command = (
        f"setsid nohup bash -c '{heartbeat('hb1')}' >/dev/null 2>&1 & "
        f"(setsid bash -c '{heartbeat('hb2')}' >/dev/null 2>&1 &); "
        "sleep 30"
    )
    try:
        start = time.monotonic()
        result = await box.run(command, timeout_sec=1.5)
        returned = time.monotonic() - start
        assert result.timed_out and result.exit_code is None
        assert returned < 1.5 + 2
        beats = [box.path / "hb1", box.path / "hb2"]
        assert all(b.exists() for b in beats), "the grandchildren never ran"
        quiet_after = returned + await eventually_quiet(box.path, beats, within=2)
        assert quiet_after < 1.5 + 2
    finally:
        await box.destroy()


async def test_timeout_kills_only_that_commands_tree_not_servers_started_before(
    tmp_path: Path, mode: str
) -> None:
    box = await make_provider(tmp_path, mode).provision(spec())
    try:
        await box.run(f"nohup bash -c '{heartbeat('server')}' >/dev/null 2>&1 &", timeout_sec=10)
        result = await box.run(
            f"(setsid bash -c '{heartbeat('mine')}' >/dev/null 2>&1 &); sleep 30", timeout_sec=1
        )
        assert result.timed_out
        assert not await beating(box.path / "mine")
        assert await beating(box.path / "server")
    finally:
        await box.destroy()


async def test_kill_all_stops_background_processes_and_running_commands_within_5s(
    tmp_path: Path, mode: str
) -> None:
    box = await make_provider(tmp_path, mode).provision(spec())
    try:
        await box.run(f"setsid nohup bash -c '{heartbeat('hb')}' >/dev/null 2>&1 &", timeout_sec=10)
        running = asyncio.create_task(box.run("sleep 60", timeout_sec=60))
        await asyncio.sleep(0.3)
        assert await beating(box.path / "hb")
        start = time.monotonic()
        await box.kill_all()
        result = await asyncio.wait_for(running, 5)
        assert result.exit_code != 0
        await eventually_quiet(box.path, [box.path / "hb"], within=5 - (time.monotonic() - start))
        # The sandbox stays usable (fresh namespaces) until it is destroyed.
        assert (await box.run("echo again", timeout_sec=10)).stdout == "again\n"
        await box.kill_all()  # idempotent
    finally:
        await box.destroy()


async def test_cancelling_a_run_kills_its_command_tree(tmp_path: Path, mode: str) -> None:
    box = await make_provider(tmp_path, mode).provision(spec())
    try:
        task = asyncio.create_task(
            box.run(
                f"(setsid bash -c '{heartbeat('hb')}' >/dev/null 2>&1 &); sleep 60", timeout_sec=60
            )
        )
        await asyncio.sleep(0.5)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await eventually_quiet(box.path, [box.path / "hb"], within=2)
    finally:
        await box.destroy()


async def test_destroy_kills_everything_removes_the_directory_and_is_idempotent(
    tmp_path: Path,
) -> None:
    provider = LocalSandboxProvider(tmp_path, isolation="weak")
    box = await provider.provision(spec())
    await box.run(f"nohup bash -c '{heartbeat('hb')}' >/dev/null 2>&1 &", timeout_sec=10)
    await box.destroy()
    assert not box.path.exists()
    assert provider.sandboxes() == []
    assert processes_in(box.path) == []
    await box.destroy()
    with pytest.raises(SandboxError):
        await box.run("true", timeout_sec=5)


# -- network --------------------------------------------------------------------------------


async def test_without_network_only_the_sandboxs_own_loopback_is_reachable(
    tmp_path: Path,
) -> None:
    if not ISOLATION.net_namespace:
        pytest.skip("this host gives no network namespace: " + repr(ISOLATION.report()))
    box = await LocalSandboxProvider(tmp_path, isolation="weak").provision(spec())
    host_listener = socket.create_server(("127.0.0.1", 0))
    host_port = host_listener.getsockname()[1]
    connect = "import socket,sys; socket.create_connection((sys.argv[1], int(sys.argv[2])), 3)"
    try:
        await box.put_file("hello.txt", b"hello from the sandbox\n")
        started = await box.run(
            "nohup python3 -m http.server 8000 --bind 127.0.0.1 >server.log 2>&1 </dev/null &\n"
            "for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/8000) 2>/dev/null && exit 0;"
            " sleep 0.05; done; exit 1",
            timeout_sec=10,
        )
        assert started.exit_code == 0, started
        # A second run of the same sandbox shares its loopback.
        fetched = await box.run(
            'python3 -c "import urllib.request as u;'
            " print(u.urlopen('http://127.0.0.1:8000/hello.txt', timeout=5).read().decode())\"",
            timeout_sec=10,
        )
        assert fetched.stdout.strip() == "hello from the sandbox", fetched
        outside = await box.run(f"python3 -c '{connect}' 192.0.2.1 80", timeout_sec=10)
        assert outside.exit_code != 0 and "unreachable" in outside.stderr, outside
        assert outside.duration_ms < 2000
        # The host's loopback is another interface: a host server is not reachable.
        host = await box.run(f"python3 -c '{connect}' 127.0.0.1 {host_port}", timeout_sec=10)
        assert host.exit_code != 0 and "refused" in host.stderr, host
    finally:
        host_listener.close()
        await box.destroy()


async def test_with_network_the_hosts_network_is_reachable(tmp_path: Path) -> None:
    box = await LocalSandboxProvider(tmp_path, isolation="weak").provision(
        spec(egress=EgressPolicy(("*",)))
    )
    host_listener = socket.create_server(("127.0.0.1", 0))
    port = host_listener.getsockname()[1]
    try:
        result = await box.run(
            f"python3 -c 'import socket; socket.create_connection((\"127.0.0.1\", {port}), 3)'",
            timeout_sec=10,
        )
        assert result.exit_code == 0, result
    finally:
        host_listener.close()
        await box.destroy()


# -- resource limits ------------------------------------------------------------------------


def require_rlimits() -> None:
    if not ISOLATION.rlimits:
        pytest.skip("rlimits could not be applied on this host: " + repr(ISOLATION.report()))


async def test_memory_limit_makes_a_big_allocation_fail(tmp_path: Path) -> None:
    require_rlimits()
    box = await LocalSandboxProvider(tmp_path, isolation="weak").provision(
        spec(memory_bytes=256 * 1024**2)
    )
    try:
        small = await box.run("python3 -c 'bytearray(16 * 1024**2)'", timeout_sec=10)
        big = await box.run("python3 -c 'bytearray(1024**3)'", timeout_sec=10)
    finally:
        await box.destroy()
    assert small.exit_code == 0, small
    assert big.exit_code != 0 and "MemoryError" in big.stderr, big


async def test_file_size_limit_stops_a_big_write(tmp_path: Path) -> None:
    require_rlimits()
    box = await LocalSandboxProvider(tmp_path, isolation="weak").provision(
        spec(file_size_bytes=1024**2)
    )
    try:
        result = await box.run("head -c 5000000 /dev/zero > big; echo $?", timeout_sec=10)
        size = (box.path / "big").stat().st_size
    finally:
        await box.destroy()
    assert result.stdout.strip() == str(128 + signal.SIGXFSZ), result
    assert size <= 1024**2


async def test_cpu_limit_kills_a_busy_loop(tmp_path: Path) -> None:
    require_rlimits()
    box = await LocalSandboxProvider(tmp_path, isolation="weak").provision(spec(cpu_seconds=1))
    try:
        result = await box.run("python3 -c 'while True: pass'; echo $?", timeout_sec=15)
    finally:
        await box.destroy()
    assert result.stdout.strip() == str(128 + signal.SIGXCPU), result
    assert result.duration_ms < 5000


async def test_core_dumps_are_disabled(sandbox: WeakSandbox) -> None:
    require_rlimits()
    assert (await sandbox.run("ulimit -c", timeout_sec=10)).stdout == "0\n"


# -- files ----------------------------------------------------------------------------------


async def test_put_tree_copies_files_with_their_modes_but_not_excluded_ones(
    sandbox: WeakSandbox, tmp_path: Path
) -> None:
    bundle = tmp_path / "bundle"
    (bundle / "data").mkdir(parents=True)
    (bundle / "checks").mkdir()
    (bundle / "run.sh").write_text("#!/bin/sh\necho ran\n")
    (bundle / "run.sh").chmod(0o755)
    (bundle / "data" / "x.txt").write_text("x")
    (bundle / ".hidden").write_text("h")
    (bundle / "task.yaml").write_text("name: t")
    (bundle / "checks" / "verify.py").write_text("secret")
    await sandbox.put_tree(bundle, exclude=frozenset({"task.yaml", "checks"}))
    assert (await sandbox.run("./run.sh", timeout_sec=10)).stdout == "ran\n"
    assert await sandbox.get_file("data/x.txt") == b"x"
    assert await sandbox.get_file(".hidden") == b"h"
    assert not (sandbox.path / "task.yaml").exists()
    assert not (sandbox.path / "checks").exists()


async def test_put_file_and_get_file_round_trip_with_mode(sandbox: WeakSandbox) -> None:
    await sandbox.put_file("deep/dir/check.sh", b"#!/bin/sh\nexit 0\n", mode=0o700)
    assert (sandbox.path / "deep/dir/check.sh").stat().st_mode & 0o777 == 0o700
    assert await sandbox.get_file("deep/dir/check.sh") == b"#!/bin/sh\nexit 0\n"
    with pytest.raises(SandboxFileNotFound):
        await sandbox.get_file("missing.txt")


@pytest.mark.parametrize(
    "path", ["../outside", "/etc/passwd", "a/../../outside", "link/hostname", "link", ""]
)
async def test_paths_escaping_the_sandbox_are_refused(sandbox: WeakSandbox, path: str) -> None:
    await sandbox.run("ln -s /etc link", timeout_sec=10)
    with pytest.raises(SandboxError, match="escapes the sandbox"):
        await sandbox.get_file(path)
    with pytest.raises(SandboxError, match="escapes the sandbox"):
        await sandbox.put_file(path, b"evil")


async def test_put_tree_of_a_missing_folder_is_a_sandbox_error(
    sandbox: WeakSandbox, tmp_path: Path
) -> None:
    with pytest.raises(SandboxError):
        await sandbox.put_tree(tmp_path / "nope")


async def test_provision_under_an_unusable_root_is_a_sandbox_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(SandboxError):
        await LocalSandboxProvider(tmp_path / "file" / "sandboxes", isolation="weak").provision(
            spec()
        )


# -- orphans --------------------------------------------------------------------------------


async def test_reap_orphans_destroys_dead_workers_sandboxes_and_leaves_live_ones(
    tmp_path: Path, mode: str
) -> None:
    first = make_provider(tmp_path, mode)
    dead = await first.provision(spec(worker_id="worker-dead"))
    live = await first.provision(spec(worker_id="worker-live"))
    kept = await first.provision(spec(worker_id="worker-dead", item_id="item-kept"))
    for box in (dead, live):
        await box.run(f"setsid nohup bash -c '{heartbeat('hb')}' >/dev/null 2>&1 &", timeout_sec=10)
    await kept.keep()
    try:
        # What a worker starting up later does (its own provider, same root).
        reaped = await make_provider(tmp_path, mode).reap_orphans(frozenset({"worker-live"}))
        assert reaped == [dead.id]
        assert not dead.path.exists()
        assert processes_in(dead.path) == []
        assert live.path.exists() and await beating(live.path / "hb")
        assert kept.path.exists()
        assert {meta.id for meta in first.sandboxes()} == {live.id, kept.id}
    finally:
        await live.destroy()
        await kept.destroy()


WORKER = """
import asyncio, sys
from pathlib import Path
from infrastructure.sandbox.local import LocalSandboxProvider
from infrastructure.sandbox.protocol import SandboxSpec

async def main() -> None:
    provider = LocalSandboxProvider(
        Path(sys.argv[1]), isolation="weak", namespaces=sys.argv[2] == "namespaces"
    )
    box = await provider.provision(SandboxSpec(item_id="item", worker_id="crashed"))
    await box.run(sys.argv[3], timeout_sec=10)
    print(box.location, flush=True)
    await asyncio.sleep(60)

asyncio.run(main())
"""


async def test_reap_orphans_cleans_up_after_a_worker_killed_with_sigkill(
    tmp_path: Path, mode: str
) -> None:
    provider = make_provider(tmp_path, mode)
    background = f"setsid nohup bash -c '{heartbeat('hb')}' >/dev/null 2>&1 &"
    worker = subprocess.Popen(
        [sys.executable, "-c", WORKER, str(tmp_path), mode, background],
        cwd=REPO,
        stdout=subprocess.PIPE,
    )
    assert worker.stdout is not None
    location = Path((await asyncio.to_thread(worker.stdout.readline)).decode().strip())
    assert await beating(location / "hb")
    worker.send_signal(signal.SIGKILL)
    worker.wait()
    reaped = await provider.reap_orphans(frozenset({"some-other-worker"}))
    assert reaped == [location.name]
    assert not location.exists()
    assert processes_in(location) == []


# -- a shipped task, end to end ---------------------------------------------------------------


@pytest.mark.parametrize("network", ["as-task-says", "no-network"])
async def test_path_traversal_task_is_solved_by_its_reference_solution_in_one_sandbox(
    tmp_path: Path, network: str
) -> None:
    """In the weak mode the task's service runs inside the sandbox itself (one principal), and
    the solution's answer file lands in the sandbox's own /tmp, where the worker reads it."""
    if not ISOLATION.pid_namespace:
        pytest.skip("the weak sandbox has a private /tmp only with namespaces")
    task = load_catalog().resolve("path-traversal")
    assert isinstance(task.verification, FlagFileVerification) and task.services
    # Outside /tmp: a sandbox below /tmp keeps the host's /tmp (see WeakSandbox.private_tmp).
    root = Path(tempfile.mkdtemp(prefix="assay-weak-", dir="/var/tmp"))
    provider = LocalSandboxProvider(root, isolation="weak")
    egress = EgressPolicy(("*",)) if network == "as-task-says" else None
    box = await provider.provision(spec(egress=egress, services=task.services))
    try:
        tree = task.agent_tree()
        assert tree.source is not None
        await box.put_tree(tree.source, exclude=tree.exclude)
        await box.put_file("solution.sh", (task.bundle_dir / "solution.sh").read_bytes())
        env = task.service_environment(box.endpoints())
        solved = await box.run("bash solution.sh", timeout_sec=30, env=env)
        assert solved.exit_code == 0, solved
        assert task.verification.matches(await box.get_file(task.verification.path))
    finally:
        await box.destroy()
        shutil.rmtree(root, ignore_errors=True)
    assert processes_in(box.path) == []


async def test_a_weak_sandbox_without_a_tmp_of_its_own_refuses_to_read_tmp_as_its_own(
    sandbox: WeakSandbox,
) -> None:
    """Below /tmp (pytest's tmp_path) a weak sandbox shares the host's /tmp: a file there may
    be another item's, so reading it as this item's answer is refused, saying how to fix it."""
    assert sandbox.private_tmp is None
    Path("/tmp/assay-shared-answer.txt").write_text("FLAG{someone-elses}")
    try:
        with pytest.raises(SandboxPathUnavailable, match="ASSAY_SANDBOX_ROOT outside /tmp"):
            await sandbox.get_file("/tmp/assay-shared-answer.txt")
    finally:
        Path("/tmp/assay-shared-answer.txt").unlink()


# -- isolation report and registry ----------------------------------------------------------


def test_isolation_report_says_which_isolation_this_host_gives(tmp_path: Path) -> None:
    report = LocalSandboxProvider(tmp_path, isolation="weak").isolation_report()
    print("isolation on this host:", dict(report))
    assert {"pid_namespace", "net_namespace", "rlimits", "process_groups"} <= set(report)
    assert all(isinstance(value, bool) for value in report.values())
    fallback = LocalSandboxProvider(tmp_path, isolation="weak", namespaces=False).isolation_report()
    assert not fallback["pid_namespace"] and not fallback["net_namespace"]
    assert fallback["process_groups"]


def test_registry_finds_the_local_provider_by_name(tmp_path: Path) -> None:
    registry = default_registry(tmp_path)
    assert "local" in provider_names()
    assert provider_names() == registry.names()  # create accepts what a worker can run
    local = registry.get("local")
    assert isinstance(local, LocalSandboxProvider) and local.root == tmp_path
    with pytest.raises(UnknownProvider) as excinfo:
        registry.get("no-such-provider")
    assert isinstance(excinfo.value, KeyError)
    assert "no-such-provider" in str(excinfo.value) and "local" in str(excinfo.value)


def test_registry_refuses_a_second_provider_of_the_same_name_unless_replacing(
    tmp_path: Path,
) -> None:
    registry = ProviderRegistry()
    provider: SandboxProvider = LocalSandboxProvider(tmp_path, isolation="weak")
    registry.register(provider)
    with pytest.raises(ValueError):
        registry.register(LocalSandboxProvider(tmp_path / "other", isolation="weak"))
    replacement = LocalSandboxProvider(tmp_path / "other", isolation="weak")
    registry.register(replacement, replace=True)
    assert registry.get("local") is replacement
    assert registry.names() == ["local"]


# ---- waiting for killed processes ----


@pytest.mark.parametrize("pidfd", [True, False], ids=["pidfd", "polling"])
async def test_waiting_for_a_killed_process_returns_once_it_exits_and_times_out_while_it_lives(
    pidfd: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not pidfd:

        def no_pidfd(pid: int) -> int:
            raise OSError("pidfd_open is not available")

        monkeypatch.setattr(processes.os, "pidfd_open", no_pidfd)
    proc = subprocess.Popen(["sleep", "30"])
    try:
        assert await processes.wait_gone([proc.pid], 0.3) is False  # alive: waits it out

        proc.kill()
        # Not reaped yet: a zombie counts as gone.
        assert await processes.wait_gone([proc.pid], 5.0) is True
    finally:
        proc.kill()
        proc.wait()
    # Reaped: the pid is gone altogether.
    assert await processes.wait_gone([proc.pid], 1.0) is True


@pytest.mark.parametrize("children_file", [True, False], ids=["children-file", "proc-scan"])
def test_the_child_of_a_process_is_found_with_or_without_the_kernels_children_file(
    children_file: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not children_file:
        real_open = open

        def no_children_file(path: str, *args: Any, **kwargs: Any) -> Any:
            if str(path).endswith("/children"):
                raise FileNotFoundError("no /proc/<pid>/task/<pid>/children on this kernel")
            return real_open(path, *args, **kwargs)

        monkeypatch.setattr(processes, "open", no_children_file, raising=False)
    parent = subprocess.Popen(["bash", "-c", "sleep 30 & echo $!; wait"], stdout=subprocess.PIPE)
    try:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        assert processes.child_of(parent.pid) == child
    finally:
        subprocess.run(["pkill", "-P", str(parent.pid)], check=False)
        parent.kill()
        parent.wait()
    assert processes.child_of(parent.pid) is None
