"""Ids as they arrive from outside: UUIDs compared as UUIDs, whatever their case.

Every id Assay stores is canonical UUID text (`str(uuid.UUID(...))`: lower case, hyphenated),
so an id named by a caller is brought to that form once, at the edge, before any lookup:
`0A1B2C3D-...`, `0a1b2c3d...` without hyphens and `{0a1b2c3d-...}` all name one resource.
Request bodies get the same form from their schema (msgspec decodes `uuid.UUID` fields, and
`str()` of one is this canonical text); path segments, query parameters and CLI arguments
come through `canonical_id` or, where a unique prefix is accepted, `normalise_prefix`.
"""

from __future__ import annotations

import uuid

import uuid_utils

# The shortest id prefix a path segment may use (the dn client passes what the user typed).
MIN_PREFIX = 8
HEX = frozenset("0123456789abcdef-")


def new_time_ordered_id() -> str:
    """A new UUIDv7 (RFC 9562) in canonical text: its first 48 bits are the time in ms, so ids
    made one after another sort together. Event ids use it: the log's unique index on random
    UUIDs wrote each insert to a random leaf page (a 1,000-event append dirtied about as many
    pages), on time-ordered ones to the last few (scripts/compare_eventsourcing.py).
    Not for ids people type: a user names an evaluation or item by its first 8 characters,
    which for UUIDv7 are the same for a minute's worth of ids."""
    return str(uuid_utils.uuid7())


def canonical_id(raw: str) -> str | None:
    """The canonical text of the UUID `raw` spells, or None when it is not a UUID."""
    try:
        return str(uuid.UUID(raw.strip()))
    except ValueError:
        return None


def normalise_prefix(raw: str) -> str | None:
    """A whole id in canonical form, or a lower-case id prefix of at least MIN_PREFIX
    characters; None when `raw` can be neither (too short, not hex)."""
    whole = canonical_id(raw)
    if whole is not None:
        return whole
    value = raw.strip().lower()
    if len(value) < MIN_PREFIX or not set(value) <= HEX or len(value) > 36:
        return None
    return value
