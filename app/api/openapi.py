"""OpenAPI descriptions of the error envelope, shared by every route."""

from __future__ import annotations

from litestar.openapi.datastructures import ResponseSpec

from app.errors import TYPES_BY_STATUS, ErrorEnvelope

_DESCRIPTIONS = {
    400: "Malformed JSON or an invalid query parameter",
    401: "Missing, unknown or revoked API key",
    403: "Your role does not allow this",
    404: "No such resource in your tenancy",
    409: "State conflict (e.g. already finished), or an ambiguous id prefix",
    413: "Request body over the configured limit",
    415: "Request body is not JSON",
    422: "Validation failed; `errors` names each field",
    426: "dreadnode-sdk client older than the supported floor",
    429: "Rate limit exceeded; see Retry-After",
}


def errors_for(*statuses: int) -> dict[int, ResponseSpec]:
    return {
        status: ResponseSpec(
            data_container=ErrorEnvelope,
            description=f"{_DESCRIPTIONS.get(status, '')} (type `{TYPES_BY_STATUS[status]}`)",
        )
        for status in statuses
    }
