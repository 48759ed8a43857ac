"""Transcript building blocks shared by the agents: a recorder that numbers and redacts
messages, and the shell tool call / tool output shapes both the oracle and the openai agent use.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

from infrastructure.agents.protocol import TranscriptMessage, redact
from infrastructure.clock import utc_now
from infrastructure.sandbox.protocol import ExecResult

# Per stream: enough for a page of a listing or a stack trace, small enough that one chatty
# command neither floods a model's context nor bloats the stored transcript.
STREAM_LIMIT_CHARS = 8 * 1024


class TranscriptRecorder:
    """Builds an agent's transcript: numbers messages from 1, stamps them, and redacts every
    text that goes in (content, tool call arguments, metadata strings), so a secret can only
    reach the stored transcript by a path that bypasses this class."""

    def __init__(
        self,
        secrets: tuple[str, ...],
        listener: Callable[[TranscriptMessage], None] | None = None,
    ) -> None:
        self.secrets = secrets
        self.messages: list[TranscriptMessage] = []
        # Hears every message once it is redacted (the live transcript; see AgentContext).
        self.listener = listener

    def redact(self, text: str) -> str:
        return redact(text, self.secrets)

    def add(
        self,
        role: str,
        content: str | None,
        *,
        tool_calls: list[dict[str, Any]] | None = None,
        tool_call_id: str | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> TranscriptMessage:
        message = TranscriptMessage(
            seq=len(self.messages) + 1,
            role=role,
            content=None if content is None else self.redact(content),
            tool_calls=None if tool_calls is None else [self._scrub(c) for c in tool_calls],
            tool_call_id=tool_call_id,
            metadata={} if metadata is None else self._scrub(dict(metadata)),
            created_at=utc_now(),
        )
        self.messages.append(message)
        if self.listener is not None:
            self.listener(message)
        return message

    def _scrub(self, value: Any) -> Any:
        # Tool calls and metadata are nested JSON-like values; any string inside may carry a
        # secret (tool arguments are model output, error texts echo upstream answers).
        if isinstance(value, str):
            return self.redact(value)
        if isinstance(value, dict):
            return {key: self._scrub(item) for key, item in value.items()}
        if isinstance(value, list | tuple):
            return [self._scrub(item) for item in value]
        return value


def truncate(text: str, limit: int = STREAM_LIMIT_CHARS) -> str:
    """Keep the head and the tail: the end of an output (the error, the result) matters as
    much as its start."""
    if len(text) <= limit:
        return text
    half = limit // 2
    omitted = len(text) - 2 * half
    return f"{text[:half]}\n[... {omitted} characters omitted ...]\n{text[-half:]}"


def format_exec_result(result: ExecResult) -> str:
    """What a shell tool call returns, to the model and in the transcript."""
    status = "killed at the time limit" if result.timed_out else str(result.exit_code)
    return (
        f"exit code: {status}\n"
        f"--- stdout ---\n{truncate(result.stdout)}\n"
        f"--- stderr ---\n{truncate(result.stderr)}"
    )


def exec_metadata(result: ExecResult) -> dict[str, Any]:
    return {
        "exit_code": result.exit_code,
        "timed_out": result.timed_out,
        "duration_ms": round(result.duration_ms, 3),
    }


def shell_tool_call(call_id: str, command: str) -> dict[str, Any]:
    """A `shell` tool call in the OpenAI wire shape, as the transcript stores tool calls."""
    return {
        "id": call_id,
        "type": "function",
        "function": {"name": "shell", "arguments": json.dumps({"command": command})},
    }


def last_line(text: str) -> str | None:
    """The last non-empty line, stripped: the submission convention of flag tasks."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else None
