"""The `docker` sandbox provider (see `provider` for the design, `hardening` for the limits)."""

from infrastructure.sandbox.docker.provider import (
    DEFAULT_IMAGE,
    DockerSandboxProvider,
    daemon_answers,
)
from infrastructure.sandbox.docker.sandbox import DockerSandbox

__all__ = ["DEFAULT_IMAGE", "DockerSandbox", "DockerSandboxProvider", "daemon_answers"]
