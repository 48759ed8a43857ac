"""`assay worker --metrics-port`: a worker process serves its own Prometheus metrics (busy and
free slots, sandbox start time, appends) on a small HTTP server of the client library's WSGI
app, in a thread, since a worker runs no API. ASSAY_METRICS_TOKEN guards it as it guards the
API's `/metrics`; a refusal is the API's error envelope."""

from __future__ import annotations

import hmac
import threading
import uuid
from collections.abc import Callable, Iterable
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import msgspec
from prometheus_client import make_wsgi_app

StartResponse = Callable[..., Any]


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes every few seconds are not worth a log line each."""


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


def _guarded(token: str | None) -> Callable[[dict[str, Any], StartResponse], Iterable[bytes]]:
    metrics = make_wsgi_app()

    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        given = environ.get("HTTP_AUTHORIZATION", "")
        if token is not None and not hmac.compare_digest(given, f"Bearer {token}"):
            body = msgspec.json.encode(
                {
                    "code": 401,
                    "detail": "metrics need ASSAY_METRICS_TOKEN as `Authorization: Bearer <token>`",
                    "type": "authentication_error",
                    "request_id": uuid.uuid4().hex,
                }
            )
            start_response(
                "401 Unauthorized",
                [
                    ("Content-Type", "application/json"),
                    ("WWW-Authenticate", 'Bearer realm="metrics"'),
                ],
            )
            return [body]
        result: Iterable[bytes] = metrics(environ, start_response)
        return result

    return app


class MetricsServer:
    def __init__(self, host: str, port: int, token: str | None) -> None:
        self._server = make_server(
            host, port, _guarded(token), server_class=_ThreadingServer, handler_class=_QuietHandler
        )
        self.port = self._server.server_port
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="metrics", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
