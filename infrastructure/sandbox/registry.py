"""Sandbox providers by name, so a `docker` or remote provider plugs in without engine changes.

A worker builds its own registry with `sandbox_providers(settings, slots)` and looks
providers up with `get`. `provider_names` answers which names exist, from a registry built by
the same function, so what create accepts is exactly what a worker can run. A new provider is
added in `default_registry`, the one place both read.
"""

from __future__ import annotations

from pathlib import Path

from infrastructure.sandbox.docker import DockerSandboxProvider, daemon_answers
from infrastructure.sandbox.local import LocalSandboxProvider
from infrastructure.sandbox.local.principals import DEFAULT_UID_RANGE, parse_uid_range
from infrastructure.sandbox.local.warm_pool import WarmPool
from infrastructure.sandbox.protocol import IsolationLevel, SandboxProvider
from infrastructure.settings import Settings

DEFAULT_SANDBOX_ROOT = Path(".assay/sandboxes")


class UnknownProvider(KeyError):
    def __init__(self, name: str, known: list[str]) -> None:
        self.name = name
        self.known = known
        super().__init__(name)

    def __str__(self) -> str:
        return f"unknown sandbox provider {self.name!r}; known: {', '.join(self.known) or 'none'}"


class ProviderRegistry:
    def __init__(self) -> None:
        self._providers: dict[str, SandboxProvider] = {}

    def register(self, provider: SandboxProvider, *, replace: bool = False) -> None:
        """Add a provider under its `name`; a second one of the same name is refused unless
        `replace` (a typo'd plugin must not silently shadow `local`)."""
        if provider.name in self._providers and not replace:
            raise ValueError(f"sandbox provider {provider.name!r} is already registered")
        self._providers[provider.name] = provider

    def get(self, name: str) -> SandboxProvider:
        try:
            return self._providers[name]
        except KeyError:
            raise UnknownProvider(name, self.names()) from None

    def names(self) -> list[str]:
        return sorted(self._providers)

    async def close(self) -> None:
        """Give back what providers hold ahead of items (a warm pool's sandboxes)."""
        for provider in self._providers.values():
            close = getattr(provider, "close", None)
            if close is not None:
                await close()


def default_registry(
    sandbox_root: Path = DEFAULT_SANDBOX_ROOT,
    *,
    isolation: IsolationLevel = "strict",
    uid_range: tuple[int, int] = DEFAULT_UID_RANGE,
    warm: int = 0,
) -> ProviderRegistry:
    """A registry holding what this build runs: the `local` provider, under `sandbox_root`,
    at the given isolation level; with `warm` > 0 (a worker passes its slots) strict
    sandboxes are pre-started, up to that many (`local/warm_pool.py`)."""
    registry = ProviderRegistry()
    local = LocalSandboxProvider(Path(sandbox_root), isolation=isolation, uid_range=uid_range)
    registry.register(WarmPool(local, warm) if warm > 0 and isolation == "strict" else local)
    if daemon_answers():  # one ping, once per process; the provider itself is lazy
        registry.register(DockerSandboxProvider(scope=str(Path(sandbox_root).absolute())))
    return registry


# Constructing LocalSandboxProvider touches neither the disk nor the kernel (its isolation is
# probed on first use), so this costs nothing at import.
_DEFAULT = default_registry()


def provider_names() -> list[str]:
    """The providers a worker's registry holds (both come from `default_registry`), for
    validating `sandbox_provider` when an evaluation is created."""
    return _DEFAULT.names()


def sandbox_providers(settings: Settings, slots: int) -> ProviderRegistry:
    """The providers a worker of `slots` slots runs items with, as its settings say; its warm
    pool pre-starts one strict sandbox per slot unless ASSAY_SANDBOX_WARM says otherwise."""
    return default_registry(
        Path(settings.sandbox_root),
        isolation="weak" if settings.sandbox_isolation == "weak" else "strict",
        uid_range=parse_uid_range(settings.sandbox_uids),
        warm=slots if settings.sandbox_warm < 0 else settings.sandbox_warm,
    )
