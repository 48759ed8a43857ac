"""Task bundles: the `task.yaml` schema and the catalog that finds bundles on disk.

A bundle is a folder holding `task.yaml` plus whatever files the task needs (a reference
`solution.sh`, a checker script, data). The catalog is loaded once at start-up. A bundle that does
not validate is listed in `TaskCatalog.problems` and left out entirely, never half-loaded: one
typo must neither take the service down nor let a broken task be scheduled.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Annotated

import msgspec
import yaml

SHIPPED_TASKS_DIR = Path(__file__).resolve().parents[1] / "tasks"
TASK_FILE = "task.yaml"
DEFAULT_SOLUTION = "solution.sh"

# \A and \Z rather than ^ and $: msgspec uses re.search, and `$` would accept a trailing newline.
TaskName = Annotated[str, msgspec.Meta(pattern=r"\A[a-z0-9][a-z0-9_-]*\Z")]
# `@` and `/` are taken by the ref syntax `[org/]name[@version]`, so versions may not use them.
TaskVersion = Annotated[str, msgspec.Meta(pattern=r"\A[A-Za-z0-9][A-Za-z0-9.+_-]*\Z")]

_REF = re.compile(r"\A(?:[^/@\s]+/)?(?P<name>[^/@\s]+)(?:@(?P<version>[^/@\s]+))?\Z")
_PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z0-9_][A-Za-z0-9_.-]*)\s*\}\}")


class FlagVerification(
    msgspec.Struct, frozen=True, forbid_unknown_fields=True, tag_field="type", tag="flag"
):
    """The agent submits a flag; it passes when it equals `flag`, both stripped."""

    # A pattern rather than min_length: a flag of only whitespace would strip to "" and then
    # match an agent that submitted nothing.
    flag: Annotated[str, msgspec.Meta(pattern=r"\S")]

    def matches(self, submitted: str) -> bool:
        return submitted.strip() == self.flag.strip()


class ScriptVerification(
    msgspec.Struct, frozen=True, forbid_unknown_fields=True, tag_field="type", tag="script"
):
    """A checker file of the bundle runs after the agent: exit 0 passes, stdout is the result."""

    script: str


Verification = FlagVerification | ScriptVerification


class TaskFile(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """What `task.yaml` may say, exactly; unknown keys are errors so typos do not pass silently."""

    name: TaskName
    version: TaskVersion = "1.0.0"
    description: str = ""
    # A template: `{{ var }}` is filled from the dataset row and task_config at run time.
    instruction: str
    # Shell script text, run with bash in the sandbox before the agent starts.
    setup: str | None = None
    # Optional here so a bundle without it still loads; creating an evaluation refuses it.
    verification: Verification | None = None
    # Relative path of the reference solution; defaults to `solution.sh` when the bundle has one.
    solution: str | None = None
    network: bool = False
    timeout_sec: Annotated[int, msgspec.Meta(ge=1)] | None = None
    tags: tuple[str, ...] = ()


class Task(TaskFile, frozen=True, kw_only=True):
    """A validated bundle on disk; `solution` is already resolved against the bundle."""

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
        if isinstance(self.verification, ScriptVerification):
            return self.bundle_dir / self.verification.script
        return None

    def render_instruction(self, variables: Mapping[str, object]) -> str:
        """Fill `{{ var }}` placeholders; unknown ones stay as written, None becomes "".

        One pass only: a value that itself contains `{{ x }}` is user data and is not expanded.
        """

        def fill(match: re.Match[str]) -> str:
            key = match.group(1)
            if key not in variables:
                return match.group(0)
            value = variables[key]
            return "" if value is None else str(value)

        return _PLACEHOLDER.sub(fill, self.instruction)


class TaskProblem(msgspec.Struct, frozen=True):
    """A bundle folder that was not loaded, and why."""

    path: str
    error: str


class UnknownTask(Exception):
    def __init__(self, ref: str) -> None:
        self.ref = ref
        super().__init__(f"unknown task {ref!r}")


class TaskBundleError(Exception):
    """A bundle folder that cannot be loaded; the message is the reason."""


def version_key(version: str) -> tuple[tuple[int, int, str], ...]:
    """Sort key for versions: dot-separated integer parts compare as numbers (so 1.10 > 1.9),
    other parts as text; an integer part outranks a text part (1.2.0 > 1.2.beta)."""
    return tuple(
        (1, int(part), "") if part.isascii() and part.isdigit() else (0, 0, part)
        for part in version.split(".")
    )


class TaskCatalog:
    """Every loaded task, found by ref, plus the bundles that could not be loaded."""

    def __init__(self, tasks: Iterable[Task], problems: Iterable[TaskProblem] = ()) -> None:
        self._resolved: dict[str, Task] = {}
        self.problems: list[TaskProblem] = list(problems)
        self._versions: dict[str, dict[str, Task]] = {}
        for task in tasks:
            versions = self._versions.setdefault(task.name, {})
            if task.version in versions:
                raise ValueError(f"duplicate task {task.ref}")
            versions[task.version] = task

    def resolve(self, ref: str) -> Task:
        """Find a task by `name`, `name@version`, `org/name` or `org/name@version`.

        The org part is accepted and ignored: tasks are global in this service (one catalog per
        deployment, shared by every org), while the client writes refs as it would for a
        registry with per-org namespaces. Without a version the highest version wins.
        """
        known = self._resolved.get(ref)
        if known is not None:
            return known  # the catalog never changes after loading: resolve each ref once
        match = _REF.match(ref.strip())
        versions = self._versions.get(match.group("name"), {}) if match else {}
        if not match or not versions:
            raise UnknownTask(ref)
        version = match.group("version")
        if version is None:
            task = max(versions.values(), key=lambda candidate: version_key(candidate.version))
        elif version in versions:
            task = versions[version]
        else:
            raise UnknownTask(ref)
        self._resolved[ref] = task
        return task

    def names(self) -> list[str]:
        """The distinct task names, sorted."""
        return sorted(self._versions)

    def tasks(self) -> list[Task]:
        """Every loaded task (all versions), sorted by name then version."""
        return sorted(
            (task for versions in self._versions.values() for task in versions.values()),
            key=lambda task: (task.name, version_key(task.version)),
        )


def load_bundle(folder: Path) -> Task:
    """Load and validate one bundle folder; raise TaskBundleError with the reason."""
    try:
        raw = yaml.safe_load((folder / TASK_FILE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise TaskBundleError(f"cannot read {TASK_FILE}: {exc}") from exc
    except yaml.YAMLError as exc:
        raise TaskBundleError(f"invalid YAML in {TASK_FILE}: {exc}") from exc
    if not isinstance(raw, dict):
        raise TaskBundleError(f"{TASK_FILE} must be a mapping, not {type(raw).__name__}")
    try:
        spec = msgspec.convert(raw, TaskFile)
    except msgspec.ValidationError as exc:
        raise TaskBundleError(f"invalid {TASK_FILE}: {exc}") from exc

    bundle_dir = folder.resolve()
    solution = spec.solution
    if solution is not None:
        _require_bundle_file(bundle_dir, solution, "solution")
    elif (bundle_dir / DEFAULT_SOLUTION).is_file():
        solution = DEFAULT_SOLUTION
    if isinstance(spec.verification, ScriptVerification):
        _require_bundle_file(bundle_dir, spec.verification.script, "verification script")
    fields = msgspec.structs.asdict(spec) | {"solution": solution}
    return Task(**fields, bundle_dir=bundle_dir)


def _require_bundle_file(bundle_dir: Path, relative: str, what: str) -> None:
    # Bundle files are copied into the sandbox, so a path outside the bundle would not be there
    # (and must not point the runner at files of the host).
    path = (bundle_dir / relative).resolve()
    if not path.is_relative_to(bundle_dir):
        raise TaskBundleError(f"{what} {relative!r} is outside the bundle")
    if not path.is_file():
        raise TaskBundleError(f"{what} {relative!r} not found in the bundle")


def _bundle_folders(root: Path, problems: list[TaskProblem]) -> Iterator[Path]:
    """A root is itself a bundle (it has task.yaml) or holds bundle subfolders."""
    if (root / TASK_FILE).is_file():
        yield root
    elif root.is_dir():
        yield from sorted(child for child in root.iterdir() if (child / TASK_FILE).is_file())
    else:
        problems.append(TaskProblem(str(root), "task folder not found"))


def load_catalog(extra_paths: Sequence[str | os.PathLike[str]] = ()) -> TaskCatalog:
    """Load the shipped bundles from the repository's `tasks/`, then each extra folder.

    When two bundles share name@version the first one loaded wins (shipped before extra, then
    in the given order) and the other is reported as a problem.
    """
    # A bare string is a Sequence[str] too; iterating its characters would load nonsense.
    if isinstance(extra_paths, str | os.PathLike):
        raise TypeError("extra_paths is a sequence of folders, not a single path")
    tasks: dict[str, Task] = {}
    problems: list[TaskProblem] = []
    for root in (SHIPPED_TASKS_DIR, *(Path(p) for p in extra_paths)):
        for folder in _bundle_folders(root, problems):
            try:
                task = load_bundle(folder)
            except TaskBundleError as exc:
                problems.append(TaskProblem(str(folder), str(exc)))
                continue
            if task.ref in tasks:
                first = tasks[task.ref].bundle_dir
                problems.append(TaskProblem(str(folder), f"duplicate {task.ref}, kept {first}"))
                continue
            tasks[task.ref] = task
    return TaskCatalog(tasks.values(), problems)
