"""The item's DNS service: answers A queries for allowed names only, opening the filter first.

It runs in the worker's event loop on a UDP socket that lives inside the item's network
namespace (127.0.0.53:53 there), so the sandboxes reach it over their own loopback and nothing
else: there is no DNS path out of the item but this one. A name the policy allows is resolved
by the worker (host side) and each answered address is added to the item's filter *before* the
answer is sent, so the sandbox can never connect before the filter lets it. Every other name
gets NXDOMAIN. The query comes from the adversary: malformed packets are dropped, work is
bounded (concurrent lookups, addresses added), and answers stay under 512 bytes.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import struct
from collections.abc import Awaitable, Callable, Sequence
from typing import Final, cast

import structlog

from domain.egress import EgressRules, normalize_name

log = structlog.get_logger(__name__)

# Resolves a host name to its IPv4 addresses (strings). Raises OSError (socket.gaierror) when
# the name does not exist.
Resolver = Callable[[str], Awaitable[Sequence[str]]]
# Called with the addresses about to be answered, before the answer leaves; raises to refuse.
AllowAddresses = Callable[[Sequence[str]], Awaitable[None]]

QTYPE_A: Final = 1
RCODE_NOERROR: Final = 0
RCODE_FORMERR: Final = 1
RCODE_SERVFAIL: Final = 2
RCODE_NXDOMAIN: Final = 3
RCODE_NOTIMP: Final = 4
ANSWER_TTL: Final = 60
MAX_ANSWERS: Final = 16  # 16 A records keep the reply well under 512 bytes
MAX_CONCURRENT: Final = 8
MAX_PENDING: Final = 64  # queries beyond this many in flight are dropped (the client retries)


async def system_resolver(name: str) -> list[str]:
    """The host's resolver (getaddrinfo), IPv4 only: the item's network has no IPv6."""
    infos = await asyncio.get_running_loop().getaddrinfo(
        name, None, family=socket.AF_INET, type=socket.SOCK_STREAM
    )
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


class Query:
    """One parsed question: the id, the flags' RD bit, the question's bytes and its fields."""

    __slots__ = ("id", "name", "qclass", "qtype", "question", "recursion_desired")

    def __init__(
        self, id: int, recursion_desired: bool, name: str, qtype: int, qclass: int, question: bytes
    ) -> None:
        self.id = id
        self.recursion_desired = recursion_desired
        self.name = name
        self.qtype = qtype
        self.qclass = qclass
        self.question = question


def parse_query(packet: bytes) -> Query | None:
    """A standard query with exactly one question, or None (not worth an answer)."""
    if len(packet) < 12 or len(packet) > 512:
        return None
    qid, flags, qdcount, ancount, _nscount, _arcount = struct.unpack("!6H", packet[:12])
    is_response = flags & 0x8000
    opcode = (flags >> 11) & 0xF
    if is_response or opcode != 0 or qdcount != 1 or ancount != 0:
        return None
    labels: list[str] = []
    offset = 12
    while True:
        if offset >= len(packet):
            return None
        length = packet[offset]
        offset += 1
        if length == 0:
            break
        if length > 63 or offset + length > len(packet):  # also refuses compression pointers
            return None
        try:
            labels.append(packet[offset : offset + length].decode("ascii"))
        except UnicodeDecodeError:
            return None
        offset += length
    if offset + 4 > len(packet):
        return None
    qtype, qclass = struct.unpack("!2H", packet[offset : offset + 4])
    question = packet[12 : offset + 4]
    return Query(qid, bool(flags & 0x0100), ".".join(labels), qtype, qclass, question)


def build_response(query: Query, rcode: int, addresses: Sequence[str] = ()) -> bytes:
    # QR=1, RA=1, RD copied from the query; one question echoed, then A records that point
    # back at the question's name (compression pointer 0xC00C).
    flags = 0x8000 | 0x0080 | (0x0100 if query.recursion_desired else 0) | rcode
    header = struct.pack("!6H", query.id, flags, 1, len(addresses), 0, 0)
    answers = b"".join(
        struct.pack("!HHHIH", 0xC00C, QTYPE_A, 1, ANSWER_TTL, 4) + socket.inet_aton(address)
        for address in addresses
    )
    return header + query.question + answers


class DnsProxy(asyncio.DatagramProtocol):
    def __init__(
        self,
        rules: EgressRules,
        resolver: Resolver,
        allow_addresses: AllowAddresses,
        never: Sequence[ipaddress.IPv4Network],
    ) -> None:
        self._rules = rules
        self._resolver = resolver
        self._allow_addresses = allow_addresses
        self._never = tuple(never)
        self._transport: asyncio.DatagramTransport | None = None
        self._limit = asyncio.Semaphore(MAX_CONCURRENT)
        self._tasks: set[asyncio.Task[None]] = set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # The selector loop's datagram transport does not subclass DatagramTransport.
        self._transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | object, int]) -> None:
        query = parse_query(data)
        if query is None or len(self._tasks) >= MAX_PENDING:
            return
        task = asyncio.get_running_loop().create_task(self._answer(query, addr))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def error_received(self, exc: Exception) -> None:
        # ICMP errors from a client that went away: nothing to do.
        pass

    def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        if self._transport is not None:
            self._transport.close()

    async def _answer(self, query: Query, addr: tuple[str | object, int]) -> None:
        reply = await self.respond(query)
        if self._transport is not None and not self._transport.is_closing():
            self._transport.sendto(reply, addr)

    async def respond(self, query: Query) -> bytes:
        if query.qclass != 1:
            return build_response(query, RCODE_NOTIMP)
        name = normalize_name(query.name)
        if name is None or not self._rules.allows_name(name):
            return build_response(query, RCODE_NXDOMAIN)
        if query.qtype != QTYPE_A:
            # An allowed name without AAAA (or any other type): clients fall back to A.
            return build_response(query, RCODE_NOERROR)
        async with self._limit:
            try:
                resolved = await self._resolver(name)
            except OSError:
                return build_response(query, RCODE_NXDOMAIN)
            except Exception as exc:
                log.warning("egress_dns_resolver_failed", name=name, error=repr(exc))
                return build_response(query, RCODE_SERVFAIL)
            addresses = self._reachable(resolved)[:MAX_ANSWERS]
            # Under `*` every address but the host's is open already.
            if addresses and not self._rules.any_destination:
                try:
                    await self._allow_addresses(addresses)
                except Exception as exc:
                    log.warning("egress_dns_allow_failed", name=name, error=repr(exc))
                    return build_response(query, RCODE_SERVFAIL)
        return build_response(query, RCODE_NOERROR, addresses)

    def _reachable(self, resolved: Sequence[str]) -> list[str]:
        """IPv4 addresses that are not the host's: a name resolving to the host (or to the
        gateway) is answered without them, since the filter would refuse them anyway."""
        kept: list[str] = []
        for text in resolved:
            try:
                ip = ipaddress.ip_address(text)
            except ValueError:
                continue
            if ip.version != 4 or any(ip in net for net in self._never):
                continue
            if str(ip) not in kept:
                kept.append(str(ip))
        return kept
