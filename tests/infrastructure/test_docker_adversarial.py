"""A hostile agent in the docker sandbox: each test runs what an agent hunting for the answer
key, the checker, the database, other sandboxes or the host would try, and checks it fails.

Every attempt is checked to have been made (the tool exists, the command ran): a test that
passes because `unshare` is missing from the image would prove nothing.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from infrastructure.sandbox.docker import DockerSandbox, DockerSandboxProvider
from tests.infrastructure.docker_support import (
    box_fixture,
    box_with_web_fixture,
    docker_ready_fixture,
    provider_fixture,
    spec,
    web_service,
)

FIXTURES = (box_fixture, box_with_web_fixture, docker_ready_fixture, provider_fixture)

# Exit 0 when a TCP connection to $1:$2 succeeds within 3 s, else 1.
CONNECT = 'connect() { timeout 3 bash -c "exec 3<>/dev/tcp/$1/$2" 2>/dev/null; }; '
FETCH_WEB = (
    'python3 -c "import urllib.request; '
    "print(urllib.request.urlopen('http://web:8080/index.html', timeout=5).read().decode())\""
)


def outward_address() -> str:
    """The host's own address on its outward interface (a UDP connect sends no packet)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect(("192.0.2.1", 9))
        address: str = probe.getsockname()[0]
        return address


def gateways(provider: DockerSandboxProvider, box: DockerSandbox) -> list[str]:
    """The item network's gateway and docker0's: where a container finds the host."""
    found = []
    for network in (box.network, "bridge"):
        for config in provider.api.inspect_network(network)["IPAM"]["Config"] or []:
            # Some daemons leave the default bridge's Gateway out: it is then the subnet's
            # first address, as docker assigns it (docker0's address).
            gateway = config.get("Gateway") or str(
                next(ipaddress.ip_network(config["Subnet"]).hosts())
            )
            found.append(gateway)
    return found


@pytest.fixture
def host_listener() -> Iterator[int]:
    """A server on every host address (0.0.0.0), as a host service the agent must not reach."""
    server = socket.create_server(("0.0.0.0", 0))
    server.listen(16)
    try:
        yield server.getsockname()[1]
    finally:
        server.close()


async def test_agent_cannot_read_a_services_files(box_with_web: DockerSandbox) -> None:
    result = await box_with_web.run(
        "ls /srv; cat /srv/secret.txt; find / -xdev -name secret.txt 2>/dev/null; "
        "grep -rs s3cret-in-service /workspace /tmp /etc /srv; echo done",
        timeout_sec=30,
    )
    assert result.stdout == "done\n"
    assert "s3cret" not in result.stdout + result.stderr
    # The secret is there, in the service's own view.
    inside = await box_with_web.run_in_service("web", "cat /srv/secret.txt", timeout_sec=10)
    assert inside.stdout == "s3cret-in-service\n"


async def test_agent_cannot_reach_the_hosts_postgresql_or_any_host_port(
    provider: DockerSandboxProvider, box: DockerSandbox, host_listener: int
) -> None:
    own = outward_address()
    addresses = [*gateways(provider, box), own]
    assert len(addresses) == 3, addresses
    # The listener answers on the host's addresses, and `connect` does connect where something
    # listens (a server the agent starts): the refusals below are the sandbox's doing.
    for address in (own, "172.17.0.1"):
        with socket.create_connection((address, host_listener), timeout=3):
            pass
    control = await box.run(
        "python3 -m http.server 9000 --bind 127.0.0.1 >/dev/null 2>&1 & "
        + CONNECT
        + "for i in $(seq 50); do connect 127.0.0.1 9000 && exit 0; sleep 0.1; done; exit 1",
        timeout_sec=20,
    )
    assert control.exit_code == 0
    attempts = [("127.0.0.1", 5432), ("localhost", 5432)]
    attempts += [(address, port) for address in addresses for port in (5432, host_listener, 22)]
    script = CONNECT + "".join(
        f"connect {host} {port} && echo REACHED {host}:{port}; " for host, port in attempts
    )
    result = await box.run(script + "echo tried", timeout_sec=120)
    assert result.stdout == "tried\n", result.stdout


async def test_agent_cannot_reach_the_internet_by_address_or_name(box: DockerSandbox) -> None:
    result = await box.run(
        CONNECT + "connect 1.1.1.1 80 && echo REACHED-1; connect 8.8.8.8 53 && echo REACHED-2; "
        "python3 -c \"import socket; print(socket.getaddrinfo('example.com', 80))\" "
        "2>/dev/null && echo RESOLVED; echo tried",
        timeout_sec=60,
    )
    assert result.stdout == "tried\n", result.stdout


async def test_agent_cannot_reach_another_items_service(
    provider: DockerSandboxProvider, box: DockerSandbox, tmp_path: Path
) -> None:
    other = await provider.provision(spec(item_id="other-item", services=(web_service(tmp_path),)))
    try:
        service = other.services["web"]
        networks = provider.api.inspect_container(service)["NetworkSettings"]["Networks"]
        address = networks[other.network]["IPAddress"]
        assert address
        reached_by_owner = await other.run(CONNECT + f"connect {address} 8080", timeout_sec=10)
        assert reached_by_owner.exit_code == 0
        result = await box.run(
            CONNECT + f"connect {address} 8080 && echo REACHED; connect web 8080 && echo NAMED;"
            " echo tried",
            timeout_sec=30,
        )
        assert result.stdout == "tried\n", result.stdout
    finally:
        await other.destroy()


