"""Each item's network, with real namespaces, slirp4netns and nftables (no mocks of the OS).

The test builds hosts of its own: network namespaces joined to the host by veth pairs
(10.203.{1,2,3}.2, the host's ends .1), each running a tiny TCP server, named by the test's
resolver (`allowed.test`, `api.allowed.test`, `other.test`). Probes run inside the item's
namespace as an unprivileged user (uid 65534, no capabilities) with the item's resolv.conf
bound over /etc/resolv.conf, as the local provider runs sandboxes. Only addresses on this
machine are ever targeted. Every case also probes the host: 127.0.0.1:5432 (PostgreSQL), a
listener of the test's own on the host's loopback, and one on all the host's addresses.

Needs root, slirp4netns, nft, ip, nsenter, setpriv, unshare: skipped with the reason printed
where missing, failed instead under CI=true.
"""

from __future__ import annotations

import asyncio
import errno
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path

import pytest

from domain.egress import EgressRules
from infrastructure.sandbox.network import RESOLV_CONF, ItemNetwork
from infrastructure.sandbox.network.dns import DnsProxy, build_response, parse_query
from infrastructure.sandbox.network.firewall import ALWAYS_BLOCKED, HOST_TABLE_PREFIX
from infrastructure.sandbox.network.item_network import SLIRP_GID
from infrastructure.sandbox.protocol import EgressPolicy, SandboxError
from tests.ci import unavailable

TOOLS = ("slirp4netns", "nft", "ip", "nsenter", "setpriv", "unshare")
SYSTEM_PYTHON = "/usr/bin/python3"  # readable by uid 65534, unlike a virtualenv under /root
SERVER_PORT = 8080
TAG = f"aeg{os.getpid() % 100000}"  # unique per run: other sessions share this machine

# Tests that take a filter away use a group of their own for slirp4netns, so they never remove
# the guard of item networks that other tests (or other sessions) have running.
CONTROL_GID = 2_147_480_000 - os.getpid() % 100000

TEST_HOSTS = {  # name -> (address, the host's end of its veth)
    "allowed.test": ("10.203.1.2", "10.203.1.1"),
    "api.allowed.test": ("10.203.2.2", "10.203.2.1"),
    "other.test": ("10.203.3.2", "10.203.3.1"),
}
A1, A2, A3 = (TEST_HOSTS[n][0] for n in ("allowed.test", "api.allowed.test", "other.test"))


def _missing() -> str | None:
    if os.geteuid() != 0:
        return "item networks need root (namespaces, nftables)"
    absent = [tool for tool in TOOLS if shutil.which(tool) is None]
    if absent:
        return f"missing tools: {', '.join(absent)} (run scripts/sandbox_host_setup.sh)"
    if not os.access(SYSTEM_PYTHON, os.X_OK):
        return f"{SYSTEM_PYTHON} is needed to probe as an unprivileged user"
    return None


def _require_host() -> None:
    reason = _missing()
    if reason:
        unavailable("item networks", reason)


def _host_addresses() -> list[str]:
    """The host's own non-loopback IPv4 addresses, read from its local routes."""
    out = subprocess.run(
        ["ip", "-j", "-4", "route", "show", "table", "local", "type", "local"],
        capture_output=True,
        check=True,
    ).stdout
    return [r["dst"] for r in json.loads(out) if not r["dst"].startswith("127.")]


# ---- the test's own hosts -------------------------------------------------------------------

SERVER = """
import socket, sys, threading
tag = sys.argv[1].encode()
def serve(s):
    while True:
        c, _ = s.accept(); c.sendall(tag + b"\\n"); c.close()
for port in map(int, sys.argv[2:]):
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", port)); s.listen(64)  # listening before "ready" is printed
    threading.Thread(target=serve, args=(s,), daemon=True).start()
print("ready", flush=True)
sys.stdin.read()
"""


def _sh(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True)


class Listener:
    """A TCP listener on the host that greets with HOST: reaching it is a leak."""

    def __init__(self, address: str) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((address, 0))
        self.sock.listen(64)
        self.port: int = self.sock.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.sendall(b"HOST\n")


