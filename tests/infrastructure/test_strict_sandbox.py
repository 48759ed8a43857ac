"""The strict `local` sandbox: bubblewrap views per principal, with real processes and the real
kernel. What a hostile agent tries against it is in test_sandbox_adversarial.py; this module
pins the ordinary behaviour (commands, files, services, checker, limits, clean-up)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from infrastructure.sandbox.local import (
    LocalSandboxProvider,
    SandboxFileNotFound,
    StrictSandbox,
    strict_probe,
)
from infrastructure.sandbox.local.programs import exec_server
from infrastructure.sandbox.protocol import (
    WORKSPACE,
    IsolationUnavailable,
    SandboxError,
    ServiceSpec,
)
from tests.infrastructure.strict_support import (
    IDLE_VIEW,
    commands_of_uid,
    live_pids_of_uid,
    provision,
    require_root,
    spec,
    strict_provider,
)

SERVER = (
    "import functools, http.server, sys\n"
    "port = int(sys.argv[1])\n"
    "handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory='.')\n"
    "http.server.ThreadingHTTPServer(('0.0.0.0', port), handler).serve_forever()\n"
)


def web_service(context: Path, port: int = 80, secret: str = "FLAG{service-only}") -> ServiceSpec:
    context.mkdir(parents=True, exist_ok=True)
    (context / "server.py").write_text(SERVER)
    (context / "secret.txt").write_text(secret + "\n")
    return ServiceSpec(
        name="web", context=str(context), command=f"python3 server.py {port}", ports=(port,)
    )


async def uid_of(box: StrictSandbox) -> int:
    return int((await box.run("id -u", timeout_sec=10)).stdout)


# -- commands -------------------------------------------------------------------------------


async def test_run_captures_stdout_stderr_and_exit_code(tmp_path: Path) -> None:
    box = await provision(tmp_path)
    try:
        result = await box.run("echo out; echo err >&2; exit 3", timeout_sec=10)
        assert (result.exit_code, result.stdout, result.stderr) == (3, "out\n", "err\n")
        assert not result.timed_out
    finally:
        await box.destroy()


async def test_commands_run_in_the_workspace_as_an_unprivileged_uid_with_a_clean_env(
    tmp_path: Path,
) -> None:
    box = await provision(tmp_path, env={"TASK_VAR": "from-spec"})
    try:
        result = await box.run(
            'pwd; echo "$HOME"; id -u; echo "$TASK_VAR $CALL_VAR"; env | sort | cut -d= -f1',
            timeout_sec=10,
            env={"CALL_VAR": "from-call"},
        )
        lines = result.stdout.splitlines()
        assert lines[:2] == [WORKSPACE, WORKSPACE]
        assert int(lines[2]) not in (0, os.geteuid()) or os.geteuid() != 0
        assert lines[3] == "from-spec from-call"
        # Nothing of the worker's environment leaks in (no VIRTUAL_ENV, no ASSAY_*, no CI).
        names = set(lines[4:])
        assert not {n for n in names if n.startswith(("ASSAY", "VIRTUAL_ENV", "PYTEST"))}
    finally:
        await box.destroy()


async def test_stdin_is_fed_and_output_beyond_the_cap_is_truncated(tmp_path: Path) -> None:
    box = await strict_provider(tmp_path, output_limit=1000).provision(spec())
    try:
        assert (await box.run("cat", timeout_sec=10, stdin="fed\n")).stdout == "fed\n"
        result = await box.run("head -c 5000 /dev/zero | tr '\\0' x", timeout_sec=10)
        assert result.stdout.startswith("x" * 1000)
        assert "4000 more bytes not kept" in result.stdout
    finally:
        await box.destroy()


async def test_timeout_kills_the_whole_tree_including_detached_grandchildren(
    tmp_path: Path,
) -> None:
    require_root()
    box = await provision(tmp_path)
    try:
        uid = await uid_of(box)
        started = time.monotonic()
        result = await box.run(
            "sleep 300 & setsid nohup sleep 301 > /dev/null 2>&1 & (sleep 302 &) ; sleep 303",
            timeout_sec=0.5,
        )
        assert result.timed_out and result.exit_code is None
        assert time.monotonic() - started < 3
        assert commands_of_uid(uid) == IDLE_VIEW
        assert (await box.run("echo still usable", timeout_sec=10)).stdout == "still usable\n"
    finally:
        await box.destroy()


async def test_kill_all_ends_every_agent_process_and_the_next_run_gets_a_fresh_view(
    tmp_path: Path,
) -> None:
    require_root()
    box = await provision(tmp_path)
    try:
        uid = await uid_of(box)
        await box.run(
            "echo kept > notes.txt; setsid nohup sleep 1000 > /dev/null 2>&1 &", timeout_sec=10
        )
        assert len(live_pids_of_uid(uid)) >= 2
        await box.kill_all()
        assert live_pids_of_uid(uid) == []
        result = await box.run("cat notes.txt; pgrep -c sleep || true", timeout_sec=10)
        assert result.stdout == "kept\n0\n"
    finally:
        await box.destroy()


async def test_cancelling_a_run_kills_its_command_tree(tmp_path: Path) -> None:
    require_root()
    box = await provision(tmp_path)
    try:
        uid = await uid_of(box)
        task = asyncio.ensure_future(box.run("setsid sleep 500 & sleep 501", timeout_sec=60))
        await asyncio.sleep(0.5)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert commands_of_uid(uid) == IDLE_VIEW
    finally:
        await box.destroy()


# -- files ----------------------------------------------------------------------------------


async def test_files_round_trip_with_their_mode_and_owner(tmp_path: Path) -> None:
    box = await provision(tmp_path)
    try:
        await box.put_file("deep/dir/run.sh", b"echo hi\n", 0o755)
        result = await box.run("stat -c '%a %u' deep/dir/run.sh; ./deep/dir/run.sh", timeout_sec=10)
        mode, owner = result.stdout.splitlines()[0].split()
        assert mode == "755" and int(owner) == await uid_of(box)
        assert await box.get_file("deep/dir/run.sh") == b"echo hi\n"
        assert await box.get_file(f"{WORKSPACE}/deep/dir/run.sh") == b"echo hi\n"
        await box.run("echo tmp-file > /tmp/answer", timeout_sec=10)
        assert await box.get_file("/tmp/answer") == b"tmp-file\n"
        with pytest.raises(SandboxFileNotFound):
            await box.get_file("missing.txt")
    finally:
        await box.destroy()


async def test_put_tree_copies_the_folder_but_not_excluded_paths(tmp_path: Path) -> None:
    source = tmp_path / "bundle"
    (source / "checks").mkdir(parents=True)
    (source / "data.txt").write_text("data")
    (source / "task.yaml").write_text("flag: secret")
    (source / "checks" / "verify.sh").write_text("check")
    box = await provision(tmp_path / "sb")
    try:
        await box.put_tree(source, exclude=frozenset({"task.yaml", "checks"}))
        listing = await box.run("find . -type f | sort", timeout_sec=10)
        assert listing.stdout == "./data.txt\n"
    finally:
        await box.destroy()


async def test_put_tree_places_a_large_tree_with_modes_and_skips_links_and_nested_exclusions(
    tmp_path: Path,
) -> None:
    source = tmp_path / "bundle"
    for n in range(300):  # more files than one write request carries
        folder = source / "haystack" / f"d{n % 7}" / f"e{n % 3}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"file{n:03}.txt").write_text(f"content {n}\n" * (n % 5))
    (source / "run.sh").write_text("echo run\n")
    (source / "run.sh").chmod(0o750)
    (source / "checks").mkdir()
    (source / "checks" / "verify.sh").write_text("the checker")
    (source / "checks" / "public.txt").write_text("public")
    (source / "shadow").symlink_to("/etc/shadow")
    box = await provision(tmp_path / "sb")
    try:
        await box.put_tree(source, exclude=frozenset({"checks/verify.sh"}))
        listing = await box.run("find . -type f | sort; find . -type l | wc -l", timeout_sec=10)
        lines = listing.stdout.splitlines()
        assert lines[-1] == "0"  # the bundle's link was not copied, nor followed
        placed = lines[:-1]
        assert len(placed) == 302 and "./checks/public.txt" in placed
        assert "./checks/verify.sh" not in placed and "./shadow" not in placed
        assert await box.get_file("haystack/d3/e1/file010.txt") == b""
        assert await box.get_file("haystack/d4/e1/file004.txt") == b"content 4\n" * 4
        mode = await box.run("stat -c %a run.sh", timeout_sec=10)
        assert mode.stdout.strip() == "750"
    finally:
        await box.destroy()


@pytest.mark.parametrize("path", ["../outside", "/etc/passwd", "", "a/../../b", "/workspace"])
async def test_paths_outside_the_workspace_and_tmp_are_refused(tmp_path: Path, path: str) -> None:
    box = await provision(tmp_path)
    try:
        with pytest.raises(SandboxError):
            await box.get_file(path)
    finally:
        await box.destroy()


# -- services and checker -------------------------------------------------------------------


async def test_a_service_is_reachable_by_name_and_runs_as_its_own_principal(
    tmp_path: Path,
) -> None:
    require_root()
    box = await provision(tmp_path / "sb", services=(web_service(tmp_path / "web"),))
    try:
        endpoint = box.endpoints()["web"]
        assert (endpoint.host, endpoint.port, endpoint.url) == ("web", 80, "http://web:80")
        fetched = await box.run(
            "python3 -c \"import urllib.request as u; print(u.urlopen('http://web/secret.txt')"
            '.read().decode().strip())"',
            timeout_sec=10,
        )
        assert fetched.stdout == "FLAG{service-only}\n", fetched.stderr
        service_uid = int((await box.run_in_service("web", "id -u", timeout_sec=10)).stdout)
        assert service_uid != await uid_of(box)
        # The agent's kill at the end of its turn leaves the service serving.
        await box.kill_all()
        again = await box.run("(exec 3<>/dev/tcp/web/80) && echo up", timeout_sec=10)
        assert again.stdout == "up\n"
    finally:
        await box.destroy()


async def test_a_service_that_never_listens_fails_provision_with_its_log(tmp_path: Path) -> None:
    require_root()
    broken = ServiceSpec(name="db", command="echo cannot start >&2; exit 1", ports=(5432,))
    provider = strict_provider(tmp_path)
    with pytest.raises(SandboxError, match="cannot start"):
        await provider.provision(spec(services=(broken,)))
    assert provider.sandboxes() == []


async def test_the_checker_reads_the_workspace_but_cannot_change_it(tmp_path: Path) -> None:
    require_root()
    box = await provision(tmp_path)
    try:
        await box.run("echo answer > result.txt; echo private > /tmp/agent-only", timeout_sec=10)
        await box.kill_all()
        checker = await box.open_checker()
        result = await checker.run(
            "id -u; cat result.txt; echo x > result.txt || echo read-only;"
            " cat /tmp/agent-only 2>/dev/null || echo no-agent-tmp;"
            " mktemp -d > /dev/null && echo tmp",
            timeout_sec=10,
        )
        lines = result.stdout.splitlines()
        assert int(lines[0]) != await uid_of(box)
        assert lines[1:] == ["answer", "read-only", "no-agent-tmp", "tmp"]
        assert await box.get_file("result.txt") == b"answer\n"
    finally:
        await box.destroy()


# -- limits ---------------------------------------------------------------------------------


async def test_the_workspace_is_bounded_by_disk_bytes(tmp_path: Path) -> None:
    require_root()
    box = await provision(tmp_path, disk_bytes=8 * 1024**2)
    try:
        result = await box.run(
            "dd if=/dev/zero of=big bs=1M count=32 2>&1; df -k /workspace | tail -1", timeout_sec=20
        )
        assert "No space left on device" in result.stdout
        assert box.isolation["workspace_quota"] is True
    finally:
        await box.destroy()


# Forks sleeping children until fork fails; prints how many it got.
FORK_COUNTER = """python3 -c '
import os, time
n = 0
try:
    while n < 200:
        if os.fork() == 0:
            time.sleep(5)
            os._exit(0)
        n += 1
