"""Deciding an item's verdict once the agent's turn is over (and every process it started is
dead): from what the worker itself reads, never from a file or process the agent controls.

- `flag` (Assay format): the agent's submission equals the flag; compared in the worker.
- `method: flag` (dn format): the worker reads the file at `path` from the agent's sandbox
  itself (no link followed out) and compares it to `value` or its sha256 `hash`.
- `script` (Assay format) and `method: script, where: agent`: the checker runs as a fresh
  principal that sees the agent's workspace read-only; the script travels in its command line,
  so no file the agent prepared is ever run as the checker. Exit 0 passes, 1 fails, anything
  else (or a timeout) means the checker broke: the item is errored, not failed.
- `method: script, where: environment`: the same, inside the task's service (as the service).
Task scripts around the agent (dn `provision` before it, `teardown` after the verdict) run
as that same kind of fresh principal, never in the agent's view.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from typing import Any

from infrastructure.agents.protocol import AgentOutcome, redact
from infrastructure.sandbox.protocol import (
    ExecResult,
    Sandbox,
    SandboxFileNotFound,
    SandboxPathUnavailable,
)
from infrastructure.tasks import (
    CheckerScriptVerification,
    FlagFileVerification,
    FlagVerification,
    ScriptVerification,
    Task,
)

OUTPUT_KEPT = 4000
CHECKER_MAX_SECONDS = 300.0


class CheckerBroke(Exception):
    """The checker itself failed (exit other than 0/1, timeout): the item is errored."""


class TaskUnrunnable(Exception):
    """The task cannot run here as written (a provider without what it needs, a provision
    script whose output is not JSON): the item is errored with the reason."""


def check_flag(
    verification: FlagVerification, outcome: AgentOutcome, redactions: tuple[str, ...]
) -> tuple[bool, dict[str, Any]]:
    submitted = outcome.submission or ""
    passed = verification.matches(submitted)
    return passed, {
        "verification": "flag",
        "submitted": redact(submitted.strip(), redactions)[:OUTPUT_KEPT],
        "correct": passed,
    }


async def check_flag_file(
    verification: FlagFileVerification, sandbox: Sandbox, redactions: tuple[str, ...]
) -> tuple[bool, dict[str, Any]]:
    """A missing file is a wrong answer, not a broken checker."""
    try:
        content = await sandbox.get_file(verification.path)
    except SandboxPathUnavailable as exc:
        raise TaskUnrunnable(str(exc)) from exc
    except SandboxFileNotFound:
        return False, {"verification": "flag", "path": verification.path, "found": False}
    passed = verification.matches(content)
    shown = redact(content.decode("utf-8", "replace").strip(), redactions)[:OUTPUT_KEPT]
    return passed, {
        "verification": "flag",
        "path": verification.path,
        "found": True,
        "submitted": shown,
        "correct": passed,
    }


def script_command(task: Task, script_path: str) -> str:
    """`bash -c <the script's text> <its name>`: the checker's code as the worker read it."""
    text = (task.bundle_dir / script_path).read_text(errors="replace")
    name = shlex.quote(script_path.rsplit("/", 1)[-1])
    return f"bash -c {shlex.quote(text)} {name}"


async def run_task_script(
    sandbox: Sandbox,
    task: Task,
    script_path: str,
    *,
    timeout_sec: float,
    env: Mapping[str, str],
    service: str | None = None,
) -> ExecResult:
    """Run one of the task's own scripts as a fresh principal (or inside `service`)."""
    command = script_command(task, script_path)
    if service is not None:
        exports = " ".join(f"{key}={shlex.quote(value)}" for key, value in env.items())
        prefix = f"export {exports}; " if exports else ""
        return await sandbox.run_in_service(service, prefix + command, timeout_sec=timeout_sec)
    checker = await sandbox.open_checker()
    return await checker.run(command, timeout_sec=timeout_sec, env=dict(env))


async def run_checker(
    task: Task,
    sandbox: Sandbox,
    *,
    timeout_sec: float,
    env: Mapping[str, str],
    redactions: tuple[str, ...],
) -> tuple[bool, dict[str, Any]]:
    verification = task.verification
    service: str | None = None
    if isinstance(verification, ScriptVerification):
        script, limit = verification.script, CHECKER_MAX_SECONDS
    elif isinstance(verification, CheckerScriptVerification):
        script, limit = verification.script, float(verification.timeout)
        if verification.where == "environment":
            service = verification.service or _only_service(task)
    else:
        raise CheckerBroke(f"task {task.ref} has no checker script")
    result = await run_task_script(
        sandbox, task, script, timeout_sec=min(timeout_sec, limit), env=env, service=service
    )
    output = redact(result.stdout, redactions)[-OUTPUT_KEPT:]
    if result.timed_out:
        raise CheckerBroke(f"checker did not finish within {min(timeout_sec, limit):.0f}s")
    if result.exit_code not in (0, 1):
        raise CheckerBroke(
            f"checker exited {result.exit_code}: {redact(result.stderr, redactions)[-500:]}"
        )
    return result.exit_code == 0, {
        "verification": "script",
        "where": "environment" if service else "checker",
        "exit_code": result.exit_code,
        "output": output,
    }


def _only_service(task: Task) -> str:
    if len(task.services) != 1:
        raise TaskUnrunnable(
            f"task {task.ref}: a where: environment checker needs a service named when the "
            f"task has {len(task.services)} services"
        )
    return task.services[0].name