class World:
    def __init__(self) -> None:
        self.host_addresses = _host_addresses()
        self.loopback = Listener("127.0.0.1")
        self.everywhere = Listener("0.0.0.0")

    def host_targets(self) -> list[tuple[str, int]]:
        """Every way to the host the item must never have."""
        targets = [
            ("127.0.0.1", 5432),
            ("127.0.0.1", self.loopback.port),
            ("127.0.0.1", self.everywhere.port),
            ("10.0.2.2", 5432),
            ("10.0.2.2", self.loopback.port),
            ("10.0.2.2", self.everywhere.port),
        ]
        targets += [(a, self.everywhere.port) for a in self.host_addresses]
        targets += [(a, 5432) for a in self.host_addresses]
        return targets


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    _require_host()
    servers: list[subprocess.Popen[bytes]] = []
    made: list[int] = []
    try:
        for i, (name, (address, host_end)) in enumerate(TEST_HOSTS.items(), start=1):
            netns, veth_host, veth_peer = f"{TAG}-{i}", f"{TAG}h{i}", f"{TAG}p{i}"
            made.append(i)
            _sh("ip", "netns", "add", netns)
            _sh("ip", "link", "add", veth_host, "type", "veth", "peer", "name", veth_peer)
            _sh("ip", "link", "set", veth_peer, "netns", netns)
            _sh("ip", "addr", "add", f"{host_end}/24", "dev", veth_host)
            _sh("ip", "link", "set", veth_host, "up")
            ns = ("ip", "netns", "exec", netns)
            _sh(*ns, "ip", "addr", "add", f"{address}/24", "dev", veth_peer)
            _sh(*ns, "ip", "link", "set", veth_peer, "up")
            _sh(*ns, "ip", "link", "set", "lo", "up")
            server = subprocess.Popen(
                [*ns, sys.executable, "-c", SERVER, name, str(SERVER_PORT), "53"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
            )
            servers.append(server)
            assert server.stdout is not None and server.stdout.readline() == b"ready\n"
            # The host reaches each test host directly: that is the route slirp4netns uses.
            with socket.create_connection((address, SERVER_PORT), timeout=3) as c:
                assert c.recv(64) == name.encode() + b"\n"
        w = World()
        for address in w.host_addresses:
            with socket.create_connection((address, w.everywhere.port), timeout=3) as c:
                assert c.recv(64) == b"HOST\n"  # live, so failing to reach it means blocked
        yield w
    finally:
        subprocess.run(
            ["nft", "delete", "table", "inet", f"{HOST_TABLE_PREFIX}{CONTROL_GID}"],
            capture_output=True,
        )
        for server in servers:
            server.kill()
            server.wait()
        for i in made:
            subprocess.run(["ip", "link", "del", f"{TAG}h{i}"], capture_output=True)
            subprocess.run(["ip", "netns", "del", f"{TAG}-{i}"], capture_output=True)


async def test_resolver(name: str) -> list[str]:
    addresses = {n: [a] for n, (a, _) in TEST_HOSTS.items()}
    addresses["host.test"] = [*_host_addresses()[:1], "10.0.2.2", "127.0.0.1"]
    if name not in addresses:
        raise socket.gaierror(socket.EAI_NONAME, "unknown")
    return addresses[name]


test_resolver.__test__ = False  # type: ignore[attr-defined]  # a helper, not a test


# ---- probing from inside an item -----------------------------------------------------------

PROBE = """
import json, socket, sys
out = []
for action in json.loads(sys.argv[1]):
    kind = action[0]
    try:
        if kind == "connect":
            with socket.create_connection((action[1], action[2]), timeout=3) as c:
                c.settimeout(3)
                out.append("ok:" + c.recv(64).decode().strip())
        elif kind == "resolve":
            infos = socket.getaddrinfo(action[1], 80, socket.AF_INET, socket.SOCK_STREAM)
            out.append(sorted({i[4][0] for i in infos}))
        elif kind == "run":
            import subprocess
            done = subprocess.run(action[1:], capture_output=True)
            out.append(f"exit:{done.returncode}")
        elif kind == "bind-udp":
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((action[1], action[2]))
            out.append("ok:bound")
        elif kind == "listen80":
            s = socket.socket(); s.bind(("127.0.0.1", 80)); s.listen(1)
            with socket.create_connection(("127.0.0.1", 80), timeout=3):
                out.append("ok:listen80")
    except socket.gaierror as e:
        out.append("nxdomain" if e.errno in (socket.EAI_NONAME, -5) else f"gaierror:{e.errno}")
    except socket.timeout:
        out.append("timeout")
    except OSError as e:
        out.append(f"fail:{e.errno}")
print(json.dumps(out))
"""

Action = tuple[str, ...] | tuple[str, str, int]


async def probe(network: ItemNetwork, actions: Sequence[Action]) -> list[object]:
    """Run the actions in the item's namespace as uid 65534 with the item's resolv.conf."""
    resolv = Path(network.netns_path).with_suffix(".resolv.conf")
    resolv.write_bytes(network.resolv_conf)
    resolv.chmod(0o644)
    inner = (
        f"mount --bind {resolv} /etc/resolv.conf && exec setpriv --reuid=65534 --regid=65534"
        f' --clear-groups --inh-caps=-all --bounding-set=-all -- {SYSTEM_PYTHON} -c "$0" "$1"'
    )
    proc = await asyncio.create_subprocess_exec(
        *("nsenter", f"--net={network.netns_path}", "--", "unshare", "--mount"),
        *("--propagation", "private", "--", "sh", "-c", inner, PROBE, json.dumps(actions)),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    # Awaited, not run blocking: the item's DNS service answers from this very event loop.
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    resolv.unlink()
    assert proc.returncode == 0, err.decode()
    result: list[object] = json.loads(out)
    return result


def ok(name: str) -> str:
    return f"ok:{name}"


async def assert_host_unreachable(network: ItemNetwork, world: World) -> None:
    targets = world.host_targets()
    results = await probe(network, [("connect", a, p) for a, p in targets])
    leaks = [(t, r) for t, r in zip(targets, results, strict=True) if str(r).startswith("ok")]
    assert not leaks, f"the host was reachable: {leaks}"
    assert all(str(r).startswith("fail:") for r in results), results  # refused, not hung


@pytest.fixture
async def make(tmp_path: Path, world: World) -> AsyncIterator[list[ItemNetwork]]:
    networks: list[ItemNetwork] = []
    yield networks
    for network in networks:
        await network.destroy()


async def create(
    made: list[ItemNetwork],
    root: Path,
    allow: tuple[str, ...] | None,
    name: str = "item",
    slirp_gid: int = SLIRP_GID,
) -> ItemNetwork:
    egress = None if allow is None else EgressPolicy(allow)
    network = await ItemNetwork.create(
        root, name, egress, worker_id="w-test", resolver=test_resolver, slirp_gid=slirp_gid
    )
    made.append(network)
    return network


def _links(network: ItemNetwork) -> list[str]:
    out = subprocess.run(
        ["nsenter", f"--net={network.netns_path}", "ip", "-j", "link"],
        capture_output=True,
        check=True,
    ).stdout
    return sorted(link["ifname"] for link in json.loads(out))


ALL_TEST_HOSTS: list[Action] = [("connect", a, SERVER_PORT) for a in (A1, A2, A3)]
ALL_NAMES: list[Action] = [("resolve", n) for n in TEST_HOSTS]


# ---- the cases -----------------------------------------------------------------------------


@pytest.mark.parametrize("allow", [None, ()], ids=["no-policy", "empty-policy"])
async def test_without_a_policy_only_loopback(
    allow: tuple[str, ...] | None, make: list[ItemNetwork], tmp_path: Path, world: World
) -> None:
    network = await create(make, tmp_path, allow)
    assert _links(network) == ["lo"]
    results = await probe(network, [("listen80",), *ALL_TEST_HOSTS, *ALL_NAMES])
    assert results[0] == ok("listen80")  # loopback works; unprivileged port 80 too
    assert all(str(r).startswith("fail:") for r in results[1:4]), results
    assert results[4:] == ["nxdomain"] * 3
    await assert_host_unreachable(network, world)


async def test_an_ip_rule_allows_that_address_only(
    make: list[ItemNetwork], tmp_path: Path, world: World
) -> None:
    network = await create(make, tmp_path, (A3,))
    assert _links(network) == ["lo", "tap0"]
    results = await probe(network, [*ALL_TEST_HOSTS, *ALL_NAMES, ("listen80",)])
    assert results[2] == ok("other.test")
    assert str(results[0]).startswith("fail:") and str(results[1]).startswith("fail:")
    assert results[3:6] == ["nxdomain"] * 3  # no name rule: no name resolves
    assert results[6] == ok("listen80")
    await assert_host_unreachable(network, world)


async def test_a_cidr_rule_allows_its_network_but_never_the_host_in_it(
    make: list[ItemNetwork], tmp_path: Path, world: World
) -> None:
    network = await create(make, tmp_path, ("10.203.2.0/24",))
    host_end = TEST_HOSTS["api.allowed.test"][1]  # the host's own address inside the CIDR
    results = await probe(network, [*ALL_TEST_HOSTS, ("connect", host_end, world.everywhere.port)])
    assert results[1] == ok("api.allowed.test")
    assert str(results[0]).startswith("fail:") and str(results[2]).startswith("fail:")
    assert str(results[3]).startswith("fail:")
    await assert_host_unreachable(network, world)


async def test_an_fqdn_rule_resolves_and_opens_only_that_name(
    make: list[ItemNetwork], tmp_path: Path, world: World
) -> None:
    network = await create(make, tmp_path, ("allowed.test",))
    results = await probe(
        network,
        [
            ("connect", A1, SERVER_PORT),  # not resolved yet: closed
            ("resolve", "allowed.test"),
            ("connect", "allowed.test", SERVER_PORT),
            ("connect", A1, SERVER_PORT),  # resolved: open
            ("resolve", "api.allowed.test"),
            ("resolve", "other.test"),
            ("resolve", "example.com"),
            ("connect", A2, SERVER_PORT),
            ("connect", A3, SERVER_PORT),
            ("connect", A1, 53),  # DNS only through the item's own service
        ],
    )
    assert str(results[0]).startswith("fail:")
    assert results[1] == [A1]
    assert results[2] == ok("allowed.test") and results[3] == ok("allowed.test")
    assert results[4:7] == ["nxdomain"] * 3
    assert all(str(r).startswith("fail:") for r in results[7:]), results
    await assert_host_unreachable(network, world)


async def test_a_suffix_rule_matches_names_below_it_only(
    make: list[ItemNetwork], tmp_path: Path, world: World
) -> None:
    network = await create(make, tmp_path, ("*.allowed.test",))
    results = await probe(
        network,
        [
            ("resolve", "api.allowed.test"),
            ("connect", "api.allowed.test", SERVER_PORT),
            ("resolve", "allowed.test"),
            ("resolve", "other.test"),
            ("connect", A1, SERVER_PORT),
            ("connect", A3, SERVER_PORT),
        ],
    )
    assert results[0] == [A2]
    assert results[1] == ok("api.allowed.test")
    assert results[2:4] == ["nxdomain", "nxdomain"]
    assert all(str(r).startswith("fail:") for r in results[4:]), results
    await assert_host_unreachable(network, world)


async def test_star_reaches_everything_but_the_host(
    make: list[ItemNetwork], tmp_path: Path, world: World
) -> None:
    network = await create(make, tmp_path, ("*",))
    results = await probe(
        network,
        [
            *ALL_TEST_HOSTS,
            ("resolve", "other.test"),
            ("resolve", "host.test"),  # a name that resolves to the host gets no address
            ("connect", A1, 53),  # DNS to anyone but the item's service: refused
        ],
    )
    assert results[:3] == [ok("allowed.test"), ok("api.allowed.test"), ok("other.test")]
    assert results[3] == [A3]
    assert results[4] == "nxdomain"
    assert str(results[5]).startswith("fail:")
    await assert_host_unreachable(network, world)


async def test_rules_naming_the_host_never_reach_it(
    make: list[ItemNetwork], tmp_path: Path, world: World
) -> None:
    allow = ("*", "10.0.2.2", "10.0.2.0/24", "127.0.0.1", "host.test", *world.host_addresses)
    network = await create(make, tmp_path, allow)
    results = await probe(network, [("resolve", "host.test")])
    assert not isinstance(results[0], list), results
    await assert_host_unreachable(network, world)


async def test_an_address_the_host_gains_later_is_unreachable_too(
    make: list[ItemNetwork], tmp_path: Path, world: World
) -> None:
    """The item's own filter holds the host's addresses at create time; the host-side guard
    refuses slirp4netns the host's addresses as they are when it connects."""
    # A group of its own, so the guard is the one this create installed, not one left over.
    network = await create(make, tmp_path, ("*",), slirp_gid=CONTROL_GID)
    late, veth = "10.203.9.1", f"{TAG}h1"
    _sh("ip", "addr", "add", f"{late}/32", "dev", veth)
    try:
        with socket.create_connection((late, world.everywhere.port), timeout=3) as c:
            assert c.recv(64) == b"HOST\n"  # the host answers there now
        results = await probe(network, [("connect", late, world.everywhere.port)])
        # slirp4netns gets the refusal but does not pass it on: the sandbox times out.
        assert results[0] in ("timeout", f"fail:{errno.ETIMEDOUT}"), results
    finally:
        _sh("ip", "addr", "del", f"{late}/32", "dev", veth)


async def test_the_probe_sees_a_leak_when_the_filters_are_gone(
    make: list[ItemNetwork], tmp_path: Path, world: World
) -> None:
    """Control: without the filters the host's addresses are reachable through slirp4netns, so
    the probes above would catch a filter that let the host through. Each filter alone holds."""
    network = await create(make, tmp_path, ("*",), slirp_gid=CONTROL_GID)
    target: list[Action] = [("connect", world.host_addresses[0], world.everywhere.port)]
    nsenter = ("nsenter", f"--net={network.netns_path}")
    _sh(*nsenter, "nft", "delete", "table", "inet", "assay_egress")
    assert (await probe(network, target))[0] == "timeout"  # the host guard holds
    _sh("nft", "delete", "table", "inet", f"{HOST_TABLE_PREFIX}{CONTROL_GID}")
    assert await probe(network, target) == [ok("HOST")]


async def test_the_item_filter_alone_holds_the_host(
    make: list[ItemNetwork], tmp_path: Path, world: World
) -> None:
    network = await create(make, tmp_path, ("*",), slirp_gid=CONTROL_GID)
    _sh("nft", "delete", "table", "inet", f"{HOST_TABLE_PREFIX}{CONTROL_GID}")
    await assert_host_unreachable(network, world)


async def test_a_missing_host_guard_is_loaded_again(
    make: list[ItemNetwork], tmp_path: Path, world: World
) -> None:
    table = ("nft", "list", "table", "inet", f"{HOST_TABLE_PREFIX}{CONTROL_GID}")
    await create(make, tmp_path, (A1,), name="first", slirp_gid=CONTROL_GID)
    _sh("nft", "delete", "table", "inet", f"{HOST_TABLE_PREFIX}{CONTROL_GID}")
    assert subprocess.run(table, capture_output=True).returncode != 0
    await create(make, tmp_path, (A1,), name="second", slirp_gid=CONTROL_GID)
    assert subprocess.run(table, capture_output=True, check=True).stdout.count(b"skgid") == 3


async def test_the_sandbox_user_cannot_change_the_filter_or_take_the_dns_port(
    make: list[ItemNetwork], tmp_path: Path, world: World
) -> None:
    network = await create(make, tmp_path, ("allowed.test",))
    nft = shutil.which("nft")
    assert nft is not None
    results = await probe(
        network,
        [
            ("run", nft, "flush", "ruleset"),
            ("run", nft, "add", "element", "inet", "assay_egress", "allow4", "{ 10.203.3.2 }"),
            ("connect", A3, SERVER_PORT),
            ("bind-udp", "127.0.0.53", 53),
            ("bind-udp", "0.0.0.0", 53),
            ("resolve", "allowed.test"),  # still answered by the item's DNS service
        ],
    )
    assert results[0] != "exit:0" and results[1] != "exit:0", results
    assert str(results[2]).startswith("fail:")
    assert results[3] == results[4] == f"fail:{errno.EADDRINUSE}"
    assert results[5] == [A1]


async def test_networks_of_two_items_are_separate(
    make: list[ItemNetwork], tmp_path: Path, world: World
) -> None:
    first = await create(make, tmp_path, (A1,), name="first")
    second = await create(make, tmp_path, None, name="second")
    assert first.netns_path != second.netns_path
    results = await probe(second, [("connect", A1, SERVER_PORT)])
    assert str(results[0]).startswith("fail:")
    results = await probe(first, [("connect", A1, SERVER_PORT)])
    assert results == [ok("allowed.test")]


# ---- lifecycle -----------------------------------------------------------------------------


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is not alive: it is waiting for its parent (this process) to reap it.
    return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"


def _slirp_pid(root: Path, name: str) -> int:
    pid = json.loads((root / f"{name}.json").read_bytes())["slirp_pid"]
    assert isinstance(pid, int)
    return pid


async def test_destroy_removes_everything_and_is_idempotent(tmp_path: Path, world: World) -> None:
    network = await ItemNetwork.create(
        tmp_path, "item", EgressPolicy((A1,)), worker_id="w", resolver=test_resolver
    )
    pid = _slirp_pid(tmp_path, "item")
    assert _alive(pid) and Path(network.netns_path).exists()
    await network.destroy()
    await network.destroy()
    assert list(tmp_path.iterdir()) == []
    assert not _alive(pid)


async def test_reap_orphans_removes_only_dead_workers_networks(
    tmp_path: Path, world: World
) -> None:
    live = await ItemNetwork.create(tmp_path, "live", EgressPolicy((A1,)), worker_id="alive")
    dead = await ItemNetwork.create(tmp_path, "dead", EgressPolicy((A1,)), worker_id="gone")
    try:
        dead_pid = _slirp_pid(tmp_path, "dead")
        assert ItemNetwork.reap_orphans(tmp_path, frozenset({"alive"})) == ["dead"]
        assert not Path(dead.netns_path).exists() and not (tmp_path / "dead.json").exists()
        for _ in range(100):
            if not _alive(dead_pid):
                break
            await asyncio.sleep(0.02)
        assert not _alive(dead_pid)
        assert Path(live.netns_path).exists()
        assert ItemNetwork.reap_orphans(tmp_path, frozenset({"alive"})) == []
    finally:
        await dead.destroy()
        await live.destroy()
    assert list(tmp_path.iterdir()) == []


WORKER = """
import asyncio, sys
from pathlib import Path
from infrastructure.sandbox.network import ItemNetwork
from infrastructure.sandbox.protocol import EgressPolicy
async def main():
    n = await ItemNetwork.create(Path(sys.argv[1]), "item", EgressPolicy(("10.203.1.2",)),
                                 worker_id="w")
    print("up", flush=True)
    await asyncio.sleep(60)
asyncio.run(main())
"""


async def test_slirp_ends_when_its_worker_dies_and_the_leftover_is_reaped(
    tmp_path: Path, world: World
) -> None:
    worker = subprocess.Popen(
        [sys.executable, "-c", WORKER, str(tmp_path)],
        stdout=subprocess.PIPE,
        cwd=Path(__file__).parents[2],
    )
    try:
        assert worker.stdout is not None
        while (line := worker.stdout.readline()) != b"up\n":
            assert line, "the worker ended before its network was up"  # (it logs first)
        pid = _slirp_pid(tmp_path, "item")
        assert _alive(pid)
        worker.send_signal(signal.SIGKILL)
        worker.wait()
        deadline = time.monotonic() + 5
        while Path(f"/proc/{pid}/cmdline").exists() and time.monotonic() < deadline:
            await asyncio.sleep(0.02)  # init reaps it once it exits
        assert not Path(f"/proc/{pid}/cmdline").exists() or not _alive(pid)
        assert ItemNetwork.reap_orphans(tmp_path, frozenset({"another"})) == ["item"]
        assert list(tmp_path.iterdir()) == []
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
        ItemNetwork.reap_orphans(tmp_path, frozenset())  # whatever failed above, unmount it


async def test_invalid_policy_or_name_is_refused_before_anything_is_made(
    tmp_path: Path,
) -> None:
    with pytest.raises(ValueError, match="'not a name'"):
        await ItemNetwork.create(tmp_path, "item", EgressPolicy(("not a name",)), worker_id="w")
    with pytest.raises(ValueError, match="network name"):
        await ItemNetwork.create(tmp_path, "../escape", None, worker_id="w")
    assert not tmp_path.exists() or list(tmp_path.iterdir()) == []


async def test_a_taken_name_is_refused(tmp_path: Path, world: World) -> None:
    first = await ItemNetwork.create(tmp_path, "item", None, worker_id="w")
    try:
        with pytest.raises(SandboxError, match="already exists"):
            await ItemNetwork.create(tmp_path, "item", None, worker_id="w")
        assert Path(first.netns_path).exists()
    finally:
        await first.destroy()


def test_resolv_conf_names_the_items_dns_service() -> None:
    assert RESOLV_CONF == b"nameserver 127.0.0.53\noptions timeout:2 attempts:2\n"


# ---- the DNS service's wire format and decisions (no root needed) ---------------------------


def _query(name: str, qtype: int = 1, qid: int = 0x1234, flags: int = 0x0100) -> bytes:
    labels = b"".join(bytes([len(p)]) + p.encode() for p in name.split("."))
    return (
        struct.pack("!6H", qid, flags, 1, 0, 0, 0) + labels + b"\0" + struct.pack("!2H", qtype, 1)
    )


def _answer(reply: bytes) -> tuple[int, int, list[str]]:
    qid, flags, _qd, ancount, _ns, _ar = struct.unpack("!6H", reply[:12])
    offset = reply.index(b"\0", 12) + 5
    addresses = []
    for _ in range(ancount):
        _ptr, _type, _cls, _ttl, length = struct.unpack("!HHHIH", reply[offset : offset + 12])
        addresses.append(socket.inet_ntoa(reply[offset + 12 : offset + 12 + length]))
        offset += 12 + length
    return qid, flags & 0xF, addresses


class Recorder:
    def __init__(self) -> None:
        self.allowed: list[list[str]] = []

    async def __call__(self, addresses: Sequence[str]) -> None:
        self.allowed.append(list(addresses))


async def _respond(rules: list[str], packet: bytes, recorder: Recorder) -> bytes:
    import ipaddress

    never = [*ALWAYS_BLOCKED, *(ipaddress.IPv4Network(a) for a in _host_addresses())]
    proxy = DnsProxy(EgressRules.parse(rules), test_resolver, recorder, never)
    query = parse_query(packet)
    assert query is not None
    return await proxy.respond(query)


async def test_dns_answers_allowed_names_after_opening_the_filter() -> None:
    recorder = Recorder()
    reply = await _respond(["*.allowed.test"], _query("API.allowed.test"), recorder)
    assert _answer(reply) == (0x1234, 0, [A2])
    assert recorder.allowed == [[A2]]
    # Under `*` nothing needs opening.
    assert _answer(await _respond(["*"], _query("other.test"), recorder))[2] == [A3]
    assert recorder.allowed == [[A2]]


async def test_dns_refuses_other_names_and_hides_the_host() -> None:
    recorder = Recorder()
    assert _answer(await _respond(["allowed.test"], _query("other.test"), recorder))[1] == 3
    assert _answer(await _respond(["*"], _query("missing.test"), recorder))[1] == 3
    # host.test resolves to a host address, the gateway and loopback: all withheld.
    _qid, rcode, addresses = _answer(await _respond(["*"], _query("host.test"), recorder))
    assert (rcode, addresses) == (0, [])
    assert recorder.allowed == []
    # An allowed name asked for AAAA: no error, no address (the item has no IPv6).
    assert _answer(await _respond(["allowed.test"], _query("allowed.test", 28), recorder)) == (
        0x1234,
        0,
        [],
    )


@pytest.mark.parametrize(
    "packet",
    [
        b"",
        b"\x00" * 11,
        _query("allowed.test", flags=0x8100),  # a response, not a query
        _query("allowed.test", flags=0x2900),  # opcode UPDATE
        _query("allowed.test")[:-3],  # truncated question
        struct.pack("!6H", 1, 0x100, 1, 0, 0, 0) + b"\xc0\x0c" + b"\0\1\0\1",  # pointer
        struct.pack("!6H", 1, 0x100, 2, 0, 0, 0) + _query("a.test")[12:] * 2,
        b"\xff" * 600,
    ],
)
def test_dns_ignores_malformed_queries(packet: bytes) -> None:
    assert parse_query(packet) is None


def test_dns_reply_echoes_the_question() -> None:
    query = parse_query(_query("allowed.test", qid=7))
    assert query is not None and query.name == "allowed.test"
    reply = build_response(query, 0, ["10.1.2.3", "10.1.2.4"])
    assert reply[12 : 12 + len(query.question)] == query.question
    assert _answer(reply) == (7, 0, ["10.1.2.3", "10.1.2.4"])
