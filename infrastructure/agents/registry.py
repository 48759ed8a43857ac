"""The agents the service knows, by name.

Only what an evaluation needs to be validated at create time: whether `agent_type` names a real
agent and whether that agent needs a `model`; plus `create_agent`, which the worker uses to get
a runnable agent by name (the agents themselves live beside this module).
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING

import msgspec

if TYPE_CHECKING:
    from infrastructure.agents.protocol import Agent


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


def create_agent(
    name: str,
    *,
    max_retries: int = 2,
    retry_delay_sec: float = 0.5,
    request_timeout_sec: float = 300.0,
) -> Agent:
    """A ready-to-run agent for `name`; ValueError for a name the registry does not list.

    The keyword options tune the openai agent's HTTP calls (quick retries of a failing model
    endpoint before it raises AgentInfraError, and the bound on one generation); the other
    agents make no HTTP calls and ignore them.
    """
    # Imported here so that validating names at create time (the API process) does not load
    # the agents and their HTTP client.
    from infrastructure.agents.nop import NopAgent
    from infrastructure.agents.openai import OpenAIAgent
    from infrastructure.agents.oracle import OracleAgent

    if name == "oracle":
        return OracleAgent()
    if name == "nop":
        return NopAgent()
    if name == "openai":
        return OpenAIAgent(
            max_retries=max_retries,
            retry_delay_sec=retry_delay_sec,
            request_timeout_sec=request_timeout_sec,
        )
    raise ValueError(f"unknown agent {name!r}; known agents: {', '.join(agent_names())}")
