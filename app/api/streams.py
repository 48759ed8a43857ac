"""Live streams (server-sent events): one evaluation's events, and the org feed.

Each message is `id: <position>`, `event: <type>`, `data: <JSON>`; an evaluation stream
follows every event with an `event: evaluation` message (same id) carrying the evaluation as
it now is. `Last-Event-ID` (what a browser's EventSource sends when it reconnects) or
`?after=` resumes after a position; the header wins when both are given. What was committed
before the stream joined the live tail is read from the database first (see
infrastructure.live.hub for why nothing is lost or repeated).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Annotated, Any

import msgspec
from litestar import Controller, Request, get
from litestar.params import Parameter
from litestar.response import Stream

from app.api.context import container_of, evaluation_in, resolve_scope
from app.api.feed import feed_org
from app.api.openapi import errors_for
from app.api.schemas import evaluation_response, history_event
from app.auth import Scope, raw_key_of
from app.container import Container
from app.errors import ApiError, FieldError
from app.web.session import session_key
from domain.evaluation import TERMINAL_STATUSES
from domain.projections import EvaluationView
from infrastructure.eventstore import RecordedEvent
from infrastructure.live.hub import Subscription, evaluation_key, org_key
from infrastructure.live.routing import Routed, org_events

PAGE = 500
BATCH = 256
KEEP_ALIVE = b": keep-alive\n\n"
DROPPED = b": dropped: this stream fell too far behind; reconnect with Last-Event-ID\n\n"
HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
_encoder = msgspec.json.Encoder()

After = Annotated[
    int | None, Parameter(ge=0, description="resume after this position (Last-Event-ID wins)")
]


def resume_position(request: Request[Any, Any, Any], after: int | None) -> int:
    raw = request.headers.get("last-event-id")
    if raw is None or not raw.strip():
        return after or 0
    value = raw.strip()
    if not value.isdigit():
        message = f"Last-Event-ID must be an event position (a whole number), not {value!r}"
        raise ApiError(
            422,
            message,
            errors=[FieldError(loc=["header", "Last-Event-ID"], msg=message, type="value_error")],
        )
    return int(value)


def _message(position: int, kind: str, data: bytes) -> bytes:
    return b"id: %d\nevent: %s\ndata: %s\n\n" % (position, kind.encode(), data)


def _event_message(record: RecordedEvent) -> bytes:
    return _message(record.position, record.event_type, _encoder.encode(history_event(record)))


def _routed_message(routed: Routed) -> bytes:
    # Rendered once per event, whatever the number of subscribers.
    if routed.wire is None:
        routed.wire = _event_message(routed.record)
    return routed.wire


# The last rendering of each evaluation view: the tailer hands the same view object to every
# stream of that evaluation, so it is encoded once, not once per stream.
_rendered: dict[str, tuple[EvaluationView, int, bytes]] = {}
RENDERED_LIMIT = 10_000


def _evaluation_json(view: EvaluationView, capacity: int) -> bytes:
    entry = _rendered.get(view.id)
    if entry is not None and entry[0] is view and entry[1] == capacity:
        return entry[2]
    if len(_rendered) >= RENDERED_LIMIT:
        _rendered.clear()
    wire = _encoder.encode(evaluation_response(view, capacity))
    _rendered[view.id] = (view, capacity, wire)
    return wire


async def _live(subscription: Subscription, heartbeat: float) -> AsyncIterator[list[Routed] | None]:
    """Events from the subscription's queue, as many at a time as are waiting (one write for
    them all), and None whenever a keep-alive is due. Ends when the subscription was dropped
    for falling behind."""
    next_beat = time.monotonic() + heartbeat
    while True:
        ready = await subscription.wait(max(0.0, next_beat - time.monotonic()))
        if time.monotonic() >= next_beat:
            next_beat = time.monotonic() + heartbeat
            yield None
        if not ready:
            continue
        if subscription.dropped:
            return
        yield subscription.take(BATCH)


async def _evaluation_messages(
    container: Container, evaluation_id: str, cursor: int, heartbeat: float
) -> AsyncIterator[bytes]:
    queries = container.queries

    async def catch_up(cursor: int) -> tuple[int, list[bytes], bool]:
        """Messages for what the database holds after `cursor`, and whether the evaluation
        was terminal before the last (empty) read: then everything up to it has been sent."""
        out: list[bytes] = []
        while True:
            # From the database, never a cached view: a view cached before another process's
            # last append would never turn terminal (the stream would never end), or would
            # send an evaluation object older than the events before it.
            (before,) = await queries.evaluations_by_id([evaluation_id])
            page = await queries.evaluation_history(
                evaluation_id, after_position=cursor, limit=PAGE
            )
            if not page:
                return cursor, out, before.status in TERMINAL_STATUSES
            (now,) = await queries.evaluations_by_id([evaluation_id])
            current = _evaluation_json(now, await container.capacity())
            for record in page:
                out.append(_event_message(record))
                out.append(_message(record.position, "evaluation", current))
            cursor = page[-1].position

    subscription = await container.live.subscribe(evaluation_key(evaluation_id))
    try:
        cursor, messages, finished = await catch_up(cursor)
        for message in messages:
            yield message
        if finished:
            return
        async for batch in _live(subscription, heartbeat):
            if batch is None:
                yield KEEP_ALIVE
                continue
            out: list[bytes] = []
            view: EvaluationView | None = None
            for routed in batch:
                if routed.record.position <= cursor:
                    continue  # already sent from the database
                view = routed.evaluation or await queries.evaluation(evaluation_id)
                assert view is not None  # evaluations are never removed
                cursor = routed.record.position
                out.append(_routed_message(routed))
                out.append(
                    _message(
                        cursor, "evaluation", _evaluation_json(view, await container.capacity())
                    )
                )
            if out:
                yield b"".join(out)
            if view is not None and view.status in TERMINAL_STATUSES:
                cursor, messages, finished = await catch_up(cursor)
                for message in messages:
                    yield message
                if finished:
                    return
        if subscription.dropped:
            yield DROPPED
    finally:
        container.live.unsubscribe(subscription)


async def _feed_messages(
    container: Container,
    org_id: str,
    cursor: int,
    heartbeat: float,
    read: Callable[[int], Awaitable[list[RecordedEvent]]],
) -> AsyncIterator[bytes]:
    subscription = await container.live.subscribe(org_key(org_id))
    try:
        while page := await read(cursor):
            for record in page:
                yield _event_message(record)
            cursor = page[-1].position
        async for batch in _live(subscription, heartbeat):
            if batch is None:
                yield KEEP_ALIVE
                continue
            fresh = [r for r in batch if r.record.position > cursor]
            if fresh:
                yield b"".join(_routed_message(r) for r in fresh)
                cursor = fresh[-1].record.position
        if subscription.dropped:
            yield DROPPED
    finally:
        container.live.unsubscribe(subscription)


async def _stream_scope(request: Request[Any, Any, Any], org: str, ws: str) -> Scope:
    """The caller by API key, or else by the dashboard's session cookie (a browser's
    EventSource cannot send a header; the cookie is HttpOnly and SameSite=Lax)."""
    container = container_of(request)
    if raw_key_of(request) is None:
        raw = await session_key(request, container.settings)
        if raw is not None:
            principal = await container.authenticator.principal_of_key(raw)
            return await container.authenticator.scope(principal, org, ws)
    return await resolve_scope(request, org, ws)


class StreamController(Controller):
    path = "/api/v1/org/{org:str}"
    tags = ["audit"]

    @get(
        "/ws/{ws:str}/evaluation/{evaluation_id:str}/stream",
        media_type="text/event-stream",
        responses=errors_for(401, 404, 409, 422, 426, 429),
    )
    async def evaluation_stream(
        self,
        request: Request[Any, Any, Any],
        org: str,
        ws: str,
        evaluation_id: str,
        after: After = None,
    ) -> Stream:
        """The evaluation's events (items included) as they are committed, each followed by
        the evaluation as it now is; ends once the evaluation is terminal and all is sent."""
        tenant = await _stream_scope(request, org, ws)
        view = await evaluation_in(request, tenant, evaluation_id)
        cursor = resume_position(request, after)
        container = container_of(request)
        heartbeat = container.settings.sse_heartbeat_seconds
        return Stream(
            _evaluation_messages(container, view.id, cursor, heartbeat),
            media_type="text/event-stream",
            headers=HEADERS,
        )

    @get(
        "/events/stream",
        media_type="text/event-stream",
        responses=errors_for(401, 403, 404, 422, 426, 429),
    )
    async def feed_stream(
        self, request: Request[Any, Any, Any], org: str, after: After = None
    ) -> Stream:
        """The org feed, live (owners, admins and auditors)."""
        found = await feed_org(request, org)
        cursor = resume_position(request, after)
        container = container_of(request)

        async def read(after_position: int) -> list[RecordedEvent]:
            return await org_events(container.engine, found.id, after=after_position, limit=PAGE)

        return Stream(
            _feed_messages(
                container, found.id, cursor, container.settings.sse_heartbeat_seconds, read
            ),
            media_type="text/event-stream",
            headers=HEADERS,
        )