except OSError:
    pass
print(n)
'"""


async def test_memory_and_process_limits_hold(tmp_path: Path) -> None:
    require_root()
    box = await provision(tmp_path, memory_bytes=128 * 1024**2, max_processes=40)
    try:
        memory = await box.run(
            "python3 -c \"b = bytearray(512 * 1024 * 1024); print('allocated')\"", timeout_sec=20
        )
        assert "allocated" not in memory.stdout
        forks = await box.run(FORK_COUNTER, timeout_sec=20)
        assert int(forks.stdout.split()[-1]) < 40
    finally:
        await box.destroy()


# -- the end of a sandbox -------------------------------------------------------------------


async def test_destroy_removes_processes_mounts_network_cgroups_and_files(tmp_path: Path) -> None:
    require_root()
    box = await provision(tmp_path / "sb", services=(web_service(tmp_path / "web"),))
    uid = await uid_of(box)
    service_uid = int((await box.run_in_service("web", "id -u", timeout_sec=10)).stdout)
    await box.run("setsid nohup sleep 1000 > /dev/null 2>&1 &", timeout_sec=10)
    folder = Path(box.location)
    await box.destroy()
    await box.destroy()  # idempotent
    assert live_pids_of_uid(uid) == [] and live_pids_of_uid(service_uid) == []
    assert not folder.exists() and not folder.with_name(folder.name + ".netns").exists()
    assert str(folder) not in Path("/proc/self/mounts").read_text()
    assert not list(Path("/sys/fs/cgroup/pids/assay").glob(folder.name + "*"))
    assert strict_provider(tmp_path / "sb").sandboxes() == []


