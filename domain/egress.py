"""Egress allow-list rules: parse each entry once, then ask "may this name / address be reached?".

An entry is one of: a host name (`api.example.com`), a suffix wildcard (`*.example.com`: any
name *under* example.com, not example.com itself), an IP address, a CIDR network, or `*` alone
(any destination). Parsing is strict: anything ambiguous (a URL, a port, host bits set in a
CIDR, a trailing space) is refused with a ValueError naming the entry, so the API can answer 422
instead of silently enforcing something the caller did not mean.

Never reaching the host itself is not a rule here: the network layer enforces it whatever the
policy says.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_LABEL = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")
_MAX_NAME = 253


def normalize_name(name: str) -> str | None:
    """The canonical (lower-case, no trailing dot) form of a host name, or None if it is not a
    valid one. The last label may not be all digits, so `1.2.3` is never taken for a name."""
    if name.endswith("."):
        name = name[:-1]
    name = name.lower()
    if not name or len(name) > _MAX_NAME or not name.isascii():
        return None
    labels = name.split(".")
    if not all(_LABEL.match(label) for label in labels):
        return None
    if labels[-1].isdigit():
        return None
    return name


@dataclass(frozen=True, slots=True)
class EgressRules:
    """A parsed allow-list. `any_destination` is `*`; `names` are exact host names; `suffixes`
    come from `*.suffix` entries (stored without the `*.`); `networks` hold IPs (as /32 or /128)
    and CIDRs."""

    any_destination: bool = False
    names: frozenset[str] = frozenset()
    suffixes: frozenset[str] = frozenset()
    networks: tuple[IPNetwork, ...] = ()

    @classmethod
    def parse(cls, entries: Iterable[str]) -> EgressRules:
        any_destination = False
        names: set[str] = set()
        suffixes: set[str] = set()
        networks: list[IPNetwork] = []
        for entry in entries:
            kind, value = parse_entry(entry)
            if kind == "any":
                any_destination = True
            elif kind == "name":
                assert isinstance(value, str)
                names.add(value)
            elif kind == "suffix":
                assert isinstance(value, str)
                suffixes.add(value)
            else:
                assert not isinstance(value, str) and value is not None
                if value not in networks:
                    networks.append(value)
        return cls(any_destination, frozenset(names), frozenset(suffixes), tuple(networks))

    @property
    def resolves_names(self) -> bool:
        """Whether any name may be resolved at all (a DNS service is worth running)."""
        return self.any_destination or bool(self.names) or bool(self.suffixes)

    def allows_name(self, name: str) -> bool:
        """May `name` be resolved (and its addresses then reached)?"""
        canonical = normalize_name(name)
        if canonical is None:
            return False
        if self.any_destination or canonical in self.names:
            return True
        return any(canonical.endswith("." + suffix) for suffix in self.suffixes)

    def allows_address(self, address: str | IPAddress) -> bool:
        """May this address be reached by an IP or CIDR rule (or `*`)? Addresses learnt by
        resolving an allowed name are the network layer's business, not this rule set's."""
        if self.any_destination:
            return True
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip.version == net.version and ip in net for net in self.networks)


def parse_entry(entry: str) -> tuple[str, str | IPNetwork | None]:
    """Classify one entry: ("any", None), ("name", fqdn), ("suffix", fqdn) or ("network", net).
    Raises ValueError naming the entry when it is none of them."""
    if not isinstance(entry, str):
        raise ValueError(f"egress entry {entry!r} is not a string")
    if entry == "*":
        return "any", None
    if entry != entry.strip() or not entry:
        raise ValueError(f"egress entry {entry!r} is empty or has surrounding whitespace")
    if entry.startswith("*."):
        suffix = normalize_name(entry[2:])
        if suffix is None or entry.endswith(".."):
            raise ValueError(
                f"egress entry {entry!r}: `*.` must be followed by a valid domain name"
            )
        return "suffix", suffix
    if "/" in entry:
        try:
            return "network", ipaddress.ip_network(entry, strict=True)
        except ValueError as exc:
            raise ValueError(
                f"egress entry {entry!r} is not a valid CIDR network ({exc})"
            ) from None
    try:
        ip = ipaddress.ip_address(entry)
    except ValueError:
        pass
    else:
        return "network", ipaddress.ip_network(ip)
    name = normalize_name(entry)
    if name is None or entry.endswith(".."):
        raise ValueError(
            f"egress entry {entry!r} is not a host name, `*.suffix`, IP address, CIDR or `*`"
        )
    return "name", name


def validate_entries(entries: Iterable[str]) -> None:
    """Raise ValueError naming every invalid entry (for a 422 that lists them all)."""
    errors: list[str] = []
    for entry in entries:
        try:
            parse_entry(entry)
        except ValueError as exc:
            errors.append(str(exc))
    if errors:
        raise ValueError("; ".join(errors))
