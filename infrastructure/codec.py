"""Domain events <-> stored rows: JSON encoding, event metadata, and upcasting on read.

An upcaster is registered for an `(event_type, schema_version)` pair and turns that version's
JSON object into the next version's; decoding applies them in a chain until the current
version, so old history keeps decoding after an event's schema changes.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import msgspec

from domain.evaluation import AnyEvent, stream_of
from domain.projections import Actor, Envelope
from infrastructure.eventstore import NewEvent, RecordedEvent, StreamAppend
from infrastructure.ids import new_time_ordered_id

Upcaster = Callable[[dict[str, Any]], dict[str, Any]]

# Streams of the domain's aggregates; other streams (operations) record what operators did.
DOMAIN_STREAMS = frozenset({"evaluation", "item"})


class EventMetadata(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    actor: Actor | None = None
    request_id: str | None = None
    correlation_id: str | None = None
    causation_id: str | None = None
    # The Idempotency-Key of the create request that appended the event.
    idempotency_key: str | None = None


_encoder = msgspec.json.Encoder()
_event_decoder = msgspec.json.Decoder(AnyEvent)
_metadata_decoder = msgspec.json.Decoder(EventMetadata)
_UPCASTERS: dict[tuple[str, int], Upcaster] = {}
# The schema version new events of each type are written with (1 unless upcasters exist).
CURRENT_SCHEMA: dict[str, int] = {}


def register_upcaster(event_type: str, from_version: int, upcaster: Upcaster) -> None:
    """Teach the decoder to read `event_type` stored at `from_version`."""
    _UPCASTERS[(event_type, from_version)] = upcaster
    CURRENT_SCHEMA[event_type] = max(CURRENT_SCHEMA.get(event_type, 1), from_version + 1)


def unregister_upcaster(event_type: str, from_version: int) -> None:
    _UPCASTERS.pop((event_type, from_version), None)
    remaining = [v for (t, v) in _UPCASTERS if t == event_type]
    if remaining:
        CURRENT_SCHEMA[event_type] = max(remaining) + 1
    else:
        CURRENT_SCHEMA.pop(event_type, None)


def event_type(event: AnyEvent) -> str:
    return str(type(event).__struct_config__.tag)


# Events this process encoded recently, by id: the inline projection and the command's own
# fold read them back from here instead of parsing the JSON just written (a bounded memo).
_RECENT_LIMIT = 4096
_recent: dict[str, AnyEvent] = {}


def encode(event: AnyEvent, metadata: EventMetadata) -> NewEvent:
    kind = event_type(event)
    event_id = new_time_ordered_id()
    if len(_recent) >= _RECENT_LIMIT:
        _recent.clear()
    _recent[event_id] = event
    return NewEvent(
        event_id=event_id,
        event_type=kind,
        data=_encoder.encode(event).decode(),
        metadata=_encoder.encode(metadata).decode(),
        schema_version=CURRENT_SCHEMA.get(kind, 1),
    )


def to_appends(
    new_events: Sequence[AnyEvent], versions: dict[tuple[str, str], int], metadata: EventMetadata
) -> list[StreamAppend]:
    """Group decided events by stream, each appended at the version the caller loaded."""
    grouped: dict[tuple[str, str], list[NewEvent]] = {}
    for event in new_events:
        grouped.setdefault(stream_of(event), []).append(encode(event, metadata))
    return [
        StreamAppend(
            stream_type=stream_type,
            stream_id=stream_id,
            expected_version=versions.get((stream_type, stream_id), 0),
            events=encoded,
        )
        for (stream_type, stream_id), encoded in grouped.items()
    ]


def decode(record: RecordedEvent) -> AnyEvent:
    recent = _recent.get(record.event_id)
    if recent is not None:
        return recent
    current = CURRENT_SCHEMA.get(record.event_type, 1)
    if record.schema_version == current:
        decoded: AnyEvent = _event_decoder.decode(record.data)
        return decoded
    payload: dict[str, Any] = msgspec.json.decode(record.data)
    version = record.schema_version
    while version < current:
        upcaster = _UPCASTERS.get((record.event_type, version))
        if upcaster is None:
            raise ValueError(f"no upcaster for {record.event_type} v{version}")
        payload = upcaster(payload)
        version += 1
    upcast: AnyEvent = msgspec.convert(payload, AnyEvent)
    return upcast


def decode_metadata(record: RecordedEvent) -> EventMetadata:
    return _metadata_of(record.metadata)


@functools.lru_cache(maxsize=1024)
def _metadata_of(text: str) -> EventMetadata:
    # The events of one command share their metadata text: parse it once.
    decoded: EventMetadata = _metadata_decoder.decode(text)
    return decoded


def envelope(record: RecordedEvent) -> Envelope:
    return Envelope(
        position=record.position,
        recorded_at=record.recorded_at,
        actor=decode_metadata(record).actor,
    )
