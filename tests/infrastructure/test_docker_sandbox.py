"""The `docker` sandbox provider against a real Docker daemon (no mocks).

Skips with the reason printed where no daemon answers; fails instead under CI=true (see
docker_support). `bash scripts/docker_up.sh` starts a daemon and builds the test image.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from infrastructure.sandbox.docker import DEFAULT_IMAGE, DockerSandbox, DockerSandboxProvider
from infrastructure.sandbox.local import SandboxFileNotFound
from infrastructure.sandbox.protocol import (
    EgressPolicy,
    SandboxError,
    SandboxProvider,
    ServiceEndpoint,
)
from infrastructure.sandbox.registry import default_registry
from infrastructure.tasks import FlagFileVerification, load_catalog
from tests.infrastructure.docker_support import (
    WORKER,
    box_fixture,
    box_with_web_fixture,
    docker_ready_fixture,
    objects_labelled,
    provider_fixture,
    spec,
    web_service,
)

FIXTURES = (box_fixture, box_with_web_fixture, docker_ready_fixture, provider_fixture)

# Processes of the agent container but PID 1, its keep-alive `sleep` (child of PID 1 in its
# group) and this very command (bash, with ps and awk as its children).
AGENT_PROCESSES = (
    "ps -eo pid=,ppid=,pgid=,comm= | "
    "awk -v me=$$ '$1 != 1 && $1 != me && $2 != me && !($2 == 1 && $3 == 1)'"
)


# -- running commands -----------------------------------------------------------------------


async def test_run_captures_stdout_stderr_and_exit_code(box: DockerSandbox) -> None:
    result = await box.run("echo out; echo err >&2; exit 3", timeout_sec=10)
    assert (result.exit_code, result.stdout, result.stderr) == (3, "out\n", "err\n")
    assert not result.timed_out
    assert result.duration_ms > 0


async def test_commands_run_as_the_agent_uid_in_the_workspace_with_bash(box: DockerSandbox) -> None:
    result = await box.run('id -u; pwd; echo "$HOME"; echo "${BASH_VERSION:0:1}"', timeout_sec=10)
    assert result.stdout.split() == ["1000", "/workspace", "/workspace", "5"]


async def test_environment_carries_spec_and_call_env_call_winning(box: DockerSandbox) -> None:
    result = await box.run(
        'echo "$TASK_VAR $CALL_VAR"', timeout_sec=10, env={"CALL_VAR": "from-call"}
    )
    assert result.stdout == "from-spec from-call\n"
    result = await box.run('echo "$TASK_VAR"', timeout_sec=10, env={"TASK_VAR": "overridden"})
    assert result.stdout == "overridden\n"


async def test_stdin_is_fed_to_the_command_and_closed(box: DockerSandbox) -> None:
    result = await box.run("cat; echo done", timeout_sec=10, stdin="line one\nline two\n")
    assert result.stdout == "line one\nline two\ndone\n"


async def test_a_large_stdin_arrives_whole(box: DockerSandbox) -> None:
    payload = "".join(f"{i:07d}\n" for i in range(250_000))  # 2 MB, many socket buffers
    result = await box.run("wc -c; echo", timeout_sec=30, stdin=payload)
    assert result.stdout.split() == [str(len(payload))]


async def test_output_beyond_the_cap_is_truncated_with_the_local_providers_note(
    docker_ready: None,
) -> None:
    small = DockerSandboxProvider(output_limit=1000)
    sandbox = await small.provision(spec())
    try:
        result = await sandbox.run(
            "head -c 5000 /dev/zero | tr '\\0' x; echo e >&2", timeout_sec=10
        )
    finally:
        await sandbox.destroy()
    assert result.stdout.startswith("x" * 1000)
    assert "[assay: output truncated, 4000 more bytes not kept]" in result.stdout
    assert result.stderr == "e\n"


async def test_timeout_kills_the_whole_tree_including_detached_children_within_3s(
    box: DockerSandbox,
) -> None:
    started = time.monotonic()
    result = await box.run(
        "sleep 300 & (setsid sleep 301 &) ; nohup sleep 302 >/dev/null 2>&1 & sleep 303",
        timeout_sec=1,
    )
    assert result.timed_out and result.exit_code is None
    assert time.monotonic() - started < 3
    left = await box.run(AGENT_PROCESSES, timeout_sec=10)
    assert left.stdout == "", left.stdout


async def test_timeout_kills_only_that_commands_tree_not_earlier_servers(
    box: DockerSandbox,
) -> None:
    await box.run("nohup sleep 1000 >/dev/null 2>&1 &", timeout_sec=10)
    result = await box.run("sleep 100", timeout_sec=1)
    assert result.timed_out
    left = await box.run("pgrep -x sleep -a | grep -c 'sleep 1000'", timeout_sec=10)
    assert left.stdout == "1\n"


async def test_cancelling_a_run_kills_its_command_tree(box: DockerSandbox) -> None:
    running = asyncio.create_task(
        box.run("sleep 300 & setsid sleep 301 & sleep 302", timeout_sec=60)
    )
    await asyncio.sleep(1)
    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await running
    for _ in range(50):
        left = await box.run(AGENT_PROCESSES, timeout_sec=10)
        if left.stdout == "":
            break
        await asyncio.sleep(0.1)
    assert left.stdout == "", left.stdout


async def test_a_background_child_holding_the_output_does_not_hold_up_the_result(
    box: DockerSandbox,
) -> None:
    started = time.monotonic()
    result = await box.run("sleep 30 & echo started", timeout_sec=20)
    assert (result.exit_code, result.stdout, result.timed_out) == (0, "started\n", False)
    assert time.monotonic() - started < 5


# -- files ------------------------------------------------------------------------------------


async def test_put_file_and_get_file_round_trip_with_mode_and_agent_ownership(
    box: DockerSandbox,
) -> None:
    await box.put_file("deep/er/file.sh", b"#!/bin/sh\necho hi\n", mode=0o755)
    assert await box.get_file("deep/er/file.sh") == b"#!/bin/sh\necho hi\n"
    assert await box.get_file("/workspace/deep/er/file.sh") == b"#!/bin/sh\necho hi\n"
    result = await box.run(
        "stat -c '%a %u' deep/er/file.sh deep; ./deep/er/file.sh", timeout_sec=10
    )
    assert result.stdout == "755 1000\n755 1000\nhi\n"


async def test_get_file_reads_what_the_agent_wrote_in_the_workspace_and_tmp(
    box: DockerSandbox,
) -> None:
    await box.run("echo flag > out.txt; echo tmpflag > /tmp/t.txt", timeout_sec=10)
    assert await box.get_file("out.txt") == b"flag\n"
    assert await box.get_file("/tmp/t.txt") == b"tmpflag\n"


async def test_get_file_of_a_missing_file_is_file_not_found(box: DockerSandbox) -> None:
    with pytest.raises(SandboxFileNotFound):
        await box.get_file("nope.txt")
    with pytest.raises(FileNotFoundError):
        await box.get_file("no/such/dir/file")


@pytest.mark.parametrize("path", ["../x", "/etc/passwd", "a/../../x", "", "/workspace/../etc/x"])
async def test_paths_escaping_the_sandbox_are_refused(box: DockerSandbox, path: str) -> None:
    with pytest.raises(SandboxError):
        await box.get_file(path)
    if not path.startswith("/"):
        with pytest.raises(SandboxError):
            await box.put_file(path, b"x")


async def test_get_file_refuses_a_symlink_planted_to_escape(box: DockerSandbox) -> None:
    await box.run(
        "ln -s /etc/passwd leak.txt; ln -s /etc etcdir; ln -s /etc /tmp/etcdir", timeout_sec=10
    )
    for path in ("leak.txt", "etcdir/passwd", "/tmp/etcdir/passwd"):
        with pytest.raises(SandboxError) as raised:
            await box.get_file(path)
        assert not isinstance(raised.value, SandboxFileNotFound), path


async def test_put_tree_copies_files_with_modes_but_not_excluded_ones(
    box: DockerSandbox, tmp_path: Path
) -> None:
    source = tmp_path / "bundle"
    (source / "checks").mkdir(parents=True)
    (source / "task.yaml").write_text("secret: answer\n")
    (source / "checks" / "verify.py").write_text("answer\n")
    (source / "run.sh").write_text("echo run\n")
    (source / "run.sh").chmod(0o750)
    (source / "data").mkdir()
    (source / "data" / "in.txt").write_text("input\n")
    await box.put_tree(source, exclude=frozenset({"task.yaml", "checks"}))
    result = await box.run("find . -type f | sort; stat -c '%a %u' run.sh", timeout_sec=10)
    assert result.stdout == "./data/in.txt\n./run.sh\n750 1000\n"


async def test_put_tree_of_a_missing_folder_is_a_sandbox_error(
    box: DockerSandbox, tmp_path: Path
) -> None:
    with pytest.raises(SandboxError):
        await box.put_tree(tmp_path / "missing")


# -- services -----------------------------------------------------------------------------------


async def test_services_are_reachable_by_name_from_the_agent(box_with_web: DockerSandbox) -> None:
    assert box_with_web.endpoints() == {"web": ServiceEndpoint(name="web", host="web", port=8080)}
    result = await box_with_web.run(
        "python3 -c \"import urllib.request; print(urllib.request.urlopen('http://web:8080/index.html').read().decode())\"",
        timeout_sec=20,
    )
    assert result.stdout == "hello from the service\n\n", result.stderr


async def test_run_in_service_runs_in_its_files_as_the_service_uid(
    box_with_web: DockerSandbox,
) -> None:
    result = await box_with_web.run_in_service("web", "id -u; pwd; cat secret.txt", timeout_sec=10)
    assert result.stdout == "1001\n/srv\ns3cret-in-service\n"
    with pytest.raises(SandboxError):
        await box_with_web.run_in_service("nope", "true", timeout_sec=10)


async def test_an_image_service_runs_the_image_as_the_service_uid_with_its_environment(
    provider: DockerSandboxProvider,
) -> None:
    from infrastructure.sandbox.protocol import ServiceSpec

    db = ServiceSpec(
        name="db",
        image=DEFAULT_IMAGE,
        command='cd /tmp && echo "$GREETING" > index.html && exec python3 -m http.server 5000',
        ports=(5000,),
        environment={"GREETING": "from-the-image-service"},
    )
    sandbox = await provider.provision(spec(services=(db,)))
    try:
        fetched = await sandbox.run(
            'python3 -c "import urllib.request; '
            "print(urllib.request.urlopen('http://db:5000/').read().decode())\"",
            timeout_sec=20,
        )
        assert fetched.stdout == "from-the-image-service\n\n", fetched.stderr
        inside = await sandbox.run_in_service(
            "db", "id -u; touch /x 2>/dev/null || echo read-only", timeout_sec=10
        )
        assert inside.stdout == "1001\nread-only\n"
    finally:
        await sandbox.destroy()


async def test_the_path_traversal_task_is_solved_by_its_reference_solution(
    provider: DockerSandboxProvider,
) -> None:
    """The shipped compose task: its `web` service names an image this daemon has never built,
    so it runs from its build context with its local command; the agent gets the server's
    source only, and the worker reads the answer file itself."""
    task = load_catalog().resolve("path-traversal")
    assert isinstance(task.verification, FlagFileVerification) and task.services
    sandbox = await provider.provision(spec(services=task.services))
    try:
        tree = task.agent_tree()
        assert tree.source is not None
        await sandbox.put_tree(tree.source, exclude=tree.exclude)
        listing = await sandbox.run("ls -A", timeout_sec=30)
        assert listing.stdout.split() == ["server.py"]
        await sandbox.put_file("solution.sh", (task.bundle_dir / "solution.sh").read_bytes())
        env = task.service_environment(sandbox.endpoints())
        solved = await sandbox.run("bash solution.sh", timeout_sec=30, env=env)
        assert solved.exit_code == 0, solved
        assert task.verification.matches(await sandbox.get_file(task.verification.path))
    finally:
        await sandbox.destroy()


async def test_provision_fails_cleanly_when_a_service_never_listens(
    docker_ready: None, tmp_path: Path
) -> None:
    from infrastructure.sandbox.protocol import ServiceSpec

    impatient = DockerSandboxProvider(service_start_sec=2)
    context = tmp_path / "ctx"
    context.mkdir()
    silent = ServiceSpec(name="silent", context=str(context), command="sleep 100", ports=(9,))
    with pytest.raises(SandboxError, match="not ready"):
        await impatient.provision(spec(item_id="item-silent", services=(silent,)))
    api = impatient.api
    leftovers = api.containers(all=True, filters={"label": "assay.item=item-silent"})
    assert leftovers == []


# -- checker ------------------------------------------------------------------------------------


async def test_checker_sees_the_workspace_read_only_as_another_uid(box: DockerSandbox) -> None:
    await box.run("echo answer > out.txt; echo private > /tmp/agent-only", timeout_sec=10)
    checker = await box.open_checker()
    result = await checker.run(
        "id -u; cat out.txt; ls /tmp; echo x > out.txt || echo refused; "
        "touch new || echo refused; echo ok > /tmp/mine && cat /tmp/mine",
        timeout_sec=10,
    )
    assert result.stdout == "1002\nanswer\nrefused\nrefused\nok\n", result.stderr
    assert await checker.get_file("out.txt") == b"answer\n"
    with pytest.raises(SandboxError):
        await checker.put_file("out.txt", b"forged")
    assert await box.get_file("out.txt") == b"answer\n"
    await checker.destroy()


# -- ending -------------------------------------------------------------------------------------


async def test_kill_all_kills_detached_processes_and_services_keep_running(
    box_with_web: DockerSandbox,
) -> None:
    sandbox = box_with_web
    await sandbox.run("setsid nohup sleep 1000 >/dev/null 2>&1 & (sleep 1001 &)", timeout_sec=10)
    before = await sandbox.run(AGENT_PROCESSES, timeout_sec=10)
    assert before.stdout.count("sleep") == 2
    running = asyncio.create_task(sandbox.run("sleep 500", timeout_sec=60))
    await asyncio.sleep(0.5)
    await sandbox.kill_all()
    result = await running
    assert result.exit_code != 0
    after = await sandbox.run(AGENT_PROCESSES, timeout_sec=10)
    assert after.stdout == ""
    served = await sandbox.run(
        "python3 -c \"import urllib.request; urllib.request.urlopen('http://web:8080/')\"",
        timeout_sec=20,
    )
    assert served.exit_code == 0, served.stderr


async def test_destroy_removes_every_labelled_object_and_is_idempotent(
    provider: DockerSandboxProvider, tmp_path: Path
) -> None:
    sandbox = await provider.provision(spec(services=(web_service(tmp_path),)))
    checker = await sandbox.open_checker()
    assert len(objects_labelled(provider, sandbox.id)) >= 7  # 3 containers, network, 4 volumes
    await sandbox.destroy()
    assert objects_labelled(provider, sandbox.id) == []
    await sandbox.destroy()
    await checker.destroy()  # after its sandbox: nothing left to do, not an error
    for view in (sandbox, checker):
        with pytest.raises(SandboxError):
            await view.run("true", timeout_sec=5)


async def test_reap_orphans_removes_dead_workers_sandboxes_but_live_and_kept_ones(
    provider: DockerSandboxProvider,
) -> None:
    dead = await provider.provision(spec(worker_id="dead-worker"))
    kept = await provider.provision(spec(worker_id="dead-worker", item_id="kept-item"))
    live = await provider.provision(spec(worker_id="live-worker"))
    try:
        await kept.run("echo evidence > notes.txt; setsid sleep 1000 &", timeout_sec=10)
        await kept.keep()
        reaped = await provider.reap_orphans(frozenset({"live-worker", WORKER}))
        assert dead.id in reaped
        assert kept.id not in reaped and live.id not in reaped
        assert objects_labelled(provider, dead.id) == []
        assert (await live.run("echo alive", timeout_sec=10)).stdout == "alive\n"
        # Kept: its processes are gone, its files are there for an operator.
        assert await kept.get_file("notes.txt") == b"evidence\n"
        assert (await kept.run(AGENT_PROCESSES, timeout_sec=10)).stdout == ""
    finally:
        for sandbox in (dead, kept, live):
            await sandbox.destroy()
    assert objects_labelled(provider, kept.id) == []


# -- provider -----------------------------------------------------------------------------------


async def test_egress_to_any_destination_is_refused_and_an_empty_allow_list_is_internal(
    provider: DockerSandboxProvider,
) -> None:
    with pytest.raises(SandboxError, match="no egress"):
        await provider.provision(spec(egress=EgressPolicy(allow=("example.com",))))
    sandbox = await provider.provision(spec(egress=EgressPolicy(allow=())))
    try:
        assert sandbox.isolation["internal_network"] is True
    finally:
        await sandbox.destroy()


async def test_isolation_records_what_every_container_runs_under(box: DockerSandbox) -> None:
    iso = box.isolation
    assert (iso["level"], iso["provider"]) == ("strict", "docker")
    for feature in (
        "capabilities_dropped",
        "no_new_privileges",
        "non_root",
        "internal_network",
        "memory_limit",
        "pids_limit",
        "cpu_limit",
        "read_only_rootfs",
    ):
        assert iso[feature] is True, feature
    inspected = box._provider.api.inspect_container(box.container)
    host = inspected["HostConfig"]
    assert host["Privileged"] is False and host["CapDrop"] == ["ALL"]
    assert host["SecurityOpt"] == ["no-new-privileges"] and host["ReadonlyRootfs"] is True
    assert host["PidsLimit"] and host["Memory"] and host["NanoCpus"]
    assert inspected["Config"]["User"] == "1000:1000"
    assert all(m["Type"] == "volume" for m in inspected["Mounts"])
    assert set(inspected["Config"]["Labels"]) >= {
        "assay.item",
        "assay.worker",
        "assay.sandbox",
        "assay.role",
    }


def test_default_registry_holds_docker_when_a_daemon_answers(docker_ready: None) -> None:
    registry = default_registry()
    found: SandboxProvider = registry.get("docker")
    assert found.name == "docker"
    assert registry.names() == ["docker", "local"]
    assert dict(found.isolation_report())["daemon"] is True


def test_constructing_the_provider_does_not_touch_the_daemon() -> None:
    unreachable = DockerSandboxProvider(base_url="unix:///nonexistent/docker.sock")
    assert unreachable._api is None
    assert unreachable.isolation_report() == {"daemon": False}
