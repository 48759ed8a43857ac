"""The audit hash chains, pure: canonical encoding, event and chain hashes, verification.

Every event carries two links (shared/spec/audit.md):

- `hash` = SHA-256 of `prev_hash` (64 hex characters, ASCII) followed by the canonical encoding
  of the event's content; `prev_hash` is the `hash` of the previous event of the same stream
  (64 zeros for a stream's first event). It ties each stream together.
- `chain_hash` = SHA-256 of `chain_prev_hash` followed by `hash`; `chain_prev_hash` is the
  `chain_hash` of the previous position (64 zeros for the first). It ties the whole log
  together, so a removed stream breaks it too.

This is the one implementation: the append path, `assay audit verify`, `assay log import` and
the tests all call it. The README's standalone script repeats it with the standard library only.
"""

from __future__ import annotations

import hashlib
import json
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import msgspec

ZERO_HASH = "0" * 64

Problem = Literal["changed", "missing", "inserted", "reordered"]


def canonical(value: object) -> bytes:
    """UTF-8 JSON, keys sorted at every level, no whitespace, non-ASCII written as itself."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _no_float(text: str) -> float:
    raise ValueError("float")


# Decodes JSON without floats; a float raises (msgspec writes 1e16 where Python writes 1e+16).
_FLOATLESS = msgspec.json.Decoder(float_hook=_no_float)


def canonical_text(text: str) -> bytes:
    """`canonical(json.loads(text))`, computed in C when `text` holds no float: msgspec's
    sorted, compact output escapes strings exactly as `json.dumps(ensure_ascii=False)` does
    (tests/domain/test_audit_chain.py checks it over generated values)."""
    try:
        return msgspec.json.encode(_FLOATLESS.decode(text), order="sorted")
    except (msgspec.ValidationError, msgspec.DecodeError):
        return canonical(json.loads(text))


def canonical_body(
    *,
    event_id: str,
    stream_type: str,
    stream_id: str,
    stream_version: int,
    event_type: str,
    schema_version: int,
    data_canonical: bytes,
    metadata_canonical: bytes,
    recorded_at: str,
) -> bytes:
    """`canonical(event_content(...))` from data and metadata already in canonical form
    (`canonical_text`): the append path encodes a command's shared metadata once."""
    return msgspec.json.encode(
        {
            "event_id": event_id,
            "stream_type": stream_type,
            "stream_id": stream_id,
            "stream_version": stream_version,
            "type": event_type,
            "schema_version": schema_version,
            "data": msgspec.Raw(data_canonical),
            "metadata": msgspec.Raw(metadata_canonical),
            "recorded_at": recorded_at,
        },
        order="sorted",
    )


def hash_body(prev_hash: str, body: bytes) -> str:
    """An event's `hash` from its `prev_hash` and the canonical encoding of its content."""
    digest = hashlib.sha256(prev_hash.encode("ascii", "replace"))
    digest.update(body)
    return digest.hexdigest()


def event_content(
    *,
    event_id: str,
    stream_type: str,
    stream_id: str,
    stream_version: int,
    event_type: str,
    schema_version: int,
    data: object,
    metadata: object,
    recorded_at: str,
) -> dict[str, Any]:
    """The object whose canonical encoding an event's `hash` covers (wire names: `type`)."""
    return {
        "event_id": event_id,
        "stream_type": stream_type,
        "stream_id": stream_id,
        "stream_version": stream_version,
        "type": event_type,
        "schema_version": schema_version,
        "data": data,
        "metadata": metadata,
        "recorded_at": recorded_at,
    }


def event_hash(prev_hash: str, content: Mapping[str, object]) -> str:
    return hash_body(prev_hash, canonical(content))


def chain_hash(chain_prev_hash: str, hash_: str) -> str:
    return hashlib.sha256((chain_prev_hash + hash_).encode("ascii", "replace")).hexdigest()


@dataclass(frozen=True, slots=True)
class Link:
    """One stored event as verification reads it: the canonical encoding of its content
    (`canonical_body`) and its four stored hashes."""

    position: int
    stream_type: str
    stream_id: str
    stream_version: int
    body: bytes
    prev_hash: str
    hash: str
    chain_prev_hash: str
    chain_hash: str


