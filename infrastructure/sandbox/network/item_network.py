"""One item's network: a namespace every sandbox of the item joins, and its only way out.

- `egress=None` or an empty policy: the namespace has loopback and nothing else. The item's
  own services and its DNS service (which then answers NXDOMAIN to everything) are all there is.
- A non-empty policy: slirp4netns gives the namespace a user-mode uplink (tap0, 10.0.2.100)
  whose connections the host's kernel makes on the item's behalf, and an nftables filter inside
  the namespace (see `firewall`) lets out only what the policy allows and never the host. The
  filter is installed before slirp4netns starts, so there is no moment of open egress. Since
  slirp4netns connects from the host, a second, host-side guard refuses its sockets any address
  the host answers on, including addresses the host gains after the item started.

Lifetimes: slirp4netns gets an exit pipe from the worker, so it ends when the worker dies,
however it dies. Beside each namespace file a metadata file names the owning worker, so
`reap_orphans` can remove what a dead worker left behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import time
from collections.abc import Sequence
from pathlib import Path

import msgspec
import structlog

from domain.egress import EgressRules
from infrastructure.sandbox.network import firewall
from infrastructure.sandbox.network.dns import DnsProxy, Resolver, system_resolver
from infrastructure.sandbox.network.netns import create_netns, remove_netns
from infrastructure.sandbox.protocol import EgressPolicy, SandboxError

log = structlog.get_logger(__name__)

DNS_ADDRESS = ("127.0.0.53", 53)
# The sandboxes' /etc/resolv.conf: the item's own DNS service, on the item's loopback.
RESOLV_CONF = b"nameserver 127.0.0.53\noptions timeout:2 attempts:2\n"
SLIRP_READY_TIMEOUT = 10.0
MAX_RESOLVED_ADDRESSES = 4096
# The group slirp4netns runs with (it stays uid 0, which it needs to join the namespace): the
# host guard recognises its sockets by it. No file or process of the host should use it.
SLIRP_GID = 2_147_480_001
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


class NetworkMetadata(msgspec.Struct, frozen=True, kw_only=True):
    worker_id: str
    name: str
    netns: str
    slirp_pid: int | None = None
    created_at: float


class ItemNetwork:
    def __init__(
        self,
        root: Path,
        name: str,
        worker_id: str,
        dns: asyncio.DatagramTransport,
        proxy: DnsProxy,
    ) -> None:
        self._root = root
        self._name = name
        self._worker_id = worker_id
        self._dns = dns
        self._proxy = proxy
        self._slirp: asyncio.subprocess.Process | None = None
        self._slirp_exit_fd: int | None = None
        self._destroyed = False

    @property
    def netns_path(self) -> str:
        """The file to join: `nsenter --net=<netns_path> -- ...`."""
        return str(_netns_file(self._root, self._name))

    @property
    def resolv_conf(self) -> bytes:
        """What every sandbox of the item must see as /etc/resolv.conf."""
        return RESOLV_CONF

    @property
    def has_uplink(self) -> bool:
        """Whether anything outside the item may be reached at all (a non-empty policy)."""
        return self._slirp is not None

    @classmethod
    async def create(
        cls,
        root: Path,
        name: str,
        egress: EgressPolicy | None,
        *,
        worker_id: str,
        resolver: Resolver = system_resolver,
        slirp_gid: int = SLIRP_GID,
    ) -> ItemNetwork:
        """Raises ValueError for an invalid policy entry or name, SandboxError when the host
        fails (no root, no slirp4netns or nft)."""
        if not _NAME.match(name):
            raise ValueError(f"network name {name!r} must match {_NAME.pattern}")
        rules = EgressRules.parse(egress.allow if egress is not None else ())
        uplink = rules.any_destination or bool(rules.networks) or rules.resolves_names
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
        netns = _netns_file(root, name)
        if netns.exists() or _metadata_file(root, name).exists():
            raise SandboxError(f"an item network named {name!r} already exists under {root}")
        # The metadata goes first: whatever exists of this network from now on is reapable.
        meta = NetworkMetadata(
            worker_id=worker_id, name=name, netns=str(netns), created_at=time.time()
        )
        _write_metadata(root, meta)
        network: ItemNetwork | None = None
        made_netns = False
        try:
            never = list(firewall.ALWAYS_BLOCKED)
            if uplink:
                # Both are host-side commands, independent: run side by side.
                never, _ = await asyncio.gather(
                    firewall.host_networks(), firewall.ensure_host_guard(slirp_gid)
                )
            # create_netns removes its own file if it fails. Cancelled meanwhile (a worker
            # stopping), its thread goes on and binds the namespace all the same: wait for
            # it, so the cleanup below unmounts what it made instead of leaving the mount.
            creating = asyncio.ensure_future(asyncio.to_thread(create_netns, netns, DNS_ADDRESS))
            try:
                sock = await asyncio.shield(creating)
            except asyncio.CancelledError:
                made_netns = True
                with contextlib.suppress(Exception):
                    (await creating).close()
                raise
            made_netns = True

            opened: set[str] = set()

            async def allow(addresses: Sequence[str]) -> None:
                # Each address opens once; the set is bounded, since the names asked for
                # (under a `*.suffix` rule, say) are the adversary's choice.
                new = [a for a in addresses if a not in opened]
                if not new:
                    return
                if len(opened) + len(new) > MAX_RESOLVED_ADDRESSES:
                    raise SandboxError("too many resolved addresses for one item")
                await firewall.allow_resolved(str(netns), new)
                opened.update(new)

            proxy = DnsProxy(rules, resolver, allow, never)
            loop = asyncio.get_running_loop()
            try:
                transport, _ = await loop.create_datagram_endpoint(lambda: proxy, sock=sock)
            except BaseException:
                sock.close()
                raise
            network = cls(root, name, worker_id, transport, proxy)
            if uplink:
                await firewall.install(str(netns), firewall.ruleset(rules, never))
                await network._start_slirp(slirp_gid)
                _write_metadata(root, msgspec.structs.replace(meta, slirp_pid=network._slirp_pid))
        except BaseException as exc:
            if network is not None:
                await network.destroy()
            else:
                if made_netns:
                    remove_netns(netns)
                _metadata_file(root, name).unlink(missing_ok=True)
            if isinstance(exc, (OSError, RuntimeError)) and not isinstance(exc, SandboxError):
                raise SandboxError(f"could not create the item network {name!r}: {exc}") from exc
            raise
        log.debug("item_network_created", name=name, uplink=uplink)
        return network

    @property
    def _slirp_pid(self) -> int | None:
        return self._slirp.pid if self._slirp is not None else None

    async def _start_slirp(self, slirp_gid: int) -> None:
        ready_r, ready_w = os.pipe()
        exit_r, exit_w = os.pipe()
        os.set_inheritable(exit_w, False)
        log_path = self._root / f"{self._name}.slirp.log"
        try:
            with open(log_path, "wb") as log_file:
                self._slirp = await asyncio.create_subprocess_exec(
                    # setpriv execs slirp4netns in place (same pid), in the guard's group.
                    *("setpriv", f"--regid={slirp_gid}", "--clear-groups", "--"),
                    "slirp4netns",
                    "--configure",
                    "--mtu=65520",
                    # 10.0.2.2 would otherwise be the host's 127.0.0.1.
                    "--disable-host-loopback",
                    # 10.0.2.3 would forward to the host's resolver: a DNS path (and a tunnel)
                    # around the policy. The item's DNS service is on its loopback instead.
                    "--disable-dns",
                    # It parses the adversary's packets as root: confine it once configured.
                    "--enable-sandbox",
                    "--enable-seccomp",
                    "--netns-type=path",
                    f"--ready-fd={ready_w}",
                    f"--exit-fd={exit_r}",
                    self.netns_path,
                    "tap0",
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=log_file,
                    stderr=log_file,
                    pass_fds=(ready_w, exit_r),
                    start_new_session=True,
                )
            self._slirp_exit_fd = exit_w
        except BaseException:
            os.close(exit_w)
            raise
        finally:
            os.close(ready_w)
            os.close(exit_r)
        try:
            # slirp4netns writes "1" once tap0 is configured; EOF means it died.
            ready = await _read_byte(ready_r, SLIRP_READY_TIMEOUT)
        finally:
            os.close(ready_r)
        if ready != b"1":
            detail = log_path.read_text(errors="replace")[-800:]
            raise SandboxError(f"slirp4netns did not start: {detail}")

    async def destroy(self) -> None:
        """Stop the DNS service and slirp4netns, remove the namespace file. Idempotent."""
        if self._destroyed:
            return
        self._destroyed = True
        self._proxy.close()
        self._dns.close()
        if self._slirp is not None and self._slirp.returncode is None:
            # It keeps no state worth a graceful end, and the item's traffic must stop now.
            self._slirp.kill()
            await self._slirp.wait()
        if self._slirp_exit_fd is not None:
            os.close(self._slirp_exit_fd)
            self._slirp_exit_fd = None
        remove_netns(_netns_file(self._root, self._name))
        for path in (
            self._root / f"{self._name}.slirp.log",
            _metadata_file(self._root, self._name),
        ):
            path.unlink(missing_ok=True)

    @staticmethod
    def reap_orphans(root: Path, live_worker_ids: frozenset[str]) -> list[str]:
        """Remove the networks under `root` whose worker is not live; return their names."""
        reaped: list[str] = []
        if not root.is_dir():
            return reaped
        for meta_path in sorted(root.glob("*.json")):
            try:
                meta = msgspec.json.decode(meta_path.read_bytes(), type=NetworkMetadata)
            except (OSError, msgspec.DecodeError):
                continue
            if meta.worker_id in live_worker_ids or not _NAME.match(meta.name):
                continue
            netns = _netns_file(root, meta.name)
            if meta.slirp_pid is not None and _is_slirp_for(meta.slirp_pid, netns):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(meta.slirp_pid, signal.SIGKILL)
            remove_netns(netns)
            (root / f"{meta.name}.slirp.log").unlink(missing_ok=True)
            meta_path.unlink(missing_ok=True)
            reaped.append(meta.name)
        return reaped


async def _read_byte(fd: int, timeout: float) -> bytes:
    """One byte from a pipe, without a thread (one left blocked on a closed fd could read a
    reused one)."""
    os.set_blocking(fd, False)
    loop = asyncio.get_running_loop()
    done: asyncio.Future[bytes] = loop.create_future()

    def readable() -> None:
        if not done.done():
            try:
                done.set_result(os.read(fd, 1))
            except BlockingIOError:
                return
            except OSError as exc:
                done.set_exception(exc)

    loop.add_reader(fd, readable)
    try:
        return await asyncio.wait_for(done, timeout)
    finally:
        loop.remove_reader(fd)


def _netns_file(root: Path, name: str) -> Path:
    return root / f"{name}.netns"


def _metadata_file(root: Path, name: str) -> Path:
    return root / f"{name}.json"


def _write_metadata(root: Path, meta: NetworkMetadata) -> None:
    path = _metadata_file(root, meta.name)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_bytes(msgspec.json.encode(meta))
    tmp.replace(path)


def _is_slirp_for(pid: int, netns: Path) -> bool:
    """Whether pid is still the slirp4netns of that namespace (a pid may have been reused)."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return bool(argv) and argv[0].endswith(b"slirp4netns") and os.fsencode(netns) in argv
