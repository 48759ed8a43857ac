"""Request-scoped concerns that apply before routing: request ids and the client floor."""

from __future__ import annotations

import re
import uuid
from typing import Any

import structlog
from litestar import Request
from litestar.datastructures import MutableScopeHeaders
from litestar.enums import ScopeType
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from app.errors import ApiError

_SDK_AGENT = re.compile(r"dreadnode-sdk/(\d+(?:\.\d+)*)")
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def request_id_middleware(app: ASGIApp) -> ASGIApp:
    """Give every request an id (the caller's X-Request-ID when sane), log it, echo it."""

    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:
            await app(scope, receive, send)
            return
        supplied = next(
            (v.decode("latin-1") for k, v in scope["headers"] if k == b"x-request-id"), None
        )
        request_id = supplied if supplied and _REQUEST_ID.match(supplied) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        structlog.contextvars.bind_contextvars(request_id=request_id)

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableScopeHeaders(message)["x-request-id"] = request_id
            await send(message)

        try:
            await app(scope, receive, send_with_id)
        finally:
            structlog.contextvars.unbind_contextvars("request_id")

    return middleware


def version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split(".") if part.isdigit())


def _older_than(version: tuple[int, ...], floor: tuple[int, ...]) -> bool:
    """version < floor, with missing components read as 0 (2.0 is 2.0.0)."""
    width = max(len(version), len(floor))
    return version + (0,) * (width - len(version)) < floor + (0,) * (width - len(floor))


def check_client_version(request: Request[Any, Any, Any], minimum: str) -> None:
    """Refuse a `dreadnode-sdk/<v>` older than the floor; other user agents pass."""
    match = _SDK_AGENT.search(request.headers.get("user-agent", ""))
    if match and _older_than(version_tuple(match[1]), version_tuple(minimum)):
        raise ApiError(
            426,
            f"dreadnode-sdk {match[1]} is older than the oldest supported client {minimum}; "
            "upgrade with `pip install -U dreadnode`",
        )


def check_json_body(request: Request[Any, Any, Any]) -> None:
    """A request that sends a body must say it is JSON."""
    if request.method not in ("POST", "PUT", "PATCH"):
        return
    length = request.headers.get("content-length")
    has_body = (length is not None and length != "0") or "transfer-encoding" in request.headers
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if has_body and content_type != "application/json" and not content_type.endswith("+json"):
        raise ApiError(
            415, f"request body must be application/json, not {content_type or 'unspecified'!r}"
        )
