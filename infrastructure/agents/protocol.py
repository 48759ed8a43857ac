"""What the engine needs from an agent: given a sandbox and a task, try to solve it.

An agent returns an `AgentOutcome` (its submission, transcript and counts) whatever the
quality of its answer; verification decides pass or fail. It raises `AgentInfraError` only
when something outside it failed (the model endpoint unreachable or erroring), which ends the
item in infra_error and is retried with backoff.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol

import msgspec

from infrastructure.sandbox.protocol import Sandbox
from infrastructure.tasks import Task


class AgentInfraError(Exception):
    """An upstream the agent depends on failed (model endpoint down, 5xx, bad gateway)."""


class TranscriptMessage(msgspec.Struct, frozen=True, kw_only=True):
    seq: int
    role: str  # system | user | assistant | tool
    content: str | None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None
    metadata: dict[str, Any] = {}
    created_at: str


class AgentContext(msgspec.Struct, frozen=True, kw_only=True):
    task: Task
    instruction: str
    model: str | None
    max_steps: int
    timeout_sec: float
    base_url: str | None = None
    api_key: str | None = None
    # Values to redact from everything the agent records (secret values injected in the env).
    redact: tuple[str, ...] = ()
    # Environment for the agent's commands: the task's services as scripts see them
    # (`WEB_URL`, ...), beside the secrets the sandbox already carries.
    env: Mapping[str, str] = {}
    # Told of each transcript message as it is recorded (already redacted), so the transcript
    # can be read while the agent runs; must not block (it only queues the message).
    on_message: Callable[[TranscriptMessage], None] | None = None


class AgentOutcome(msgspec.Struct, frozen=True, kw_only=True):
    submission: str | None
    transcript: list[TranscriptMessage]
    stop_reason: str  # submitted | finished | max_steps | timeout | error
    generation_steps: int = 0
    total_tool_calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    duration_ms: float = 0.0
    error: str | None = None

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    def agent_result(self, agent: str) -> dict[str, Any]:
        """The `metadata_json._dreadnode.agent_result` object of the wire contract."""
        return {
            "agent": agent,
            "stop_reason": self.stop_reason,
            "generation_steps": self.generation_steps,
            "total_tool_calls": self.total_tool_calls,
            "total_tokens": self.total_tokens,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "duration_ms": round(self.duration_ms, 3),
            "error": self.error,
        }


class Agent(Protocol):
    name: str

    async def run(self, sandbox: Sandbox, context: AgentContext) -> AgentOutcome: ...


def redact(text: str, secrets: tuple[str, ...] | Mapping[str, str]) -> str:
    """Replace every secret value in `text` with a marker (values shorter than 4 are skipped:
    masking single characters would shred ordinary text and protects nothing)."""
    values = secrets.values() if isinstance(secrets, Mapping) else secrets
    for value in sorted((v for v in values if len(v) >= 4), key=len, reverse=True):
        text = text.replace(value, "[REDACTED]")
    return text
