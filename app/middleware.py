"""What every request goes through first, on the raw ASGI scope (cheap: one header scan):
a request id (bound to the log context and echoed), the client version floor, the rule that an
API request with a body sends JSON, and one access line per request once it is answered (method,
path, status, duration in ms, request id)."""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable

import structlog
from litestar.enums import ScopeType
from litestar.exceptions import HTTPException
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from app.api.registry_paths import is_registry_path
from app.errors import ApiError
from infrastructure.metrics import observe_request

_SDK_AGENT = re.compile(r"dreadnode-sdk/(\d+(?:\.\d+)*)")
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_WANTED = (b"x-request-id", b"user-agent", b"content-type", b"content-length", b"transfer-encoding")
_WITH_BODY = frozenset({"POST", "PUT", "PATCH"})
# Probes a load balancer sends every few seconds: their access lines are debug, not info.
_PROBES = frozenset({"/health", "/ready", "/metrics"})

access_log = structlog.get_logger("assay.access")


def version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split(".") if part.isdigit())


def _older_than(version: tuple[int, ...], floor: tuple[int, ...]) -> bool:
    """version < floor, with missing components read as 0 (2.0 is 2.0.0)."""
    width = max(len(version), len(floor))
    return version + (0,) * (width - len(version)) < floor + (0,) * (width - len(floor))


def check_client_version(user_agent: str, minimum: str) -> None:
    """Refuse a `dreadnode-sdk/<v>` older than the floor; other user agents pass."""
    match = _SDK_AGENT.search(user_agent)
    if match and _older_than(version_tuple(match[1]), version_tuple(minimum)):
        raise ApiError(
            426,
            f"dreadnode-sdk {match[1]} is older than the oldest supported client {minimum}; "
            "upgrade with `pip install -U dreadnode`",
        )


def check_json_body(method: str, headers: dict[bytes, str]) -> None:
    """A request that sends a body must say it is JSON."""
    if method not in _WITH_BODY:
        return
    length = headers.get(b"content-length")
    has_body = (length is not None and length != "0") or b"transfer-encoding" in headers
    content_type = headers.get(b"content-type", "").split(";")[0].strip().lower()
    if has_body and content_type != "application/json" and not content_type.endswith("+json"):
        raise ApiError(
            415, f"request body must be application/json, not {content_type or 'unspecified'!r}"
        )


def request_middleware(min_client_version: str) -> Callable[[ASGIApp], ASGIApp]:
    def factory(app: ASGIApp) -> ASGIApp:
        async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != ScopeType.HTTP:
                await app(scope, receive, send)
                return
            headers = {k: v.decode("latin-1") for k, v in scope["headers"] if k in _WANTED}
            supplied = headers.get(b"x-request-id")
            request_id = (
                supplied if supplied and _REQUEST_ID.match(supplied) else os.urandom(16).hex()
            )
            scope.setdefault("state", {})["request_id"] = request_id
            structlog.contextvars.bind_contextvars(request_id=request_id)
            echoed = (b"x-request-id", request_id.encode())
            started = time.perf_counter()
            status = 500  # what the client sees if nothing answers (the server's own 500)

            async def send_with_id(message: Message) -> None:
                nonlocal status
                if message["type"] == "http.response.start":
                    status = int(message["status"])
                    present = message.get("headers", ())
                    if not any(name.lower() == b"x-request-id" for name, _ in present):
                        message["headers"] = [*present, echoed]
                await send(message)

            try:
                check_client_version(headers.get(b"user-agent", ""), min_client_version)
                # Registry bodies are bytes; the dashboard's forms (outside /api/) are forms.
                if scope["path"].startswith("/api/") and not is_registry_path(scope["path"]):
                    check_json_body(scope["method"], headers)
                await app(scope, receive, send_with_id)
            except ApiError as exc:
                status = exc.status
                raise
            except HTTPException as exc:  # e.g. the dashboard's CSRF check, refused as 403
                status = exc.status_code
                raise
            finally:
                path = scope["path"]
                elapsed = time.perf_counter() - started
                observe_request(scope["method"], scope.get("path_template"), status, elapsed)
                write = access_log.debug if path in _PROBES else access_log.info
                write(
                    "request",
                    method=scope["method"],
                    path=path,
                    status=status,
                    duration_ms=round(elapsed * 1000, 2),
                )
                structlog.contextvars.unbind_contextvars("request_id")

        return middleware

    return factory