@dataclass(frozen=True, slots=True)
class Finding:
    """The first bad position and what is wrong with it."""

    position: int
    problem: Problem
    detail: str


@dataclass(frozen=True, slots=True)
class Checkpoint:
    position: int
    chain_hash: str


# Where the event whose chain_hash is given sits (None: nowhere): asked only once a link is
# broken, to tell a reordered log from a missing or an inserted event.
Locate = Callable[[str], int | None]
# How many recent (position, chain_hash) pairs verification keeps to name the first of several
# events inserted with forged but consistent hashes.
_RECENT = 1024


def verify_links(
    links: Iterable[Link],
    *,
    locate: Locate = lambda _hash: None,
    checkpoint: Checkpoint | None = None,
) -> Finding | None:
    """Walk the log in position order; None when both chains hold (and the checkpoint, if
    given, is still there), else the first bad position."""
    walk = ChainWalk(locate=locate, checkpoint=checkpoint)
    for link in links:
        finding = walk.push(link)
        if finding is not None:
            return finding
    return walk.finish()


class ChainWalk:
    """`verify_links` one link at a time, for callers that hold each link only briefly (an
    import checks the lines it loads). A link is judged when the next one arrives (an
    insertion shows in its successor), or at `finish`."""

    def __init__(
        self, *, locate: Locate = lambda _hash: None, checkpoint: Checkpoint | None = None
    ) -> None:
        self._locate = locate
        self._checkpoint = checkpoint
        self._streams: dict[tuple[str, str], tuple[int, str]] = {}
        self._recent: deque[tuple[int, str]] = deque(maxlen=_RECENT)
        self._expected_chain = ZERO_HASH
        self._previous: Link | None = None
        self._pending: Link | None = None
        self._checkpoint_seen = False

    def push(self, link: Link) -> Finding | None:
        pending, self._pending = self._pending, link
        return None if pending is None else self._judge(pending, link)

    def finish(self) -> Finding | None:
        pending, self._pending = self._pending, None
        if pending is not None:
            finding = self._judge(pending, None)
            if finding is not None:
                return finding
        checkpoint = self._checkpoint
        if checkpoint is not None and not self._checkpoint_seen:
            last = self._previous.position if self._previous is not None else 0
            return Finding(
                checkpoint.position,
                "missing",
                f"the checkpoint's position is not in the log (last position: {last})",
            )
        return None

    def _judge(self, link: Link, following: Link | None) -> Finding | None:
        finding = _check_global(
            link, following, self._previous, self._expected_chain, self._recent, self._locate
        )
        finding = finding or _check_stream(link, self._streams)
        if finding is not None:
            return finding
        checkpoint = self._checkpoint
        if checkpoint is not None and link.position == checkpoint.position:
            self._checkpoint_seen = True
            if link.chain_hash != checkpoint.chain_hash:
                return Finding(
                    link.position,
                    "changed",
                    "its chain_hash differs from the checkpoint's: the log up to this position "
                    "was rewritten (hashes recomputed) after the checkpoint was taken",
                )
        self._streams[(link.stream_type, link.stream_id)] = (link.stream_version, link.hash)
        self._recent.append((link.position, link.chain_hash))
        self._expected_chain = link.chain_hash
        self._previous = link
        return None