async def test_agent_runs_as_non_root_with_no_capabilities_and_no_new_privileges(
    box: DockerSandbox,
) -> None:
    result = await box.run(
        "id -u; grep -E '^(CapInh|CapPrm|CapEff|CapBnd|CapAmb|NoNewPrivs|Seccomp):' "
        "/proc/self/status | tr -s '\\t' ' '",
        timeout_sec=10,
    )
    lines = result.stdout.splitlines()
    assert lines[0] != "0" and int(lines[0]) > 0
    status = dict(line.split(": ") for line in lines[1:])
    for cap in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
        assert int(status[cap], 16) == 0, (cap, status[cap])
    assert status["NoNewPrivs"] == "1"
    assert status["Seccomp"] == "2"  # the daemon's seccomp filter is on


async def test_agent_cannot_mount_anything(box: DockerSandbox) -> None:
    result = await box.run(
        "command -v mount >/dev/null || echo NO-MOUNT-TOOL; mkdir -p /tmp/m; "
        "mount -t tmpfs none /tmp/m && echo MOUNTED; mount --bind /workspace /tmp/m && echo BOUND;"
        " mount -t proc proc /tmp/m && echo PROC; echo tried",
        timeout_sec=10,
    )
    assert result.stdout == "tried\n", result.stdout
    assert result.stderr.count("mount:") >= 3  # mount ran, and was refused


async def test_agent_cannot_create_a_user_namespace(box: DockerSandbox) -> None:
    result = await box.run(
        "command -v unshare >/dev/null || echo NO-UNSHARE; "
        "unshare -U true && echo USERNS; unshare -Ur id -u && echo ROOTMAP; "
        "python3 -c 'import ctypes, os; libc = ctypes.CDLL(None, use_errno=True); "
        "print(libc.unshare(0x10000000), ctypes.get_errno() != 0)'",
        timeout_sec=10,
    )
    assert result.stdout == "-1 True\n", result.stdout + result.stderr


async def test_a_fork_bomb_is_stopped_by_the_pids_limit_and_the_service_keeps_serving(
    provider: DockerSandboxProvider, box_with_web: DockerSandbox
) -> None:
    box = box_with_web
    limit = box.spec.max_processes
    bomb = asyncio.create_task(box.run("b() { b | b & }; b", timeout_sec=8))
    await asyncio.sleep(3)
    stats = await asyncio.to_thread(provider.api.stats, box.container, stream=False)
    assert 0 < stats["pids_stats"]["current"] <= limit
    served = await box.run_in_service(
        "web",
        "python3 -c \"import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/')\"",
        timeout_sec=10,
    )
    assert served.exit_code == 0, served.stderr
    await bomb
    await box.kill_all()
    after = await box.run(FETCH_WEB, timeout_sec=20)
    assert after.stdout == "hello from the service\n\n", after.stderr


async def test_agent_cannot_write_outside_the_workspace_and_tmp(box: DockerSandbox) -> None:
    targets = ["/x", "/etc/x", "/usr/bin/x", "/root/x", "/home/x", "/var/x", "/usr/lib/x"]
    result = await box.run(
        "".join(f"echo pwned > {t} 2>/dev/null && echo WROTE {t}; " for t in targets)
        + "echo ok > /workspace/w && echo ok > /tmp/t && echo allowed",
        timeout_sec=10,
    )
    assert result.stdout == "allowed\n", result.stdout


async def test_agent_cannot_find_the_docker_socket_or_the_hosts_processes(
    box: DockerSandbox,
) -> None:
    result = await box.run(
        "ls -la /var/run/docker.sock /run/docker.sock 2>/dev/null && echo SOCKET; "
        "find / -xdev \\( -name '*.sock' -o -name 'docker*' \\) 2>/dev/null; "
        "env | grep -i docker; ps -eo comm= | grep -E 'dockerd|containerd|postgres|python' ;"
        " echo tried",
        timeout_sec=30,
    )
    assert result.stdout == "tried\n", result.stdout


async def test_agent_cannot_signal_a_services_processes(box_with_web: DockerSandbox) -> None:
    box = box_with_web
    result = await box.run(
        "pgrep -a python3 && echo SEES-SERVICE; pkill -9 python3 && echo KILLED; "
        "kill -9 -1; echo tried",
        timeout_sec=10,
    )
    assert "SEES-SERVICE" not in result.stdout and "KILLED" not in result.stdout
    alive = await box.run_in_service("web", "pgrep -f http.server", timeout_sec=10)
    assert alive.exit_code == 0 and alive.stdout.strip()
    served = await box.run(FETCH_WEB, timeout_sec=20)
    assert served.stdout == "hello from the service\n\n", served.stderr


async def test_signalling_pid_1_does_not_end_the_sandbox_or_its_workspace(
    provider: DockerSandboxProvider, box: DockerSandbox
) -> None:
    result = await box.run(
        "echo kept > notes.txt; for sig in INT TERM HUP QUIT USR2 ALRM PIPE KILL STOP; do "
        "kill -$sig 1 || echo REFUSED-$sig; done; echo sent",
        timeout_sec=10,
    )
    assert result.stdout == "sent\n", result.stdout + result.stderr
    await asyncio.sleep(0.5)
    state = provider.api.inspect_container(box.container)["State"]
    assert state["Running"] and state["Status"] == "running"
    assert await box.get_file("notes.txt") == b"kept\n"
    assert (await box.run("echo alive", timeout_sec=10)).stdout == "alive\n"


async def test_memory_beyond_the_limit_is_refused(provider: DockerSandboxProvider) -> None:
    sandbox = await provider.provision(spec(memory_bytes=128 * 1024**2))
    try:
        result = await sandbox.run(
            'python3 -c \'b = bytearray(400 * 1024 * 1024); b[::4096] = b"x" * len(b[::4096]);'
            ' print("ALLOCATED")\'',
            timeout_sec=60,
        )
    finally:
        await sandbox.destroy()
    assert "ALLOCATED" not in result.stdout
    assert result.exit_code not in (0, None)
