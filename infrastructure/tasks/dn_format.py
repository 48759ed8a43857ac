"""The reference platform's bundle format, as `dn task init` writes it and `dn task validate`
checks it (dreadnode==2.0.52, `dreadnode/packaging/task_validation.py`).

    name: path-traversal
    version: 1.0.0
    instruction: |
      The file server at {{web_url}} ... write the flag to /tmp/result.txt
    verification:                  # method: flag | script
      method: flag
      path: /tmp/result.txt        # read in the agent's sandbox after the agent is done
      value: "FLAG{...}"           # or hash: "sha256:<hex>" (sha512:, sha1:, md5:; bare = sha256)
    ports: {web: [8080]}           # the services' template ports: {{web_url}} {{web_host}} ...
    provision: {script: provision.sh, timeout: 120}   # optional
    teardown: {script: teardown.sh, timeout: 120}     # optional
    solution: {script: solution.sh}                   # optional, never given to the agent
    egress: {allow: [pypi.org, "*.example.com", 10.0.0.0/8]}   # optional
    description / tags / difficulty / source / author / license / repository /
    max_agent_timeout_sec                             # catalog metadata, optional

plus `docker-compose.yaml` (see `compose.py`). A bundle is read in this format when its
`verification` has a `method` key or no `type` key, when it has a compose file, or when
task.yaml uses a key only this format has; otherwise it is Assay's format.

Where the client is silent or Assay cannot do what the platform does, the choices are:

- `verification.where` defaults to `environment`, as in the client. The client runs such a
  script beside the services, with their addresses as `NAME_URL`... variables, to check
  server-side state (its template's example: `curl http://localhost:8080/admin`). Assay runs it
  inside one service's view, as that service (`Sandbox.run_in_service`), where that example
  holds: the service named by Assay's extension key `verification.x-assay-service` (the client
  ignores it), by default the task's only service. A task with several services must name one;
  in a task without services it runs in a fresh checker principal.
- `verification.path` must be where the runner can read it: absolute under `/tmp/` or
  `/workspace/`, or relative to the workspace (the agent's working directory), without `..`.
- What the agent gets: the client gives an agent nothing from the bundle; Assay does the same,
  except the contents of a `workspace/` folder of the bundle, when there is one, are copied
  into the agent's workspace (the client ignores that folder). No task file (task.yaml, the
  compose file, a build context, the solution, the checker, provision, teardown) may lie inside
  it: such a bundle is refused.
- Keys the client would accept but Assay cannot honour are refused with the reason rather
  than ignored: the judge methods (`outcome_judge`, `script_and_judge`, `flag_and_judge`: Assay
  runs no LLM judge), `models` (no inference access for task environments), a `tcp://` egress
  target (the egress policy has no per-port rules). Keys the client does not know are refused
  too (it would only note them), so a typo never passes silently.
"""

from __future__ import annotations

import ipaddress
import posixpath
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import msgspec
import yaml

from infrastructure.sandbox.protocol import WORKSPACE, ServiceSpec
from infrastructure.tasks.compose import container_ports, find_compose_file, load_services
from infrastructure.tasks.model import (
    HASH_ALGORITHMS,
    CheckerScriptVerification,
    FlagFileVerification,
    Task,
    TaskBundleError,
    TaskName,
    TaskScript,
    TaskVersion,
    Verification,
    refuse_links,
    require_bundle_file,
)

AGENT_DIR = "workspace"
# The key in `verification` naming the service an environment script runs in.
SERVICE_KEY = "x-assay-service"

