"""The task model the runner uses, whichever bundle format a task was written in.

Two formats load into this one model (see `assay_format` and `dn_format`). What each field
means for the runner:

- `instruction` / `render_instruction(variables, endpoints)`: the prompt, `{{ var }}` filled.
- `setup` (Assay format only): bash run in the agent's workspace before the agent starts.
- `verification`: one of four variants, each with the call the runner makes:
  `FlagVerification.matches(submitted)` (the agent's submitted answer),
  `ScriptVerification` (Assay format: a checker run in the agent's workspace, exit 0 passes),
  `FlagFileVerification.matches(content)` (bytes the runner reads at `path` in the agent's
  sandbox), `CheckerScriptVerification` (a script run `where: agent | environment`).
- `services`: the compose services (`ServiceSpec`), for `SandboxSpec.services`.
- `egress_allow`: for `SandboxSpec.egress` (None: no policy, the item's own network only).
- `provision` / `teardown`: scripts run on the environment side before the agent / after
  verification; `parse_provision_output` turns provision's stdout into template variables.
- `agent_tree()`: the one call that says which bundle files the agent's workspace gets.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Annotated, Literal

import msgspec

from infrastructure.sandbox.protocol import ServiceEndpoint, ServiceSpec

# \A and \Z rather than ^ and $: msgspec uses re.search, and `$` would accept a trailing newline.
TaskName = Annotated[str, msgspec.Meta(pattern=r"\A[a-z0-9][a-z0-9_-]*\Z")]
# `@` and `/` are taken by the ref syntax `[org/]name[@version]`, so versions may not use them.
TaskVersion = Annotated[str, msgspec.Meta(pattern=r"\A[A-Za-z0-9][A-Za-z0-9.+_-]*\Z")]

BundleFormat = Literal["assay", "dreadnode"]

_PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z0-9_][A-Za-z0-9_.-]*)\s*\}\}")

# The digests the reference client accepts for `verification.hash`, with their hex lengths.
HASH_ALGORITHMS: Mapping[str, int] = {"sha256": 64, "sha512": 128, "sha1": 40, "md5": 32}


class TaskBundleError(Exception):
    """A bundle folder that cannot be loaded; the message is the reason."""


class TaskScriptOutputError(ValueError):
    """A provision script printed something that is not a JSON object."""


# ---- verification variants ----


class FlagVerification(
    msgspec.Struct, frozen=True, forbid_unknown_fields=True, tag_field="type", tag="flag"
):
    """Assay format: the agent submits a flag; it passes when it equals `flag`, both stripped."""

    # A pattern rather than min_length: a flag of only whitespace would strip to "" and then
    # match an agent that submitted nothing.
    flag: Annotated[str, msgspec.Meta(pattern=r"\S")]

    def matches(self, submitted: str) -> bool:
        return submitted.strip() == self.flag.strip()


class ScriptVerification(
    msgspec.Struct, frozen=True, forbid_unknown_fields=True, tag_field="type", tag="script"
):
    """Assay format: a checker file of the bundle runs in the agent's workspace after the
    agent: exit 0 passes, stdout is the result."""

    script: str


class FlagFileVerification(msgspec.Struct, frozen=True, kw_only=True):
    """dn `method: flag`: the runner reads the file at `path` in the agent's sandbox (after the
    agent is done, with `Sandbox.get_file`, never through the agent's processes) and calls
    `matches` on its bytes. A missing file fails the check.

    `path` is absolute under `/tmp` or `/workspace`, or relative to the workspace: the only
    places `Sandbox.get_file` reads. Exactly one of `value` (plaintext) and `hash`
    (`algorithm:hex`, normalised: lower-case, a bare digest already read as sha256) is set.
    """

    path: str
    value: str | None = None
    hash: str | None = None

    def __post_init__(self) -> None:
        # Checked here too, not only by the loader: `matches` must never meet neither or both.
        if (self.value is None) == (self.hash is None):
            raise ValueError("a flag file check needs exactly one of value and hash")
        if self.hash is not None:
            algorithm, _, digest = self.hash.partition(":")
            if len(digest) != HASH_ALGORITHMS.get(algorithm, -1) or digest != digest.lower():
                raise ValueError(f"hash {self.hash!r} is not a normalised 'algorithm:hex'")

    def matches(self, content: bytes) -> bool:
        """Surrounding whitespace is stripped (as the client does and as `FlagVerification`
        does); the comparison takes the same time wherever the first difference is."""
        text = content.decode("utf-8", errors="surrogateescape").strip()
        data = text.encode("utf-8", errors="surrogateescape")
        if self.value is not None:
            return hmac.compare_digest(data, self.value.strip().encode("utf-8"))
        assert self.hash is not None  # __post_init__: exactly one of value and hash
        algorithm, expected = self.hash.split(":", 1)
        return hmac.compare_digest(hashlib.new(algorithm, data).hexdigest(), expected)


class CheckerScriptVerification(msgspec.Struct, frozen=True, kw_only=True):
    """dn `method: script`: a bundle script (`bash <script>`) decides; exit 0 passes.

    `where: agent`: it runs where the agent ran and must see the agent's files (its workspace
    and its /tmp), after the agent's processes were killed.
    `where: environment` (the client's default): it runs beside the task's services, never as
    the agent. With `service` set it runs inside that service's view (`run_in_service`);
    `service` is None only for a task without services, and then it runs in a fresh checker
    principal on the item's network (`open_checker`). Either way it gets the services'
    addresses as environment variables (`Task.service_environment`).
    `timeout` bounds the script in seconds (the client's default is 30).
    """

    script: str
    where: Literal["agent", "environment"] = "environment"
    timeout: int = 30
    service: str | None = None


Verification = (
    FlagVerification | ScriptVerification | FlagFileVerification | CheckerScriptVerification
)


class TaskScript(msgspec.Struct, frozen=True, kw_only=True):
    """A provision or teardown script of the bundle: `bash <script>`, bounded by `timeout`."""

    script: str
    timeout: int = 120


class AgentTree(msgspec.Struct, frozen=True, kw_only=True):
    """What the agent's workspace starts with: the files of `source` but the `exclude` paths
    (relative to `source`; an excluded folder excludes its contents). Exactly the arguments
    of `Sandbox.put_tree`; `source` None means the agent gets no file at all."""

    source: Path | None
    exclude: frozenset[str] = frozenset()

    def files(self) -> Iterator[Path]:
        """Every file the agent gets (host paths), by the rules `put_tree` applies."""
        if self.source is None:
            return
        for folder, dirs, names in os.walk(self.source):
            here = Path(folder)
            relative = here.relative_to(self.source)
            dirs[:] = sorted(d for d in dirs if (relative / d).as_posix() not in self.exclude)
            for name in sorted(names):
                if (relative / name).as_posix() not in self.exclude:
                    yield here / name


# ---- the task ----


class Task(msgspec.Struct, frozen=True, kw_only=True):
    """A validated bundle on disk, in either format. Paths of scripts are relative to
    `bundle_dir` and were checked to stay inside it."""

    name: TaskName
    version: TaskVersion = "1.0.0"
    # Which file format the bundle was written in; the runner needs no branch on it (every
    # difference is in the fields below), it is there for listing and error messages.
    format: BundleFormat = "assay"
    description: str = ""
    # A template: `{{ var }}` is filled by `render_instruction`.
    instruction: str
    # Assay format only: shell script text, run with bash in the agent's workspace before the
    # agent starts. The dn format has no agent-side setup (its `provision` runs on the
    # environment side).
    setup: str | None = None
    # Optional so a bundle without it still loads; creating an evaluation refuses it.
    verification: Verification | None = None
    # Relative path of the reference solution (dn: `solution.script`; Assay: `solution`, or
    # `solution.sh` when the bundle has one). Never given to the agent.
    solution: str | None = None
    # Assay format's `network: true`, as written. The runner uses `egress_allow`, which
    # already says the same (("*",)); this stays for existing readers of the field.
    network: bool = False
    # Outbound destinations beyond the item's own network (`SandboxSpec.egress`): None when
    # the task declares none (the item's own network only); () when it declares an empty list.
    egress_allow: tuple[str, ...] | None = None
    # Advisory agent time budget in seconds (dn: `max_agent_timeout_sec`).
    timeout_sec: Annotated[int, msgspec.Meta(ge=1)] | None = None
    tags: tuple[str, ...] = ()
    # Catalog metadata the client carries (dn format); shown, never acted on.
    difficulty: str | None = None
    source: str | None = None
    author: str | None = None
    license: str | None = None
    repository: str | None = None
    # The task's environment: one `ServiceSpec` per compose service (`SandboxSpec.services`).
    services: tuple[ServiceSpec, ...] = ()
    # task.yaml `ports`: per service, the container ports the template variables name; the
    # first one is the service's `{{NAME_port}}`.
    ports: Mapping[str, tuple[int, ...]] = {}
    # dn format: run before the agent, on the environment side (never in the agent's view);
    # its stdout is a JSON object of template variables (`parse_provision_output`).
    provision: TaskScript | None = None
    # dn format: run after verification, on the environment side, best effort (its failure
    # never changes the verdict).
    teardown: TaskScript | None = None
    # dn format: the bundle folder copied into the agent's workspace (None: nothing).
    agent_dir: str | None = None
    bundle_dir: Path

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"

    @property
    def has_verification(self) -> bool:
        return self.verification is not None

    @property
    def solution_path(self) -> Path | None:
        return None if self.solution is None else self.bundle_dir / self.solution

    @property
    def checker_path(self) -> Path | None:
        if isinstance(self.verification, ScriptVerification | CheckerScriptVerification):
            return self.bundle_dir / self.verification.script
        return None

    @property
    def provision_path(self) -> Path | None:
        return None if self.provision is None else self.bundle_dir / self.provision.script

    @property
    def teardown_path(self) -> Path | None:
        return None if self.teardown is None else self.bundle_dir / self.teardown.script

    def agent_tree(self) -> AgentTree:
        """The bundle files the agent gets: `put_tree(tree.source, exclude=tree.exclude)`.

        Assay format: the whole bundle but task.yaml (it holds the flag), the reference
        solution and the checker (each by its top-level folder, as before).
        dn format: only the contents of `agent_dir` when the bundle has one; the loader has
        checked that no task file (task.yaml, compose file, build context, solution, checker,
        provision, teardown) lies inside it.
        """
        if self.format == "dreadnode":
            if self.agent_dir is None:
                return AgentTree(source=None)
            return AgentTree(source=self.bundle_dir / self.agent_dir)
        hidden = {"task.yaml"}
        for path in (self.solution_path, self.checker_path):
            if path is not None:
                hidden.add(path.relative_to(self.bundle_dir).parts[0])
        return AgentTree(source=self.bundle_dir, exclude=frozenset(hidden))

    def service_problems(self, provider: str) -> tuple[str, ...]:
        """Why `provider` cannot run this task's services (empty: it can).

        Checked per provider rather than at load: a compose service with only `build`/`image`
        is a fine task for a docker provider, and `dn task init` scaffolds exactly that. The
        `local` provider runs a service only through its `x-assay.command`.
        """
        if provider == "local":
            return tuple(
                f"service {service.name!r} has no x-assay.command, so the local provider "
                "cannot run it"
                for service in self.services
                if service.command is None
            )
        return tuple(
            f"service {service.name!r} has neither an image nor a build context"
            for service in self.services
            if service.image is None and service.context is None
        )

    def service_variables(self, endpoints: Mapping[str, ServiceEndpoint]) -> dict[str, str]:
        """The client's template variables for the services: `NAME_url`, `NAME_host`,
        `NAME_port` from each endpoint, and `NAME_url_PORT` for each port task.yaml declares
        for it. `NAME_url_PORT` is only given for the endpoint's own port unless the endpoint
        is reached on the service's first declared port (the provider maps ports as they are,
        so the other declared ports are reachable on the same host)."""
        variables: dict[str, str] = {}
        for name, endpoint in endpoints.items():
            variables[f"{name}_url"] = endpoint.url
            variables[f"{name}_host"] = endpoint.host
            if endpoint.port is not None:
                variables[f"{name}_port"] = str(endpoint.port)
            declared = self.ports.get(name, ())
            if declared and endpoint.port == declared[0]:
                for port in declared:
                    variables[f"{name}_url_{port}"] = f"http://{endpoint.host}:{port}"
            if endpoint.port is not None:
                variables[f"{name}_url_{endpoint.port}"] = endpoint.url
        return variables

    def template_names(self) -> frozenset[str]:
        """The `{{ var }}` names the task's templates use: the instruction and the Assay
        format's `setup` text."""
        texts = (self.instruction, self.setup or "")
        return frozenset(name for text in texts for name in _PLACEHOLDER.findall(text))

    def service_variable_names(self) -> frozenset[str]:
        """The template variables the services give at run time (`service_variables`): a
        row need not supply them."""
        names: set[str] = set()
        for service in self.services:
            names |= {f"{service.name}_url", f"{service.name}_host", f"{service.name}_port"}
            names |= {f"{service.name}_url_{port}" for port in self.ports.get(service.name, ())}
        return frozenset(names)

    def render_setup(self, variables: Mapping[str, object]) -> str | None:
        """The Assay format's `setup` with `{{ var }}` filled like the instruction (no service
        variables: setup runs before the agent, in its own sandbox)."""
        if self.setup is None:
            return None
        return _fill(self.setup, dict(variables))

    def service_environment(self, endpoints: Mapping[str, ServiceEndpoint]) -> dict[str, str]:
        """`service_variables` as environment variables (`web_url` -> `WEB_URL`), the way the
        client hands them to solution, verification, provision and teardown scripts."""
        return {
            key.upper().replace("-", "_").replace(".", "_"): value
            for key, value in self.service_variables(endpoints).items()
        }

    def render_instruction(
        self,
        variables: Mapping[str, object],
        endpoints: Mapping[str, ServiceEndpoint] | None = None,
    ) -> str:
        """Fill `{{ var }}` placeholders; unknown ones stay as written, None becomes "".

        `variables` are the dataset row and task_config, with provision's output merged over
        them by the caller. `endpoints` (`Sandbox.endpoints()`) add `service_variables`, which
        win over `variables`: they are where this item's services really are, and a dataset
        column must not point the agent elsewhere.

        One pass only: a value that itself contains `{{ x }}` is user data and is not expanded.
        """
        merged: dict[str, object] = dict(variables)
        if endpoints:
            merged.update(self.service_variables(endpoints))
        return _fill(self.instruction, merged)


def _fill(template: str, values: Mapping[str, object]) -> str:
    """One pass of `{{ var }}` filling: unknown names stay as written, None becomes ""."""

    def fill(match: re.Match[str]) -> str:
        key = match.group(1)
        if key not in values:
            return match.group(0)
        value = values[key]
        return "" if value is None else str(value)

    return _PLACEHOLDER.sub(fill, template)


# Environment names a dataset variable may not take: the sandbox sets them itself, or they
# change how every shell and program behaves.
RESERVED_ENVIRONMENT = frozenset(
    {"PATH", "HOME", "LANG", "USER", "TMPDIR", "SHELL", "PWD", "IFS", "ENV", "BASH_ENV"}
)
RESERVED_ENVIRONMENT_PREFIXES = ("LD_", "BASH_FUNC_")


def environment_name(variable: str) -> str:
    """A template variable's environment name: upper-cased, anything but letters, digits and
    `_` as `_` (`web-url` -> `WEB_URL`), `_` first when it would start with a digit."""
    name = re.sub(r"[^A-Za-z0-9_]", "_", variable).upper()
    return f"_{name}" if name[:1].isdigit() else name


def reserved_environment(name: str) -> bool:
    return name in RESERVED_ENVIRONMENT or name.startswith(RESERVED_ENVIRONMENT_PREFIXES)


def variables_environment(variables: Mapping[str, object]) -> dict[str, str]:
    """Dataset row variables (and scalar task_config values) as environment variables for the
    item's sandbox, services and task scripts: None is "", booleans are true/false; values
    that are not scalars, and reserved names (create refuses them in a row), are left out."""
    env: dict[str, str] = {}
    for key, value in variables.items():
        name = environment_name(key)
        if reserved_environment(name) or not name:
            continue
        if value is None:
            env[name] = ""
        elif isinstance(value, bool):
            env[name] = "true" if value else "false"
        elif isinstance(value, str | int | float):
            env[name] = str(value)
    return env


def parse_provision_output(stdout: str) -> dict[str, str]:
    """Template variables from a provision script's stdout: one JSON object (empty output:
    none), each value made a string as the client does."""
    text = stdout.strip()
    if not text:
        return {}
    try:
        parsed = json.loads(text)
    except json.JSONDecodeError as exc:
        raise TaskScriptOutputError(f"provision output is not valid JSON: {exc}") from exc
    if not isinstance(parsed, dict):
        raise TaskScriptOutputError(
            f"provision output must be a JSON object, not {type(parsed).__name__}"
        )
    return {str(key): str(value) for key, value in parsed.items()}


def version_key(version: str) -> tuple[tuple[int, int, str], ...]:
    """Sort key for versions: dot-separated integer parts compare as numbers (so 1.10 > 1.9),
    other parts as text; an integer part outranks a text part (1.2.0 > 1.2.beta)."""
    return tuple(
        (1, int(part), "") if part.isascii() and part.isdigit() else (0, 0, part)
        for part in version.split(".")
    )


def require_bundle_file(bundle_dir: Path, relative: str, what: str) -> Path:
    """The resolved path of a bundle file, refused when it leaves the bundle or is missing."""
    # Bundle files are copied into sandboxes, so a path outside the bundle would not be there
    # (and must not point the runner at files of the host).
    path = (bundle_dir / relative).resolve()
    if not path.is_relative_to(bundle_dir):
        raise TaskBundleError(f"{what} {relative!r} is outside the bundle")
    if not path.is_file():
        raise TaskBundleError(f"{what} {relative!r} not found in the bundle")
    return path


def refuse_links(tree: AgentTree) -> None:
    """The agent would get a link rather than a file: refused, so that nothing a link points
    at (outside the bundle, or a task file inside it) can reach the agent's workspace."""
    if tree.source is None:
        return
    for folder, dirs, names in os.walk(tree.source):
        here = Path(folder)
        for name in [*dirs, *names]:
            path = here / name
            relative = path.relative_to(tree.source).as_posix()
            if path.is_symlink() and relative not in tree.exclude:
                raise TaskBundleError(
                    f"{relative!r} is a symbolic link; files the agent gets must be real files"
                )
