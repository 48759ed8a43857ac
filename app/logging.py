"""structlog set-up: one line per log record on stderr, JSON when `ASSAY_LOG_JSON` is on (the
default), each with the request id bound by the middleware.

Third-party libraries log through the standard library (uvicorn, litestar, sqlalchemy,
asyncio, alembic): the root logger gets one handler whose formatter is structlog's, so their
records come out in the same shape (`event`, `level`, `logger`, `timestamp`) as ours, and the
libraries' own handlers are removed so nothing prints twice or in another format.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from typing import Any

import msgspec
import structlog

# Loggers that libraries configure with handlers of their own; emptied so they propagate to
# the root handler. uvicorn's are configured away by `log_config=None` (app/cli/serve.py).
THIRD_PARTY = (
    "uvicorn",
    "uvicorn.error",
    "litestar",
    "sqlalchemy",
    "asyncio",
    "alembic",
    "httpx",
)
# Chatty at INFO for an operator (every HTTP request an agent makes): heard from WARNING up
# unless ASSAY_LOG_LEVEL is DEBUG.
QUIET_AT_INFO = ("httpx", "httpcore")
# SQLAlchemy logs every statement with its bound parameters at INFO (API key hashes, secret
# ciphertexts): from WARNING up only, whatever the level.
WARNINGS_ONLY = ("sqlalchemy",)
# Replaced by the request middleware's access line (method, path, status, duration, request id).
SILENCED = ("uvicorn.access",)


def _to_json(value: object, default: Callable[[Any], Any] = repr, **_options: object) -> str:
    """structlog's JSON serializer: msgspec's encoder, several times faster than the standard
    library's on an access line (every request writes one); what it cannot encode goes
    through structlog's fallback (`default`: its repr)."""
    return msgspec.json.encode(value, enc_hook=default).decode()


def configure_logging(level: str = "INFO", json: bool = True) -> None:
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        numeric = logging.INFO
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer(serializer=_to_json)
        if json
        else structlog.dev.ConsoleRenderer()
    )
    timestamper = structlog.processors.TimeStamper(fmt="iso", utc=True)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            timestamper,
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[
            structlog.contextvars.merge_contextvars,
            structlog.stdlib.add_log_level,
            structlog.stdlib.add_logger_name,
            structlog.stdlib.PositionalArgumentsFormatter(),
            timestamper,
        ],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            renderer,
        ],
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(numeric)
    for name in THIRD_PARTY:
        library = logging.getLogger(name)
        library.handlers = []
        library.propagate = True
        library.setLevel(logging.NOTSET)
    for name in QUIET_AT_INFO:
        logging.getLogger(name).setLevel(max(numeric, logging.WARNING))
    for name in WARNINGS_ONLY:
        logging.getLogger(name).setLevel(logging.WARNING)
    for name in SILENCED:
        silenced = logging.getLogger(name)
        silenced.handlers = []
        silenced.propagate = False
