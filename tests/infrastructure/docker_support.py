"""Shared by the docker sandbox tests: a provider on a daemon that answers, with the test image.

Without a daemon (or without `assay-runtime:test`: `bash scripts/docker_up.sh` makes both) the
tests skip with the reason printed; under CI (CI=true) they fail instead, as the PostgreSQL
cases do (tests/conftest.py).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from infrastructure.sandbox.docker import DEFAULT_IMAGE, DockerSandbox, DockerSandboxProvider
from infrastructure.sandbox.docker.provider import daemon_answers
from infrastructure.sandbox.protocol import SandboxSpec, ServiceSpec
from tests.ci import unavailable

WORKER = "docker-test-worker"


def docker_unavailable_reason() -> str | None:
    if not daemon_answers():
        return "no Docker daemon answers (start one with: bash scripts/docker_up.sh)"
    provider = DockerSandboxProvider()
    try:
        provider.api.inspect_image(DEFAULT_IMAGE)
    except Exception as exc:
        return f"image {DEFAULT_IMAGE} is missing ({exc}); build it: bash scripts/docker_up.sh"
    return None


def require_docker() -> None:
    reason = docker_unavailable_reason()
    if reason:
        unavailable("Docker", reason)


def spec(**fields: Any) -> SandboxSpec:
    values: dict[str, Any] = {"item_id": "item-1", "worker_id": WORKER} | fields
    return SandboxSpec(**values)


def web_service(
    tmp_path: Path, name: str = "web", secret: str = "s3cret-in-service"
) -> ServiceSpec:
    """A context service: python's http.server on 8080 over a folder holding a secret."""
    context = tmp_path / f"{name}-context"
    context.mkdir()
    (context / "index.html").write_text("hello from the service\n")
    (context / "secret.txt").write_text(secret + "\n")
    return ServiceSpec(
        name=name,
        context=str(context),
        command="exec python3 -m http.server 8080 --bind 0.0.0.0",
        ports=(8080,),
    )


# Fixtures are registered under their `name`; the functions have other names so that test
# modules can import them without their parameters shadowing an import.
@pytest.fixture(scope="session", name="docker_ready")
def docker_ready_fixture() -> Iterator[None]:
    require_docker()
    yield


@pytest.fixture(name="provider")
def provider_fixture(docker_ready: None) -> DockerSandboxProvider:
    # A scope of this test run: orphan reaping here never touches another run's sandboxes.
    return DockerSandboxProvider(output_limit=64 * 1024, scope=f"tests-{os.getpid()}")


@pytest.fixture(name="box")
async def box_fixture(provider: DockerSandboxProvider) -> AsyncIterator[DockerSandbox]:
    sandbox = await provider.provision(spec(env={"TASK_VAR": "from-spec"}))
    yield sandbox
    await sandbox.destroy()


@pytest.fixture(name="box_with_web")
async def box_with_web_fixture(
    provider: DockerSandboxProvider, tmp_path: Path
) -> AsyncIterator[DockerSandbox]:
    sandbox = await provider.provision(spec(services=(web_service(tmp_path),), max_processes=64))
    yield sandbox
    await sandbox.destroy()


def objects_labelled(provider: DockerSandboxProvider, sandbox_id: str) -> list[str]:
    """Names of every container, network and volume labelled with the sandbox id."""
    api = provider.api
    label = {"label": f"assay.sandbox={sandbox_id}"}
    found = [c["Names"][0] for c in api.containers(all=True, filters=label)]
    found += [n["Name"] for n in api.networks(filters=label)]
    found += [v["Name"] for v in api.volumes(filters=label).get("Volumes") or []]
    return found
