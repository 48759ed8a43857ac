"""`docker-compose.yaml` beside a dn-format task.yaml: its services are the task's environment.

Each compose service becomes one `ServiceSpec`:

- `name`: the service's key; the agent reaches it by that host name, so it must be a DNS label.
- `image`: as written (a docker provider runs it; with `build` too, compose builds the context
  and tags the result with this name).
- `context`: `build` (`build: ./web` or `build: {context: ./web, dockerfile: ...}`) resolved to
  an ABSOLUTE host path, refused unless it is a folder inside the bundle.
- `ports`: the container ports of `ports:` (`8080`, `"8080"`, `"8080:8080"`,
  `"127.0.0.1:9000:8080/tcp"`, `{target: 8080}`): the service is ready when each accepts a
  connection. Host ports are never published by Assay; only the container port counts.
- `environment`: a mapping or a list of `KEY=VALUE`; a key without a value (compose would copy
  it from the host's environment) is refused, since no host variable reaches a service.
- `command`: Assay's extension field `x-assay: {command: "python3 server.py"}`: what the `local`
  provider runs, with bash, in a copy of the build context, as the service's own principal. A
  service with a command needs a `build` context (the folder the command runs in).

`healthcheck` is accepted and left to docker: Assay's readiness is the ports accepting
connections. Other `x-*` extension keys are compose's own "ignore me" convention and are
ignored. Every other key (volumes, depends_on, command, networks...) is refused with its name,
because no Assay provider would honour it and a task must not silently run differently from
what its compose file says.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from infrastructure.sandbox.protocol import ServiceSpec
from infrastructure.tasks.model import TaskBundleError

COMPOSE_FILES = ("docker-compose.yaml", "docker-compose.yml")
# The compose extension field holding Assay's settings for a service.
EXTENSION = "x-assay"

_SERVICE_NAME = re.compile(r"\A[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\Z")
_PORT = re.compile(r"\A(?:[\d.]+:)?(?:\d+:)?(\d+)(?:/\w+)?\Z")
_SERVICE_KEYS = frozenset({"image", "build", "ports", "environment", "healthcheck", EXTENSION})
_BUILD_KEYS = frozenset({"context", "dockerfile"})
_TOP_LEVEL_KEYS = frozenset({"services", "version", "name"})


def find_compose_file(bundle_dir: Path) -> Path | None:
    for name in COMPOSE_FILES:
        if (bundle_dir / name).is_file():
            return bundle_dir / name
    return None


def load_services(compose: Any, bundle_dir: Path, file_name: str) -> tuple[ServiceSpec, ...]:
    """The services of a parsed compose document, validated against the bundle."""
    if not isinstance(compose, dict):
        raise TaskBundleError(f"{file_name} must be a mapping with a 'services:' block")
    for key in compose:
        if str(key) not in _TOP_LEVEL_KEYS and not str(key).startswith("x-"):
            raise TaskBundleError(f"{file_name}: top-level key {key!r} is not supported")
    services = compose.get("services")
    if not isinstance(services, dict) or not services:
        raise TaskBundleError(f"{file_name}: 'services' must be a non-empty mapping")
    return tuple(
        _service(str(name), config, bundle_dir, f"{file_name}: service {name!r}")
        for name, config in services.items()
    )


def _service(name: str, config: Any, bundle_dir: Path, where: str) -> ServiceSpec:
    if not _SERVICE_NAME.fullmatch(name):
        raise TaskBundleError(
            f"{where}: the name must be a DNS label (lower-case letters, digits, '-'), "
            "since the agent reaches the service by it"
        )
    if not isinstance(config, dict):
        raise TaskBundleError(f"{where} must be a mapping")
    for key in config:
        if str(key) not in _SERVICE_KEYS and not str(key).startswith("x-"):
            raise TaskBundleError(
                f"{where}: key {key!r} is not supported (supported: "
                f"{', '.join(sorted(_SERVICE_KEYS))})"
            )
    image = config.get("image")
    if image is not None and (not isinstance(image, str) or not image.strip()):
        raise TaskBundleError(f"{where}: image must be a non-empty string")
    context = _context(config.get("build"), bundle_dir, where)
    command = _command(config.get(EXTENSION), where)
    if image is None and context is None:
        raise TaskBundleError(f"{where} needs an image or a build context")
    if command is not None and context is None:
        raise TaskBundleError(
            f"{where}: {EXTENSION}.command runs in a copy of the build context; add 'build:'"
        )
    return ServiceSpec(
        name=name,
        context=None if context is None else str(context),
        command=command,
        image=image,
        ports=container_ports(config.get("ports"), where),
        environment=_environment(config.get("environment"), where),
    )


def _context(build: Any, bundle_dir: Path, where: str) -> Path | None:
    if build is None:
        return None
    if isinstance(build, str):
        relative = build
    elif isinstance(build, dict):
        unknown = sorted(str(key) for key in build if str(key) not in _BUILD_KEYS)
        if unknown:
            raise TaskBundleError(f"{where}: build key {unknown[0]!r} is not supported")
        relative = build.get("context", ".")
        if not isinstance(relative, str):
            raise TaskBundleError(f"{where}: build.context must be a path")
    else:
        raise TaskBundleError(f"{where}: build must be a path or a mapping with 'context'")
    context = (bundle_dir / relative).resolve()
    if not context.is_relative_to(bundle_dir):
        raise TaskBundleError(f"{where}: build context {relative!r} is outside the bundle")
    if not context.is_dir():
        raise TaskBundleError(f"{where}: build context {relative!r} is not a folder of the bundle")
    return context


def _command(extension: Any, where: str) -> str | None:
    if extension is None:
        return None
    if not isinstance(extension, dict):
        raise TaskBundleError(f"{where}: {EXTENSION} must be a mapping")
    unknown = sorted(str(key) for key in extension if key != "command")
    if unknown:
        raise TaskBundleError(f"{where}: {EXTENSION}.{unknown[0]} is not supported")
    command = extension.get("command")
    if not isinstance(command, str) or not command.strip():
        raise TaskBundleError(f"{where}: {EXTENSION}.command must be a non-empty string")
    return command


def container_ports(raw: Any, where: str) -> tuple[int, ...]:
    """The container side of compose `ports:` entries, in order, without repeats."""
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise TaskBundleError(f"{where}: ports must be a list")
    ports: list[int] = []
    for entry in raw:
        port: int | None = None
        if isinstance(entry, int) and not isinstance(entry, bool):
            port = entry
        elif isinstance(entry, str) and (match := _PORT.fullmatch(entry.strip())):
            port = int(match.group(1))
        elif isinstance(entry, dict) and isinstance(entry.get("target"), int):
            port = int(entry["target"])
        if port is None or not 1 <= port <= 65535:
            raise TaskBundleError(f"{where}: port entry {entry!r} is not a container port")
        if port not in ports:
            ports.append(port)
    return tuple(ports)


def _environment(raw: Any, where: str) -> Mapping[str, str]:
    if raw is None:
        return {}
    pairs: list[tuple[str, Any]] = []
    if isinstance(raw, dict):
        pairs = [(str(key), value) for key, value in raw.items()]
    elif isinstance(raw, list):
        for entry in raw:
            if not isinstance(entry, str) or "=" not in entry:
                raise TaskBundleError(
                    f"{where}: environment entry {entry!r} has no value; no host variable "
                    "reaches a service, so write KEY=VALUE"
                )
            key, _, value = entry.partition("=")
            pairs.append((key, value))
    else:
        raise TaskBundleError(f"{where}: environment must be a mapping or a list of KEY=VALUE")
    environment: dict[str, str] = {}
    for key, value in pairs:
        if value is None or isinstance(value, dict | list):
            raise TaskBundleError(
                f"{where}: environment.{key} needs a plain value; no host variable reaches a "
                "service"
            )
        # Compose writes booleans as true/false; YAML would hand Python's True/False.
        environment[key] = str(value).lower() if isinstance(value, bool) else str(value)
    return environment
