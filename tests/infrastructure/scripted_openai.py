"""A scripted OpenAI-compatible chat completions server on loopback, for agent tests.

A real HTTP server (the agent's real httpx client talks to it over TCP) that answers each
request with the next entry of a script and records what it received, so tests can assert on
both the agent's behaviour and the requests it made (model, bearer key, tools, messages).
It runs in a thread, independent of the test's event loop, so it can serve a test that blocks
in the agent as well as one that drives a worker end to end.

    with ScriptedOpenAI() as server:
        server.push(completion(tool_calls=[tool_call("submit", {"answer": "FLAG{x}"})]))
        ... run the agent with base_url=server.base_url ...
        assert server.requests[0].body["model"] == "m"

When the script runs out the server answers 500 and sets `exhausted`, so a test whose agent
asked for more than expected fails visibly instead of hanging.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

_ids = itertools.count(1)


@dataclass(frozen=True)
class Reply:
    """One scripted answer: a status, a JSON body (or raw text), and an optional delay."""

    status: int = 200
    body: Any = None
    delay_sec: float = 0.0
    # Held until this event is set (at most a minute): a model that is "thinking" for as long
    # as a test needs to look at a run in progress.
    gate: threading.Event | None = None


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    # Lower-cased names, as HTTP headers are case-insensitive.
    headers: dict[str, str]
    body: Any


def tool_call(
    name: str, arguments: dict[str, Any] | str, call_id: str | None = None
) -> dict[str, Any]:
    """A tool call as a model emits it; a str `arguments` is sent verbatim (for malformed JSON)."""
    return {
        "id": call_id or f"call_{next(_ids)}",
        "type": "function",
        "function": {
            "name": name,
            "arguments": arguments if isinstance(arguments, str) else json.dumps(arguments),
        },
    }


def completion(
    content: str | None = None,
    tool_calls: list[dict[str, Any]] | None = None,
    *,
    prompt_tokens: int = 100,
    completion_tokens: int = 20,
) -> Reply:
    """A successful chat completion with one choice."""
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if tool_calls:
        message["tool_calls"] = tool_calls
    return Reply(
        body={
            "id": f"chatcmpl-{next(_ids)}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": "scripted",
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "finish_reason": "tool_calls" if tool_calls else "stop",
                }
            ],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }
    )


def error(status: int, message: str) -> Reply:
    """An error in OpenAI's envelope."""
    return Reply(status=status, body={"error": {"message": message, "type": "scripted"}})


@dataclass
class _State:
    script: deque[Reply] = field(default_factory=deque)
    requests: list[RecordedRequest] = field(default_factory=list)
    exhausted: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)


class ScriptedOpenAI:
    def __init__(self) -> None:
        self._state = _State()
        state = self._state

        class Handler(BaseHTTPRequestHandler):
            # Keep-alive, as real endpoints do, so the client's connection pooling is exercised.
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                try:
                    body: Any = json.loads(raw)
                except ValueError:
                    body = raw.decode("utf-8", "replace")
                with state.lock:
                    state.requests.append(
                        RecordedRequest(
                            method="POST",
                            path=self.path,
                            headers={k.lower(): v for k, v in self.headers.items()},
                            body=body,
                        )
                    )
                    if state.script:
                        reply = state.script.popleft()
                    else:
                        state.exhausted = True
                        reply = error(500, "scripted server: script exhausted")
                if reply.gate is not None:
                    reply.gate.wait(timeout=60)
                if reply.delay_sec:
                    time.sleep(reply.delay_sec)
                payload = (
                    reply.body.encode()
                    if isinstance(reply.body, str)
                    else json.dumps(reply.body).encode()
                )
                try:
                    self.send_response(reply.status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):
                    # The client gave up first (a timeout test does so on purpose).
                    self.close_connection = True

            def log_message(self, format: str, *args: Any) -> None:
                # Quiet: pytest shows stderr of failing tests, and access logs are noise there.
                pass

        # Port 0: the OS picks a free port, so parallel test runs never collide.
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        # Daemon handler threads: a handler sleeping on a delayed reply must not block close().
        self._server.daemon_threads = True
        # A short poll interval: shutdown() waits for the serving loop's next poll, and the
        # default half second per test adds up.
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}/v1"

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._state.lock:
            return list(self._state.requests)

    @property
    def exhausted(self) -> bool:
        return self._state.exhausted

    def push(self, *replies: Reply) -> None:
        with self._state.lock:
            self._state.script.extend(replies)

    def start(self) -> ScriptedOpenAI:
        self._thread.start()
        return self

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> ScriptedOpenAI:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
