"""Every failure becomes the spec's error envelope, here and nowhere else.

    {"code": 422, "detail": "...", "type": "validation_error", "errors": [{"loc", "msg", "type"}]}

Unexpected exceptions are logged with their traceback and answered with a 500 that carries
only the request id: no stack trace, no SQL.
"""

from __future__ import annotations

import re
import uuid
from typing import Any

import msgspec
import structlog
from litestar import Request, Response
from litestar.exceptions import HTTPException, ValidationException
from litestar.status_codes import HTTP_500_INTERNAL_SERVER_ERROR

from app.api.registry_paths import is_registry_path
from app.services import errors as service
from app.services.errors import FieldProblem
from app.services.idempotency import IdempotencyKeyReused, InvalidIdempotencyKey
from app.services.registry_errors import (
    BadDigest,
    ManifestInvalid,
    RegistryDenied,
    RegistryError,
    RegistryNotFound,
    VersionConflict,
)
from domain.errors import IllegalTransition, InvalidCommand
from infrastructure.db.outage import is_database_unavailable
from infrastructure.eventstore import ConcurrencyConflict, IdempotencyConflict
from infrastructure.identity.records import AlreadyExists, InvalidValue, NotFound
from infrastructure.metrics import DB_UNAVAILABLE
from infrastructure.queries import AmbiguousId, IdPrefixTooShort

log = structlog.get_logger("assay.errors")

TYPES_BY_STATUS = {
    400: "bad_request",
    401: "authentication_error",
    403: "permission_denied",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "validation_error",
    426: "upgrade_required",
    429: "rate_limited",
    500: "internal_error",
    502: "bad_gateway",
    503: "service_unavailable",
    504: "gateway_timeout",
}


# One problem with one field, as the envelope's `errors` lists it (the services' own type).
FieldError = FieldProblem


class ErrorEnvelope(msgspec.Struct, frozen=True, omit_defaults=True):
    code: int
    detail: str
    type: str
    errors: list[FieldError] | None = None
    request_id: str | None = None


class OciError(msgspec.Struct, frozen=True):
    code: str
    message: str
    detail: dict[str, str] = {}


class OciErrorEnvelope(msgspec.Struct, frozen=True, omit_defaults=True):
    """The envelope on registry paths: OCI's `errors: [{code, message}]`, plus `detail` (what
    the dn client prints when a push is refused), `type` and the request id."""

    errors: list[OciError]
    detail: str
    type: str
    request_id: str | None = None


class ApiError(Exception):
    """An error the API answers on purpose, with its status and stable type."""

    def __init__(
        self,
        status: int,
        detail: str,
        *,
        type: str | None = None,
        errors: list[FieldError] | None = None,
        headers: dict[str, str] | None = None,
        oci_code: str | None = None,
    ) -> None:
        super().__init__(detail)
        self.oci_code = oci_code
        self.status = status
        self.detail = detail
        self.type = type or TYPES_BY_STATUS.get(status, "error")
        self.errors = errors
        self.headers = headers or {}


def not_found(what: str) -> ApiError:
    return ApiError(404, f"{what} not found")


_OCI_CODES_BY_STATUS = {
    400: "UNSUPPORTED",
    401: "UNAUTHORIZED",
    403: "DENIED",
    404: "NAME_UNKNOWN",
    405: "UNSUPPORTED",
    409: "DENIED",
    413: "SIZE_INVALID",
    429: "TOOMANYREQUESTS",
}


def _respond(
    request: Request[Any, Any, Any], error: ApiError
) -> Response[ErrorEnvelope] | Response[OciErrorEnvelope]:
    # Router-level failures (unknown route, wrong method) arrive before the request-id
    # middleware runs; they still get an id to quote.
    request_id = request.scope.get("state", {}).get("request_id") or uuid.uuid4().hex
    if is_registry_path(request.url.path):
        headers = {**error.headers, "x-request-id": request_id}
        if error.status == 401:
            headers["WWW-Authenticate"] = 'Basic realm="assay"'
        oci_code = error.oci_code or _OCI_CODES_BY_STATUS.get(error.status, "UNKNOWN")
        oci = OciErrorEnvelope(
            errors=[OciError(code=oci_code, message=error.detail)],
            detail=error.detail,
            type=error.type,
            request_id=request_id,
        )
        if request.method == "HEAD":
            return Response(None, status_code=error.status, headers=headers)  # type: ignore[return-value]
        return Response(oci, status_code=error.status, headers=headers)
    body = ErrorEnvelope(
        code=error.status,
        detail=error.detail,
        type=error.type,
        errors=error.errors,
        request_id=request_id,
    )
    # Failures answered outside the request middleware (rate limit, routing, its own checks)
    # still echo the id; the middleware adds it only where it is missing.
    headers = {**error.headers, "x-request-id": request_id}
    return Response(body, status_code=error.status, headers=headers)


