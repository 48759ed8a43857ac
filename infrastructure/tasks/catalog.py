"""The catalog: finds bundle folders on disk, loads each in its format, resolves refs.

The catalog is loaded once at start-up. A bundle that does not validate is listed in
`TaskCatalog.problems` and left out entirely, never half-loaded: one typo must neither take
the service down nor let a broken task be scheduled.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import msgspec
import yaml

from infrastructure.tasks.assay_format import load_assay_bundle
from infrastructure.tasks.dn_format import is_dn_format, load_dn_bundle
from infrastructure.tasks.model import Task, TaskBundleError, version_key

SHIPPED_TASKS_DIR = Path(__file__).resolve().parents[2] / "tasks"
TASK_FILE = "task.yaml"

_REF = re.compile(r"\A(?:[^/@\s]+/)?(?P<name>[^/@\s]+)(?:@(?P<version>[^/@\s]+))?\Z")


class TaskProblem(msgspec.Struct, frozen=True):
    """A bundle folder that was not loaded, and why."""

    path: str
    error: str

    @property
    def name(self) -> str:
        """The bundle's folder name: what an operator looks for."""
        return Path(self.path).name


class UnknownTask(Exception):
    def __init__(self, ref: str) -> None:
        self.ref = ref
        super().__init__(f"unknown task {ref!r}")


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

    def suggest(self, ref: str, limit: int = 3) -> list[str]:
        """Known task names closest to the name part of `ref` (difflib), best first."""
        match = _REF.match(ref.strip())
        wanted = match.group("name") if match else ref.strip()
        return difflib.get_close_matches(wanted, self.names(), n=limit, cutoff=0.6)

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
    """Load and validate one bundle folder, in whichever format it is written; raise
    TaskBundleError with the reason."""
    try:
        raw = yaml.safe_load((folder / TASK_FILE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise TaskBundleError(f"cannot read {TASK_FILE}: {exc}") from exc
    except yaml.YAMLError as exc:
        raise TaskBundleError(f"invalid YAML in {TASK_FILE}: {exc}") from exc
    if not isinstance(raw, dict):
        raise TaskBundleError(f"{TASK_FILE} must be a mapping, not {type(raw).__name__}")
    bundle_dir = folder.resolve()
    if is_dn_format(raw, bundle_dir):
        return load_dn_bundle(raw, bundle_dir)
    return load_assay_bundle(raw, bundle_dir)


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


def check_bundles(roots: Sequence[str | os.PathLike[str]]) -> tuple[list[Task], list[TaskProblem]]:
    """Load the bundles of `roots` (each a bundle or a folder of bundles) the way the catalog
    does, without the shipped ones: what loads, and every problem (duplicates included)."""
    tasks: dict[str, Task] = {}
    problems: list[TaskProblem] = []
    for root in (Path(p) for p in roots):
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
    return list(tasks.values()), problems
