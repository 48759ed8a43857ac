"""The nop agent: does nothing and submits nothing.

Every task must fail with it: a task that a do-nothing agent passes has a verification that
checks nothing (a checker that always exits 0, a flag already sitting in the sandbox).
"""

from __future__ import annotations

import time

from infrastructure.agents.protocol import AgentContext, AgentOutcome
from infrastructure.agents.transcript import TranscriptRecorder
from infrastructure.sandbox.protocol import Sandbox


class NopAgent:
    name: str = "nop"

    async def run(self, sandbox: Sandbox, context: AgentContext) -> AgentOutcome:
        started = time.monotonic()
        recorder = TranscriptRecorder(context.redact, context.on_message)
        # One message, so the transcript endpoint shows that the agent ran and chose to do
        # nothing, rather than answering 404 as for an item that never started an agent.
        recorder.add("assistant", "nop agent: did nothing and submitted no answer.")
        return AgentOutcome(
            submission=None,
            transcript=recorder.messages,
            stop_reason="finished",
            duration_ms=(time.monotonic() - started) * 1000,
        )
