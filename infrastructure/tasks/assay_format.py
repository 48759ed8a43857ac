"""Assay's own bundle format (the one existing bundles are written in), loaded unchanged.

    name: crack-weak-hash
    instruction: ...            # `{{ var }}` filled at run time
    setup: <bash>               # optional, run in the agent's workspace before it starts
    verification: {type: flag, flag: "FLAG{...}"}    # the agent's submission is compared
    verification: {type: script, script: check.sh}  # a checker run in the agent's workspace
    solution: solution.sh       # optional; defaults to solution.sh when the bundle has one
    network: true               # optional: egress anywhere (egress_allow ("*",))
    timeout_sec: 300
    tags: [...]

Unknown keys are errors so typos do not pass silently. The agent gets every bundle file but
task.yaml, the solution and the checker.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import msgspec

from infrastructure.tasks.model import (
    FlagVerification,
    ScriptVerification,
    Task,
    TaskBundleError,
    TaskName,
    TaskVersion,
    refuse_links,
    require_bundle_file,
)

DEFAULT_SOLUTION = "solution.sh"


class TaskFile(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """What an Assay-format `task.yaml` may say, exactly."""

    name: TaskName
    version: TaskVersion = "1.0.0"
    description: str = ""
    instruction: str
    setup: str | None = None
    verification: FlagVerification | ScriptVerification | None = None
    solution: str | None = None
    network: bool = False
    timeout_sec: Annotated[int, msgspec.Meta(ge=1)] | None = None
    tags: tuple[str, ...] = ()


def load_assay_bundle(raw: dict[str, Any], bundle_dir: Path) -> Task:
    try:
        spec = msgspec.convert(raw, TaskFile)
    except msgspec.ValidationError as exc:
        raise TaskBundleError(f"invalid task.yaml: {exc}") from exc
    solution = spec.solution
    if solution is not None:
        require_bundle_file(bundle_dir, solution, "solution")
    elif (bundle_dir / DEFAULT_SOLUTION).is_file():
        solution = DEFAULT_SOLUTION
    if isinstance(spec.verification, ScriptVerification):
        require_bundle_file(bundle_dir, spec.verification.script, "verification script")
    fields = msgspec.structs.asdict(spec) | {"solution": solution}
    task = Task(
        **fields,
        format="assay",
        egress_allow=("*",) if spec.network else None,
        bundle_dir=bundle_dir,
    )
    refuse_links(task.agent_tree())
    return task
