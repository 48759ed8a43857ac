"""The oracle agent: runs the task's reference solution in the sandbox.

Every task must pass with it, so a failing oracle item points at a broken bundle or a broken
sandbox, never at a model. Its transcript has the same shape as the openai agent's shell tool
calls (an assistant message carrying a `shell` tool call, then the tool's output), which is why
both use the helpers of `infrastructure.agents.transcript`.
"""

from __future__ import annotations

import shlex
import time
from typing import Any

from infrastructure.agents.protocol import AgentContext, AgentOutcome
from infrastructure.agents.transcript import (
    TranscriptRecorder,
    exec_metadata,
    format_exec_result,
    last_line,
    shell_tool_call,
)
from infrastructure.sandbox.protocol import Sandbox


class OracleAgent:
    name: str = "oracle"

    async def run(self, sandbox: Sandbox, context: AgentContext) -> AgentOutcome:
        started = time.monotonic()
        recorder = TranscriptRecorder(context.redact, context.on_message)
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
        result = await sandbox.run(command, timeout_sec=remaining, env=context.env)
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
