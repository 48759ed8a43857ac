"""How deep a request body's JSON may nest: the limit that sits beside the size limit.

Both limits come from settings, each from one place: `max_body_bytes` (ASSAY_MAX_BODY_BYTES,
Litestar's `request_max_body_size`, a 413) and `max_json_depth` (ASSAY_MAX_JSON_DEPTH, a 400).
A JSON decoder recurses once per level, so a body of a few thousand `[` exhausts the
interpreter's stack (a RecursionError, which was a 500) long before its size matters. The
depth is therefore measured on the raw bytes, before anything decodes them; no request or
manifest this service reads needs more than a handful of levels.
"""

from __future__ import annotations

import itertools
import operator
import re
from typing import Any

from litestar import Request

from app.errors import ApiError

# A JSON string, escapes included: brackets inside one are text, not nesting.
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
# An opening bracket weighs 2 and a closing one 0, so after k brackets the running sum minus
# k is the depth there: every step stays in C (translate, accumulate, map), no Python loop.
_WEIGHTS = bytes.maketrans(b"[{]}", b"\x02\x02\x00\x00")


def json_depth(body: bytes) -> int:
    """The deepest nesting of arrays and objects in a JSON text (0 for a scalar)."""
    brackets = _STRING.sub(b"", body).translate(None, _NOT_BRACKETS).translate(_WEIGHTS)
    if not brackets:
        return 0
    depths = map(operator.sub, itertools.accumulate(brackets), range(1, len(brackets) + 1))
    deepest: int = max(depths)
    return deepest


def check_json_depth(body: bytes, max_depth: int) -> None:
    """Refuse (400, in the envelope) a JSON body nested deeper than `max_depth`."""
    # Fewer opening brackets than the limit cannot nest past it: most bodies stop here.
    if body.count(b"[") + body.count(b"{") <= max_depth:
        return
    depth = json_depth(body)
    if depth > max_depth:
        raise ApiError(
            400,
            f"request body nests JSON {depth} levels deep; at most {max_depth} are accepted",
        )


def depth_limited_request(max_depth: int) -> type[Request[Any, Any, Any]]:
    """The app's request class: every JSON body a handler decodes (a typed `data`, or
    `request.json()`) is checked for depth first."""

    class DepthLimitedRequest(Request[Any, Any, Any]):
        async def json(self) -> Any:
            check_json_depth(await self.body(), max_depth)
            return await super().json()

    return DepthLimitedRequest
