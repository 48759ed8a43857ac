"""An event as every audit surface shows it (shared/spec/audit.md), and as verification reads it."""

from __future__ import annotations

import json
from typing import Any

import msgspec

from domain.audit_chain import Link, canonical, canonical_body, canonical_text, event_content
from infrastructure.eventstore import RecordedEvent


class WireEvent(msgspec.Struct, frozen=True, kw_only=True):
    """One NDJSON line of `assay log export`. `data` and `metadata` are the stored JSON text
    verbatim, so an import stores byte for byte what the source held."""

    position: int
    event_id: str
    stream_type: str
    stream_id: str
    stream_version: int
    type: str
    schema_version: int
    data: msgspec.Raw
    metadata: msgspec.Raw
    recorded_at: str
    prev_hash: str
    hash: str
    chain_prev_hash: str
    chain_hash: str


def to_wire(record: RecordedEvent) -> WireEvent:
    return WireEvent(
        position=record.position,
        event_id=record.event_id,
        stream_type=record.stream_type,
        stream_id=record.stream_id,
        stream_version=record.stream_version,
        type=record.event_type,
        schema_version=record.schema_version,
        data=msgspec.Raw(record.data.encode()),
        metadata=msgspec.Raw(record.metadata.encode()),
        recorded_at=record.recorded_at,
        prev_hash=record.prev_hash,
        hash=record.hash,
        chain_prev_hash=record.chain_prev_hash,
        chain_hash=record.chain_hash,
    )


def from_wire(event: WireEvent) -> RecordedEvent:
    return RecordedEvent(
        position=event.position,
        event_id=event.event_id,
        stream_type=event.stream_type,
        stream_id=event.stream_id,
        stream_version=event.stream_version,
        event_type=event.type,
        schema_version=event.schema_version,
        data=bytes(event.data).decode(),
        metadata=bytes(event.metadata).decode(),
        recorded_at=event.recorded_at,
        prev_hash=event.prev_hash,
        hash=event.hash,
        chain_prev_hash=event.chain_prev_hash,
        chain_hash=event.chain_hash,
    )


def content_of(record: RecordedEvent) -> dict[str, Any]:
    """What the event's `hash` covers, with `data` and `metadata` as the history shows them."""
    return event_content(
        event_id=record.event_id,
        stream_type=record.stream_type,
        stream_id=record.stream_id,
        stream_version=record.stream_version,
        event_type=record.event_type,
        schema_version=record.schema_version,
        data=_json_or_text(record.data),
        metadata=_json_or_text(record.metadata),
        recorded_at=record.recorded_at,
    )


def link_of(record: RecordedEvent) -> Link:
    return Link(
        position=record.position,
        stream_type=record.stream_type,
        stream_id=record.stream_id,
        stream_version=record.stream_version,
        body=canonical_body(
            event_id=record.event_id,
            stream_type=record.stream_type,
            stream_id=record.stream_id,
            stream_version=record.stream_version,
            event_type=record.event_type,
            schema_version=record.schema_version,
            data_canonical=_canonical_or_text(record.data),
            metadata_canonical=_canonical_or_text(record.metadata),
            recorded_at=record.recorded_at,
        ),
        prev_hash=record.prev_hash,
        hash=record.hash,
        chain_prev_hash=record.chain_prev_hash,
        chain_hash=record.chain_hash,
    )


def _canonical_or_text(text: str) -> bytes:
    # A tampered row may hold anything; verification must report it, not crash on it.
    try:
        return canonical_text(text)
    except ValueError:
        return canonical(text)


def _json_or_text(text: str) -> Any:
    # A tampered row may hold anything; verification must report it, not crash on it.
    try:
        return json.loads(text)
    except ValueError:
        return text