ORPHAN_WORKER = """
import asyncio, sys
from pathlib import Path
from infrastructure.sandbox.local import LocalSandboxProvider
from infrastructure.sandbox.protocol import SandboxSpec

async def main():
    provider = LocalSandboxProvider(Path(sys.argv[1]))
    box = await provider.provision(SandboxSpec(item_id="item", worker_id="crashed"))
    await box.run("setsid nohup sleep 1000 > /dev/null 2>&1 &", timeout_sec=10)
    print("UID", (await box.run("id -u", timeout_sec=10)).stdout.strip(), flush=True)
    await asyncio.sleep(1000)

asyncio.run(main())
"""


async def test_a_sigkilled_workers_sandbox_dies_with_it_and_is_reaped(tmp_path: Path) -> None:
    require_root()
    strict_provider(tmp_path)
    worker = subprocess.Popen(
        [sys.executable, "-c", ORPHAN_WORKER, str(tmp_path)],
        stdout=subprocess.PIPE,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert worker.stdout is not None
    line = b""
    while not line.startswith(b"UID "):  # the worker's own log lines come first
        line = worker.stdout.readline()
        assert line, "the worker exited before its sandbox ran"
    uid = int(line.split()[1])
    assert live_pids_of_uid(uid)
    worker.send_signal(signal.SIGKILL)
    worker.wait()
    # The view's server sees its control channel close and ends the view by itself.
    deadline = time.monotonic() + 5
    while live_pids_of_uid(uid) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert live_pids_of_uid(uid) == []
    provider = LocalSandboxProvider(tmp_path)
    [orphan] = provider.sandboxes()
    assert await provider.reap_orphans(frozenset({"someone-else"})) == [orphan.id]
    assert provider.sandboxes() == [] and not Path(orphan.path).exists()
    assert orphan.path not in Path("/proc/self/mounts").read_text()


# -- what the host gives --------------------------------------------------------------------


async def test_each_sandbox_records_the_isolation_it_really_got(tmp_path: Path) -> None:
    box = await provision(tmp_path)
    try:
        isolation = box.isolation
        assert isolation["level"] == "strict" and isolation["provider"] == "local"
        assert isolation["capabilities"] == "none" and isolation["no_new_privileges"] is True
        assert isolation["egress"] == "none"
    finally:
        await box.destroy()


async def test_strict_is_refused_with_the_fix_where_bubblewrap_is_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_which = strict_probe.shutil.which
    monkeypatch.setattr(
        strict_probe.shutil,
        "which",
        lambda name, path=None: None if name == "bwrap" else real_which(name, path=path),
    )
    strict_probe.probe_strict.cache_clear()
    try:
        provider = LocalSandboxProvider(tmp_path)
        reason = provider.unavailable_reason()
        assert (
            reason is not None
            and "bubblewrap" in reason
            and "ASSAY_SANDBOX_ISOLATION=weak" in reason
        )
        with pytest.raises(IsolationUnavailable):
            await provider.provision(spec())
        assert LocalSandboxProvider(tmp_path, isolation="weak").unavailable_reason() is None
    finally:
        strict_probe.probe_strict.cache_clear()


def test_the_start_up_report_names_each_strict_feature_the_host_gives(tmp_path: Path) -> None:
    report = strict_provider(tmp_path).isolation_report()
    assert report["bubblewrap_view"] and report["capabilities_dropped"]
    assert report["no_new_privileges"] and report["user_namespaces_refused"]
    root = os.geteuid() == 0
    assert report["distinct_uids"] is root and report["workspace_quota"] is root
    assert set(report) >= {"cgroup_memory", "cgroup_pids", "cgroup_cpu", "filtered_egress"}


@given(st.dictionaries(st.text(), st.one_of(st.none(), st.booleans(), st.integers(), st.text())))
def test_the_exec_servers_replies_are_json_whatever_the_text(
    message: dict[str, object],
) -> None:
    """The exec server writes its replies without the json module (its start is cheaper for
    it); whatever a command's error text holds, the worker reads back exactly that."""
    assert json.loads(exec_server.to_json(message)) == message
