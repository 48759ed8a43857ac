"""How deep a request body's JSON may nest: the limit that sits beside the size limit.

Both limits come from settings, each from one place: `max_body_bytes` (ASSAY_MAX_BODY_BYTES,
Litestar's `request_max_body_size`, a 413) and `max_json_depth` (ASSAY_MAX_JSON_DEPTH, a 400).
A JSON decoder recurses once per level, so a body of a few thousand `[` exhausts the
interpreter's stack (a RecursionError, which was a 500) long before its size matters. The
depth is therefore measured on the raw bytes, before anything decodes them; no request or
manifest this service reads needs more than a handful of levels.
"""

from __future__ import annotations

import array
import itertools
from typing import Any

from litestar import Request

from app.errors import ApiError

_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_AS_PARENS = bytes.maketrans(b"[{]}", b"(())")
# As signed bytes: an opening bracket +1, a closing one -1 (0xff).
_STEPS = bytes.maketrans(b"()", b"\x01\xff")


def _brackets(body: bytes) -> bytes:
    """The JSON text's brackets outside strings, as `(` and `)`."""
    # Escaped backslashes first, so the quote of `\\"` still ends its string.
    unescaped = body.replace(b"\\\\", b"").replace(b'\\"', b"")
    outside = b"".join(unescaped.split(b'"')[::2])
    return outside.translate(None, _NOT_BRACKETS).translate(_AS_PARENS)


def _depth(brackets: bytes) -> int:
    # Innermost pairs first (one C pass; most of a large body's brackets are such pairs): in
    # balanced text every deepest point is one of them, so the depth is one more than what is
    # left. The rest is a running sum over signed bytes (small ints: no allocation per step).
    if not brackets:
        return 0
    rest = brackets.replace(b"()", b"")
    had_pairs = len(rest) < len(brackets)
    deepest = max(itertools.accumulate(array.array("b", rest.translate(_STEPS))), default=0)
    return max(deepest, 0) + had_pairs


def json_depth(body: bytes) -> int:
    """The deepest nesting of arrays and objects in a JSON text (0 for a scalar); exact for
    well-formed JSON, at most one more for a malformed text."""
    return _depth(_brackets(body))


def nests_deeper_than(body: bytes, max_depth: int) -> bool:
    """Whether a JSON text nests arrays and objects deeper than `max_depth`. Every step is a
    C-level bytes or iterator operation, linear in the body: no Python loop over it."""
    # Fewer opening brackets than the limit cannot nest past it: most bodies stop here.
    if body.count(b"[") + body.count(b"{") <= max_depth:
        return False
    brackets = _brackets(body)
    if b"(" * (max_depth + 1) in brackets:
        return True  # a run of opening brackets alone goes past the limit (the usual attack)
    return _depth(brackets) > max_depth


def check_json_depth(body: bytes, max_depth: int) -> None:
    """Refuse (400, in the envelope) a JSON body nested deeper than `max_depth`."""
    if nests_deeper_than(body, max_depth):
        raise ApiError(
            400,
            f"request body nests JSON deeper than {max_depth} levels (or leaves brackets "
            "unclosed); nothing was decoded",
        )


def depth_limited_request(max_depth: int) -> type[Request[Any, Any, Any]]:
    """The app's request class: every JSON body a handler decodes (a typed `data`, or
    `request.json()`) is checked for depth first."""

    class DepthLimitedRequest(Request[Any, Any, Any]):
        async def json(self) -> Any:
            check_json_depth(await self.body(), max_depth)
            return await super().json()

    return DepthLimitedRequest
