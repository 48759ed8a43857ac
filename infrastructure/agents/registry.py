"""The agents the service knows, by name.

Only what an evaluation needs to be validated at create time: whether `agent_type` names a real
agent and whether that agent needs a `model`. Running agents lives beside this module.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

import msgspec


class AgentSpec(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    description: str
    # True when the agent calls a language model, so the evaluation must name one.
    needs_model: bool


# Read-only: the registry is fixed at import time, so callers cannot add agents behind the
# service's back.
AGENTS: Mapping[str, AgentSpec] = MappingProxyType(
    {
        spec.name: spec
        for spec in (
            AgentSpec(
                name="oracle",
                description="Runs the task's reference solution; every task must pass with it.",
                needs_model=False,
            ),
            AgentSpec(
                name="nop",
                description="Does nothing; every task must fail with it.",
                needs_model=False,
            ),
            AgentSpec(
                name="openai",
                description=(
                    "Tool-calling agent that drives a shell in the sandbox through an "
                    "OpenAI-compatible chat completions endpoint."
                ),
                needs_model=True,
            ),
        )
    }
)


def resolve_agent(name: str) -> AgentSpec | None:
    """The agent called exactly `name`, or None."""
    return AGENTS.get(name)


def agent_names() -> list[str]:
    return sorted(AGENTS)