_AT_PATH = re.compile(r" - at `\$(?P<path>[^`]*)`$")
_MISSING_FIELD = re.compile(r"missing required field `(?P<field>[^`]+)`")


def _validation_errors(exc: ValidationException) -> list[FieldError]:
    found: list[FieldError] = []
    for entry in exc.extra if isinstance(exc.extra, list) else []:
        if not isinstance(entry, dict):
            continue
        message = str(entry.get("message", "invalid value"))
        source = entry.get("source") or "body"
        key = entry.get("key")
        # Litestar passes the source as a ParamType enum for query/path/header parameters.
        loc: list[str | int] = [str(getattr(source, "value", source))]
        match = _AT_PATH.search(message)
        if match:
            message = message[: match.start()]
            loc += [int(p) if p.isdigit() else p for p in re.findall(r"\w+", match["path"])]
        elif key and key != "data":
            # Litestar joins a nested path into one key (`secret_ids[1]`, `a.b`): split it.
            loc += [int(p) if p.isdigit() else p for p in re.findall(r"[^.\[\]]+", str(key))]
        missing = _MISSING_FIELD.search(message)
        if missing:
            loc.append(missing["field"])
        found.append(FieldError(loc=loc, msg=message, type="value_error"))
    return found


def handle_exception(
    request: Request[Any, Any, Any], exc: Exception
) -> Response[ErrorEnvelope] | Response[OciErrorEnvelope]:
    """The single exception handler registered on the app."""
    return _respond(request, to_api_error(request, exc))


def _registry_error(exc: RegistryError) -> ApiError:
    match exc:
        case RegistryNotFound():
            status = 404
        case RegistryDenied():
            status = 403
        case VersionConflict():
            status = 409
        case BadDigest() | ManifestInvalid():
            status = 400
        case _:
            status = 400
    return ApiError(status, str(exc), oci_code=exc.oci_code)


def to_api_error(request: Request[Any, Any, Any], exc: Exception) -> ApiError:
    match exc:
        case ApiError():
            return exc
        case ValidationException():
            if request.method in ("GET", "DELETE"):
                return ApiError(400, "invalid query parameters", errors=_validation_errors(exc))
            return ApiError(422, "request body failed validation", errors=_validation_errors(exc))
        case IllegalTransition() | IdempotencyConflict():
            return ApiError(409, str(exc))
        case ConcurrencyConflict():
            return ApiError(409, str(exc), type="concurrency_conflict")
        case RegistryError():
            return _registry_error(exc)
        case AmbiguousId():
            return ApiError(409, str(exc), type="ambiguous_id")
        case IdPrefixTooShort():
            return ApiError(400, str(exc), type="id_prefix_too_short")
        case service.NotFound():
            return ApiError(404, str(exc))
        case service.Forbidden():
            return ApiError(403, str(exc))
        case service.InvalidInput():
            return ApiError(422, str(exc), errors=exc.problems)
        case service.StateConflict():
            return ApiError(409, str(exc))
        case service.ActionFailed():
            return ApiError(500, str(exc), type="action_failed")
        case InvalidCommand() | InvalidValue():
            return ApiError(422, str(exc))
        case AlreadyExists():
            return ApiError(409, str(exc))
        case IdempotencyKeyReused():
            return ApiError(409, str(exc), type="already_exists")
        case InvalidIdempotencyKey():
            loc: list[str | int] = ["header", "Idempotency-Key"]
            return ApiError(
                400, str(exc), errors=[FieldError(loc=loc, msg=str(exc), type="value_error")]
            )
        case NotFound():
            return ApiError(404, str(exc))
        case HTTPException():
            status = exc.status_code
            headers = dict(exc.headers or {})
            if status == 429:
                headers["Retry-After"] = headers.get("RateLimit-Reset", "60")
                return ApiError(429, "rate limit exceeded; retry later", headers=headers)
            if status == 400 and "malformed" in str(exc.detail).lower():
                return ApiError(400, f"malformed JSON body: {exc.detail}")
            detail = {
                404: "no such route",
                405: f"method {request.method} not allowed on this route",
                413: "request body is too large",
            }.get(status, str(exc.detail))
            return ApiError(status, detail, headers=headers)
    if is_database_unavailable(exc):
        # Restarting or unreachable: a passing state the client should retry, not a bug.
        DB_UNAVAILABLE.inc()
        log.warning("database_unavailable", path=request.url.path, error=repr(exc))
        return ApiError(
            503, "the database is unavailable; retry shortly", headers={"Retry-After": "5"}
        )
    log.error(
        "unhandled_exception",
        path=request.url.path,
        method=request.method,
        exc_info=exc,
    )
    return ApiError(
        HTTP_500_INTERNAL_SERVER_ERROR,
        "internal error; quote the request id when reporting it",
    )