_TOP_LEVEL_KEYS = frozenset(
    {
        "name",
        "version",
        "instruction",
        "verification",
        "description",
        "tags",
        "difficulty",
        "source",
        "author",
        "author_name",
        "license",
        "repository",
        "max_agent_timeout_sec",
        "ports",
        "provision",
        "teardown",
        "solution",
        "egress",
    }
)
# Keys only this format has (Assay's format has no such key): any of them marks a task.yaml
# as this format, so a dn bundle missing `verification.method` is told so, not "unknown key".
ONLY_DN_KEYS = _TOP_LEVEL_KEYS - {
    "name",
    "version",
    "instruction",
    "verification",
    "description",
    "tags",
    "solution",
}
_VERIFICATION_KEYS = frozenset(
    {
        "method",
        "path",
        "submission_path",
        "value",
        "hash",
        "flag_hash",
        "script",
        "where",
        "timeout",
        "judge",
        SERVICE_KEY,
    }
)
_JUDGE_METHODS = frozenset({"outcome_judge", "script_and_judge", "flag_and_judge"})
_HEX = re.compile(r"\A[0-9a-fA-F]+\Z")
_LABEL = r"[a-z0-9](?:[a-z0-9-]*[a-z0-9])?"
_DOMAIN = re.compile(rf"\A{_LABEL}(?:\.{_LABEL})+\Z")
MAX_EGRESS_TARGETS = 50


def is_dn_format(raw: Mapping[str, Any], bundle_dir: Path) -> bool:
    verification = raw.get("verification")
    # Assay's format tags its verification with `type`; the client's has `method`, or infers
    # it from `script` alone.
    if isinstance(verification, dict) and ("method" in verification or "type" not in verification):
        return True
    if find_compose_file(bundle_dir) is not None:
        return True
    return any(key in raw for key in ONLY_DN_KEYS)


class _Header(msgspec.Struct, frozen=True, kw_only=True):
    name: TaskName
    version: TaskVersion
    instruction: str
    description: str | None = None
    license: str | None = None
    repository: str | None = None
    source: str | None = None
    max_agent_timeout_sec: int | None = None


def load_dn_bundle(raw: dict[str, Any], bundle_dir: Path) -> Task:
    unknown = sorted(str(key) for key in raw if str(key) not in _TOP_LEVEL_KEYS)
    if "models" in unknown:
        raise TaskBundleError("models: Assay gives task environments no inference access")
    if unknown:
        raise TaskBundleError(f"task.yaml: unknown key {unknown[0]!r}")
    header_keys = set(_Header.__struct_fields__)
    try:
        header = msgspec.convert({k: v for k, v in raw.items() if k in header_keys}, _Header)
    except msgspec.ValidationError as exc:
        raise TaskBundleError(f"invalid task.yaml: {exc}") from exc
    if not header.instruction.strip():
        raise TaskBundleError("instruction must not be empty")
    if header.max_agent_timeout_sec is not None and header.max_agent_timeout_sec < 1:
        raise TaskBundleError("max_agent_timeout_sec must be at least 1")

    compose_path = find_compose_file(bundle_dir)
    services: tuple[ServiceSpec, ...] = ()
    if compose_path is not None:
        services = load_services(_read_yaml(compose_path), bundle_dir, compose_path.name)
    ports = _ports(raw.get("ports"), services, compose_path)
    services = tuple(_ordered_ports(service, ports) for service in services)

    if "verification" not in raw:
        raise TaskBundleError("verification is required (method: flag or method: script)")
    verification = _verification(raw["verification"], bundle_dir, services)
    provision = _script_block(raw.get("provision"), "provision", bundle_dir, default_timeout=120)
    teardown = _script_block(raw.get("teardown"), "teardown", bundle_dir, default_timeout=120)
    solution = _solution(raw.get("solution"), bundle_dir)

    agent_dir = _agent_dir(
        bundle_dir,
        {
            "solution": solution,
            "verification.script": getattr(verification, "script", None),
            "provision.script": None if provision is None else provision.script,
            "teardown.script": None if teardown is None else teardown.script,
        },
        services,
    )
    task = Task(
        name=header.name,
        version=header.version,
        format="dreadnode",
        description=header.description or "",
        instruction=header.instruction,
        verification=verification,
        solution=solution,
        egress_allow=_egress(raw.get("egress")),
        timeout_sec=header.max_agent_timeout_sec,
        tags=_tags(raw.get("tags")),
        difficulty=None if raw.get("difficulty") is None else str(raw["difficulty"]),
        source=header.source,
        author=_author(raw.get("author", raw.get("author_name"))),
        license=header.license,
        repository=header.repository,
        services=services,
        ports=ports,
        provision=provision,
        teardown=teardown,
        agent_dir=agent_dir,
        bundle_dir=bundle_dir,
    )
    refuse_links(task.agent_tree())
    return task