def _check_global(
    link: Link,
    following: Link | None,
    previous: Link | None,
    expected_chain: str,
    recent: deque[tuple[int, str]],
    locate: Locate,
) -> Finding | None:
    own_hash_ok = link.hash == hash_body(link.prev_hash, link.body)
    own_chain_ok = link.chain_hash == chain_hash(link.chain_prev_hash, link.hash)
    linked = link.chain_prev_hash == expected_chain
    if own_hash_ok and own_chain_ok and linked:
        return None
    after = f"position {previous.position}" if previous is not None else "the start"
    skipped = following is not None and following.chain_prev_hash == expected_chain
    if not linked and own_hash_ok and own_chain_ok:
        where = locate(link.chain_prev_hash)
        if where is not None and where > link.position:
            return Finding(
                link.position,
                "reordered",
                f"its predecessor in the chain is the event now at position {where}",
            )
        if skipped:
            return Finding(
                link.position, "inserted", f"the chain runs from {after} past it to the next event"
            )
        if where is not None:
            first = next((p for p, h in recent if p > where), link.position)
            return Finding(
                first,
                "inserted",
                f"the chain runs from position {where} to position {link.position}; the events "
                f"between them were inserted",
            )
        return Finding(
            link.position,
            "missing",
            f"an event before it is missing: its chain_prev_hash is not the chain_hash of {after}"
            " nor of any other event",
        )
    if skipped or (not linked and following is None):
        return Finding(
            link.position, "inserted", f"it does not belong to the chain that runs from {after}"
        )
    what = "content" if not own_hash_ok else "chain_hash"
    return Finding(link.position, "changed", f"its {what} does not match its stored hashes")


def _check_stream(link: Link, streams: dict[tuple[str, str], tuple[int, str]]) -> Finding | None:
    version, prev = streams.get((link.stream_type, link.stream_id), (0, ZERO_HASH))
    stream = f"{link.stream_type}/{link.stream_id}"
    if link.stream_version > version + 1:
        return Finding(
            link.position,
            "missing",
            f"stream {stream} jumps from version {version} to {link.stream_version}",
        )
    if link.stream_version <= version:
        return Finding(
            link.position,
            "reordered",
            f"stream {stream} version {link.stream_version} comes after version {version}",
        )
    if link.prev_hash != prev:
        return Finding(
            link.position,
            "changed",
            f"its prev_hash is not the hash of version {version} of stream {stream}",
        )
    return None


def check_events(links: Iterable[Link]) -> list[Finding]:
    """Every bad event among the events of some streams (one evaluation's history), in position
    order: each event's `hash` recomputed from its content and `prev_hash`, its `chain_hash`
    from `chain_prev_hash` and `hash`, each stream's versions and `prev_hash` links, and the
    chain link between events at adjacent positions. The events of other streams between them
    are not here: whether the whole log holds together is `verify_links`'s walk."""
    findings: list[Finding] = []
    streams: dict[tuple[str, str], tuple[int, str]] = {}
    previous: Link | None = None
    for link in links:
        finding = (
            _check_own(link) or _check_stream(link, streams) or _check_adjacent(link, previous)
        )
        if finding is not None:
            findings.append(finding)
        # The stored hashes, not recomputed ones: an edited event's successors still link to
        # what was stored, so only the edited event itself is named.
        streams[(link.stream_type, link.stream_id)] = (link.stream_version, link.hash)
        previous = link
    return findings


def _check_adjacent(link: Link, previous: Link | None) -> Finding | None:
    if previous is None or link.position != previous.position + 1:
        return None  # other streams' events lie between them: verify_links checks those links
    if link.chain_prev_hash != previous.chain_hash:
        return Finding(
            link.position,
            "changed",
            f"its chain_prev_hash is not the chain_hash of position {previous.position}",
        )
    return None


def _check_own(link: Link) -> Finding | None:
    if link.hash != hash_body(link.prev_hash, link.body):
        return Finding(
            link.position,
            "changed",
            "its content does not match its stored hash (recomputed from content and prev_hash)",
        )
    if link.chain_hash != chain_hash(link.chain_prev_hash, link.hash):
        return Finding(
            link.position, "changed", "its chain_hash is not the hash of chain_prev_hash + hash"
        )
    return None


@dataclass(slots=True)
class Chainer:
    """Computes the hashes of new events, in position order, from the heads they follow."""

    chain_head: str

    def link(self, prev_hash: str, content: Mapping[str, object]) -> tuple[str, str, str]:
        """(hash, chain_prev_hash, chain_hash) of the next event; advances the chain head."""
        return self.follow(event_hash(prev_hash, content))

    def follow(self, own: str) -> tuple[str, str, str]:
        """The same for an event whose own `hash` is already computed."""
        chain_prev = self.chain_head
        self.chain_head = chain_hash(chain_prev, own)
        return own, chain_prev, self.chain_head
