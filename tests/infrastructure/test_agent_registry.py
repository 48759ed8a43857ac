"""The agent registry: which agent names exist and which of them need a model."""

from __future__ import annotations

import pytest

from infrastructure.agents.registry import AGENTS, AgentSpec, agent_names, resolve_agent


def test_the_three_known_agents_are_listed_sorted() -> None:
    assert agent_names() == ["nop", "openai", "oracle"]


@pytest.mark.parametrize(
    ("name", "needs_model"), [("oracle", False), ("nop", False), ("openai", True)]
)
def test_known_agent_resolves_with_its_model_requirement(name: str, needs_model: bool) -> None:
    spec = resolve_agent(name)
    assert spec is not None
    assert spec.name == name
    assert spec.needs_model is needs_model
    assert spec.description


@pytest.mark.parametrize("name", ["", "claude", "Oracle", " oracle"])
def test_unknown_agent_name_resolves_to_none(name: str) -> None:
    assert resolve_agent(name) is None


def test_registry_cannot_be_changed_by_callers() -> None:
    with pytest.raises(TypeError):
        AGENTS["evil"] = AgentSpec(name="evil", description="", needs_model=False)  # type: ignore[index]
    assert resolve_agent("evil") is None


def test_agent_spec_is_immutable() -> None:
    spec = resolve_agent("oracle")
    assert spec is not None
    with pytest.raises(AttributeError):
        spec.needs_model = True  # type: ignore[misc]