def _read_yaml(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise TaskBundleError(f"cannot read {path.name}: {exc}") from exc
    except yaml.YAMLError as exc:
        raise TaskBundleError(f"invalid YAML in {path.name}: {exc}") from exc


# ---- verification ----


def _verification(raw: Any, bundle_dir: Path, services: tuple[ServiceSpec, ...]) -> Verification:
    if not isinstance(raw, dict):
        raise TaskBundleError("verification must be a mapping")
    unknown = sorted(str(key) for key in raw if str(key) not in _VERIFICATION_KEYS)
    if unknown:
        raise TaskBundleError(f"verification.{unknown[0]} is not a verification field")
    method = raw.get("method")
    if method is None and raw.get("script"):
        method = "script"  # the client infers script from a script alone, and nothing else
    if method is None:
        raise TaskBundleError("verification.method is required (flag or script)")
    if method in _JUDGE_METHODS:
        raise TaskBundleError(f"verification.method {method!r}: Assay runs no LLM judge")
    if raw.get("judge") is not None:
        raise TaskBundleError(f"verification.judge must not be set when method is {method!r}")
    if method == "flag":
        return _flag(raw)
    if method == "script":
        return _script(raw, bundle_dir, services)
    raise TaskBundleError(f"verification.method {method!r} is unknown (flag or script)")


def _flag(raw: dict[str, Any]) -> FlagFileVerification:
    for key in ("script", "where", "timeout", SERVICE_KEY):
        if key in raw:
            raise TaskBundleError(f"verification.{key} applies to method: script only")
    path = raw.get("path", raw.get("submission_path"))
    value = raw.get("value")
    digest = raw.get("hash", raw.get("flag_hash"))
    if value is not None and digest is not None:
        raise TaskBundleError("verification.hash and verification.value: give exactly one")
    if value is None and digest is None:
        raise TaskBundleError("verification.value or verification.hash is required")
    if value is not None and (not isinstance(value, str) or not value.strip()):
        raise TaskBundleError("verification.value must be a non-blank string")
    return FlagFileVerification(
        path=_flag_path(path),
        value=value,
        hash=None if digest is None else _hash(digest),
    )


def _flag_path(path: Any) -> str:
    if not isinstance(path, str) or not path.strip():
        raise TaskBundleError("verification.path is required: the file the agent writes")
    normal = posixpath.normpath(path)
    where = "verification.path"
    if ".." in normal.split("/"):
        raise TaskBundleError(f"{where} {path!r} must not leave the workspace with '..'")
    if normal.startswith("/") and not any(
        normal.startswith(root + "/") for root in ("/tmp", WORKSPACE)
    ):
        raise TaskBundleError(
            f"{where} {path!r}: the runner reads the agent's file under /tmp/ or {WORKSPACE}/ "
            "(or relative to the workspace)"
        )
    return normal


def _hash(value: Any) -> str:
    """`algorithm:hex` in lower case; a bare digest is sha256, as the client reads it."""
    where = "verification.hash"
    if not isinstance(value, str) or not value:
        raise TaskBundleError(f"{where} must be a string like 'sha256:<hex>'")
    if ":" in value:
        algorithm, _, digest = value.partition(":")
        algorithm = algorithm.lower()
        if algorithm not in HASH_ALGORITHMS:
            raise TaskBundleError(
                f"{where}: unsupported algorithm {algorithm!r} "
                f"(supported: {', '.join(sorted(HASH_ALGORITHMS))})"
            )
    else:
        algorithm, digest = "sha256", value
    if not _HEX.fullmatch(digest):
        raise TaskBundleError(f"{where}: {digest!r} is not a hex digest")
    if len(digest) != HASH_ALGORITHMS[algorithm]:
        raise TaskBundleError(
            f"{where}: {algorithm} expects {HASH_ALGORITHMS[algorithm]} hex digits, "
            f"got {len(digest)}"
        )
    return f"{algorithm}:{digest.lower()}"


def _script(
    raw: dict[str, Any], bundle_dir: Path, services: tuple[ServiceSpec, ...]
) -> CheckerScriptVerification:
    for key in ("path", "submission_path", "value", "hash", "flag_hash"):
        if key in raw:
            raise TaskBundleError(f"verification.{key} applies to method: flag only")
    script = raw.get("script")
    if not isinstance(script, str) or not script:
        raise TaskBundleError("verification.script is required when method is 'script'")
    require_bundle_file(bundle_dir, script, "verification.script")
    where = raw.get("where", "environment")
    if where not in ("agent", "environment"):
        raise TaskBundleError(f"verification.where {where!r} must be 'agent' or 'environment'")
    timeout = _timeout(raw.get("timeout", 30), "verification.timeout")
    service = raw.get(SERVICE_KEY)
    names = [s.name for s in services]
    if service is not None:
        if where != "environment":
            raise TaskBundleError(f"verification.{SERVICE_KEY} applies to where: environment")
        if service not in names:
            raise TaskBundleError(
                f"verification.{SERVICE_KEY} {service!r} is not a compose service "
                f"(services: {', '.join(names) or 'none'})"
            )
    elif where == "environment" and len(names) == 1:
        service = names[0]
    elif where == "environment" and len(names) > 1:
        raise TaskBundleError(
            f"verification.{SERVICE_KEY} is required: where: environment and several services "
            f"({', '.join(names)}); name the one the script runs in"
        )
    return CheckerScriptVerification(script=script, where=where, timeout=timeout, service=service)


def _timeout(value: Any, where: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise TaskBundleError(f"{where} must be a whole number of seconds, at least 1")
    return value


# ---- the other sections ----


def _script_block(
    raw: Any, field: str, bundle_dir: Path, *, default_timeout: int
) -> TaskScript | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise TaskBundleError(f"{field} must be a mapping with 'script'")
    unknown = sorted(str(key) for key in raw if key not in ("script", "timeout"))
    if unknown:
        raise TaskBundleError(f"{field}.{unknown[0]} is not a {field} field")
    script = raw.get("script")
    if not isinstance(script, str) or not script:
        raise TaskBundleError(f"{field}.script is required")
    require_bundle_file(bundle_dir, script, f"{field}.script")
    timeout = _timeout(raw.get("timeout", default_timeout), f"{field}.timeout")
    return TaskScript(script=script, timeout=timeout)


def _solution(raw: Any, bundle_dir: Path) -> str | None:
    if raw is None:
        return None
    if not isinstance(raw, dict) or set(raw) != {"script"} or not isinstance(raw["script"], str):
        raise TaskBundleError("solution must be a mapping with only 'script'")
    require_bundle_file(bundle_dir, raw["script"], "solution.script")
    return str(raw["script"])


def _ports(
    raw: Any, services: tuple[ServiceSpec, ...], compose_path: Path | None
) -> dict[str, tuple[int, ...]]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise TaskBundleError("ports must map service names to lists of ports")
    if compose_path is None:
        raise TaskBundleError(
            "ports: docker-compose.yaml is required when task.yaml declares ports"
        )
    by_name = {service.name: service for service in services}
    ports: dict[str, tuple[int, ...]] = {}
    for name, entries in raw.items():
        service = by_name.get(str(name))
        if service is None:
            raise TaskBundleError(
                f"ports: service {name!r} is not in {compose_path.name} "
                f"(services: {', '.join(by_name)})"
            )
        declared = container_ports(entries, f"ports.{name}")
        if not declared:
            raise TaskBundleError(f"ports.{name} must list at least one port")
        for port in declared:
            if service.ports and port not in service.ports:
                raise TaskBundleError(
                    f"ports.{name}: port {port} is not among the ports {compose_path.name} "
                    f"gives the service ({', '.join(map(str, service.ports))})"
                )
        ports[str(name)] = declared
    return ports


def _ordered_ports(service: ServiceSpec, ports: Mapping[str, tuple[int, ...]]) -> ServiceSpec:
    """task.yaml's ports first (the first is the service's `{{NAME_port}}`), then the rest."""
    declared = ports.get(service.name, ())
    rest = tuple(port for port in service.ports if port not in declared)
    return msgspec.structs.replace(service, ports=declared + rest)


def _egress(raw: Any) -> tuple[str, ...] | None:
    """The client's egress grammar: FQDN, `*.suffix`, IP or CIDR, canonicalised."""
    if raw is None:
        return None
    if not isinstance(raw, dict) or set(raw) != {"allow"}:
        raise TaskBundleError("egress must be a mapping with only an 'allow' list")
    allow = raw["allow"]
    if allow is None:
        return ()
    if not isinstance(allow, list):
        raise TaskBundleError("egress.allow must be a list of targets")
    targets: list[str] = []
    for entry in allow:
        target = _egress_target(entry)
        if target not in targets:
            targets.append(target)
    if len(targets) > MAX_EGRESS_TARGETS:
        raise TaskBundleError(f"egress.allow may name at most {MAX_EGRESS_TARGETS} targets")
    return tuple(targets)


def _egress_target(entry: Any) -> str:
    where = "egress.allow"
    if not isinstance(entry, str) or not entry.strip() or any(c.isspace() for c in entry.strip()):
        raise TaskBundleError(f"{where}: {entry!r} is not a target")
    target = entry.strip().lower()
    if target.startswith("tcp://"):
        raise TaskBundleError(f"{where}: {entry!r}: Assay's egress policy has no per-port rules")
    if target == "*":
        raise TaskBundleError(f"{where}: a bare '*' declares no scope (the client refuses it)")
    if target.startswith("*."):
        if not _DOMAIN.fullmatch(target[2:]):
            raise TaskBundleError(f"{where}: {entry!r} must be '*.' and a dotted domain")
        return target
    try:
        return str(ipaddress.ip_address(target))
    except ValueError:
        pass
    if "/" in target:
        try:
            return str(ipaddress.ip_network(target, strict=True))
        except ValueError as exc:
            raise TaskBundleError(f"{where}: {entry!r} is not a valid CIDR: {exc}") from exc
    if _DOMAIN.fullmatch(target):
        return target
    raise TaskBundleError(
        f"{where}: {entry!r} must be a dotted FQDN, a '*.suffix' wildcard, an IP or a CIDR"
    )


def _tags(raw: Any) -> tuple[str, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise TaskBundleError("tags must be a list")
    return tuple(str(tag) for tag in raw)


def _author(raw: Any) -> str | None:
    """A string, or the client's `{name, email, url}` mapping flattened to the name."""
    if raw is None:
        return None
    if isinstance(raw, dict):
        return None if raw.get("name") is None else str(raw["name"])
    return str(raw)


def _agent_dir(
    bundle_dir: Path, scripts: Mapping[str, str | None], services: tuple[ServiceSpec, ...]
) -> str | None:
    folder = bundle_dir / AGENT_DIR
    if folder.is_symlink():
        raise TaskBundleError(f"{AGENT_DIR}/ is a symbolic link; it must be a real folder")
    if not folder.is_dir():
        return None
    for field, script in scripts.items():
        if script is not None and (bundle_dir / script).resolve().is_relative_to(folder):
            raise TaskBundleError(
                f"{field} {script!r} is inside {AGENT_DIR}/, which the agent gets"
            )
    for service in services:
        if service.context is not None and Path(service.context).is_relative_to(folder):
            raise TaskBundleError(
                f"service {service.name!r}: its build context is inside {AGENT_DIR}/, which "
                "the agent gets"
            )
    return AGENT_DIR
