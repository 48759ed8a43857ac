"""The item's packet filters: deny all but the policy inside the item's namespace, and a guard on
the host that refuses slirp4netns any connection to the host itself.

Order matters and is the point of this module: loopback first (the item's own services and its
DNS service), then the host dropped *before* anything can allow it (so no rule, `*` included,
ever reaches the host), then replies, then DNS refused to anyone but the item's DNS service,
then the policy's addresses and the addresses its DNS service handed out, then reject.
Refusals are rejects rather than silent drops so a sandbox fails fast instead of hanging.
IPv6 is refused outright: the user-mode stack is started without it.

Sandboxes run as unprivileged users without CAP_NET_ADMIN over this namespace (it belongs to
the host's user namespace), so they cannot change these rules.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Iterable, Sequence

from domain.egress import EgressRules
from infrastructure.sandbox.network.netns import NetnsError, run, run_in_netns

TABLE = "assay_egress"
RESOLVED_SET = "resolved4"
HOST_TABLE_PREFIX = "assay_slirp_guard_"

# Never reachable whatever the policy: slirp's whole virtual network (its gateway 10.0.2.2 and
# DNS 10.0.2.3 are the host; nothing else lives there), "this" network, loopback, link-local
# (cloud metadata services answer there with the host's credentials), multicast and limited
# broadcast. The host's own addresses are added at create time.
ALWAYS_BLOCKED: tuple[ipaddress.IPv4Network, ...] = tuple(
    ipaddress.IPv4Network(net)
    for net in (
        "10.0.2.0/24",
        "0.0.0.0/8",
        "127.0.0.0/8",
        "169.254.0.0/16",
        "224.0.0.0/4",
        "255.255.255.255/32",
    )
)


async def host_networks() -> list[ipaddress.IPv4Network]:
    """Every IPv4 address the host answers on (its local and broadcast routes, in every routing
    table, so addresses bound to `lo` by range count too), plus ALWAYS_BLOCKED."""
    out = await run(["ip", "-j", "-4", "route", "show", "table", "all"])
    found = list(ALWAYS_BLOCKED)
    for route in json.loads(out or b"[]"):
        if route.get("type") not in ("local", "broadcast"):
            continue
        dst = route.get("dst", "")
        try:
            net = ipaddress.IPv4Network(dst, strict=False)
        except ValueError:
            continue
        if net not in found:
            found.append(net)
    return found


def _element_list(nets: Iterable[ipaddress.IPv4Network]) -> str:
    return ", ".join(str(net) for net in nets)


def _collapse(nets: Iterable[ipaddress.IPv4Network]) -> list[ipaddress.IPv4Network]:
    # nft refuses overlapping elements in an interval set; collapsing merges them.
    return list(ipaddress.collapse_addresses(nets))


def ruleset(rules: EgressRules, never: Sequence[ipaddress.IPv4Network]) -> str:
    allowed = _collapse(net for net in rules.networks if isinstance(net, ipaddress.IPv4Network))
    lines = [
        f"table inet {TABLE} {{",
        "  set host4 { type ipv4_addr; flags interval;",
        f"    elements = {{ {_element_list(_collapse(never))} }} }}",
        "  set allow4 { type ipv4_addr; flags interval;",
        f"    elements = {{ {_element_list(allowed)} }} }}" if allowed else "  }",
        f"  set {RESOLVED_SET} {{ type ipv4_addr; }}",
        "  chain output {",
        "    type filter hook output priority filter; policy drop;",
        '    oif "lo" accept',
        "    meta nfproto ipv6 reject",
        "    ip daddr @host4 reject with icmp type admin-prohibited",
        "    ct state established,related accept",
        # DNS goes to the item's own DNS service (on loopback, accepted above) or nowhere:
        # even under `*`, a resolver outside would resolve names the policy never saw.
        "    udp dport 53 reject",
        "    tcp dport 53 reject with tcp reset",
        "    ip daddr @allow4 accept",
        f"    ip daddr @{RESOLVED_SET} accept",
        *(["    accept"] if rules.any_destination else []),
        "    meta l4proto tcp reject with tcp reset",
        "    reject with icmpx type admin-prohibited",
        "  }",
        "  chain input {",
        "    type filter hook input priority filter; policy drop;",
        '    iif "lo" accept',
        "    ct state established,related accept",
        "  }",
        "}",
    ]
    return "\n".join(lines) + "\n"


def host_guard_ruleset(slirp_gid: int) -> str:
    """The host-side guard: slirp4netns runs with group `slirp_gid`, and any connection its
    sockets open to an address the host answers on is refused *at the moment of connecting*,
    by the kernel's own routing decision (`fib daddr type local`). Unlike the list read at
    create time, this covers addresses the host gains later (a new bridge, a VPN). Loaded as
    one transaction that replaces the table, so reloading it never leaves a gap."""
    table = f"{HOST_TABLE_PREFIX}{slirp_gid}"
    reject = "reject with icmpx type admin-prohibited"
    return "\n".join(
        [
            f"add table inet {table}",
            f"delete table inet {table}",
            f"table inet {table} {{",
            "  chain output {",
            "    type filter hook output priority filter - 10; policy accept;",
            f"    meta skgid {slirp_gid} fib daddr type {{ local, broadcast, multicast }} {reject}",
            f"    meta skgid {slirp_gid} ip daddr {{ 0.0.0.0/8, 169.254.0.0/16 }} {reject}",
            f"    meta skgid {slirp_gid} meta nfproto ipv6 {reject}",
            "  }",
            "}",
            "",
        ]
    )


async def ensure_host_guard(slirp_gid: int) -> None:
    """Load the guard unless it is there, whole. Checked on every item (a listing costs ~3 ms,
    a reload ~16 ms), so a host whose ruleset was flushed gets it back."""
    try:
        listing = (
            await run(["nft", "list", "table", "inet", f"{HOST_TABLE_PREFIX}{slirp_gid}"])
        ).decode()
    except NetnsError:
        listing = ""  # no such table
    whole = listing.count(f"meta skgid {slirp_gid} ") == 3 and (
        "fib daddr type { local, broadcast, multicast }" in listing
    )
    if not whole:
        await run(["nft", "-f", "-"], stdin=host_guard_ruleset(slirp_gid).encode())


async def install(netns: str, text: str) -> None:
    await run_in_netns(netns, ["nft", "-f", "-"], stdin=text.encode())


async def allow_resolved(netns: str, addresses: Sequence[str]) -> None:
    """Add addresses the DNS service is about to answer with (validated as IPv4 first, since
    the answer came from outside)."""
    elements = ", ".join(str(ipaddress.IPv4Address(a)) for a in addresses)
    await run_in_netns(
        netns, ["nft", "add", "element", "inet", TABLE, RESOLVED_SET, f"{{ {elements} }}"]
    )
