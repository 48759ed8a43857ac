"""The oracle agent: runs the task's reference solution in the sandbox.

Every task must pass with it, so a failing oracle item points at a broken bundle or a broken
sandbox, never at a model. Its transcript has the same shape as the openai agent's shell tool
calls (an assistant message carrying a `shell` tool call, then the tool's output), which is why
the transcript helpers both agents share live here: the oracle is the dependency-free one.
"""

from __future__ import annotations

import json
import shlex
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from infrastructure.agents.protocol import AgentContext, AgentOutcome, TranscriptMessage, redact
from infrastructure.sandbox.protocol import ExecResult, Sandbox

# Per stream: enough for a page of a listing or a stack trace, small enough that one chatty
# command neither floods a model's context nor bloats the stored transcript.
STREAM_LIMIT_CHARS = 8 * 1024


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


class TranscriptRecorder:
    """Builds an agent's transcript: numbers messages from 1, stamps them, and redacts every
    text that goes in (content, tool call arguments, metadata strings), so a secret can only
    reach the stored transcript by a path that bypasses this class."""

    def __init__(self, secrets: tuple[str, ...]) -> None:
        self.secrets = secrets
        self.messages: list[TranscriptMessage] = []

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


class OracleAgent:
    name: str = "oracle"

    async def run(self, sandbox: Sandbox, context: AgentContext) -> AgentOutcome:
        started = time.monotonic()
        recorder = TranscriptRecorder(context.redact)
        task = context.task

        def outcome(stop_reason: str, **fields: Any) -> AgentOutcome:
            return AgentOutcome(
                transcript=recorder.messages,
                stop_reason=stop_reason,
                duration_ms=(time.monotonic() - started) * 1000,
                **fields,
            )

        def failed(error: str) -> AgentOutcome:
            recorder.add("assistant", error, metadata={"kind": "error"})
            return outcome("error", submission=None, error=error)

        # `solution` and `solution_path` are None together; both are tested so that each is
        # narrowed for the type checker.
        if task.solution is None or task.solution_path is None:
            return failed("task has no reference solution")
        try:
            script = task.solution_path.read_bytes()
        except OSError as exc:
            # The catalog checked the file at load time; losing it since is a broken
            # deployment, reported on the item rather than retried (a retry finds it gone too).
            return failed(f"cannot read the reference solution: {exc}")

        # Same relative path as in the bundle, so a solution that refers to itself or its
        # neighbours by relative path still finds them. The runner left it out of the copy so
        # that other agents never see it; only the oracle puts it in.
        await sandbox.put_file(task.solution, script, mode=0o755)
        command = f"bash {shlex.quote(task.solution)}"
        recorder.add(
            "assistant",
            "Running the task's reference solution.",
            tool_calls=[shell_tool_call("call_1", command)],
        )
        remaining = context.timeout_sec - (time.monotonic() - started)
        if remaining <= 0:
            recorder.add("tool", "not run: the time budget is spent", tool_call_id="call_1")
            return outcome("timeout", submission=None, total_tool_calls=1)
        result = await sandbox.run(command, timeout_sec=remaining)
        recorder.add(
            "tool",
            format_exec_result(result),
            tool_call_id="call_1",
            metadata=exec_metadata(result),
        )
        if result.timed_out:
            # Whatever it printed before the kill is not its answer: a half-run is no solve.
            return outcome("timeout", submission=None, total_tool_calls=1)
        submission = last_line(result.stdout)
        return outcome(
            "finished",
            submission=None if submission is None else recorder.redact(submission),
            total_tool_calls=1,
        )
