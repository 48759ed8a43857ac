"""Runs one claimed item through its phases, recording an event per transition.

    claiming -> provisioning -> agent_running -> agent_finished -> verifying -> verdict

The deadline (the item's timeout from the claim: the evaluation's `task_timeout_sec`, else the
task's own `timeout_sec`, else the default, as resolved at create and recorded in
`metadata_json.timeout`) bounds every sandbox command and the agent;
past it the item ends `timed_out` and the sandbox's process tree is killed. Sandbox and model
endpoint failures that may pass (429, 5xx, unreachable) end in `infra_error` (retried with backoff
while retries are left). What no retry can change ends in `errored` at once, never `failed` (no
answer was judged): a checker that breaks, an endpoint that refuses the request (4xx: bad model,
bad key), an agent that crashes or has nothing to run (the oracle without a reference solution),
a task this worker does not have. Cancellation kills the sandbox within the poll interval.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Coroutine, Mapping
from typing import Any, TypeVar

import structlog

from app.services.items import ClaimedItem, ItemLost, ItemService
from app.worker.live_transcript import LiveTranscript
from app.worker.stream_watch import StreamWatch
from app.worker.verification import (
    CheckerBroke,
    TaskUnrunnable,
    check_flag,
    check_flag_file,
    run_checker,
    run_task_script,
)
from domain import item as it
from domain.errors import IllegalTransition
from domain.projections import EvaluationView
from infrastructure.agents.protocol import (
    Agent,
    AgentContext,
    AgentInfraError,
    AgentOutcome,
    redact,
)
from infrastructure.db.outage import is_database_unavailable
from infrastructure.eventstore import SideWrite
from infrastructure.metrics import sandbox_start
from infrastructure.registry.bundles import BundleSource
from infrastructure.sandbox.protocol import (
    EgressPolicy,
    Sandbox,
    SandboxError,
    SandboxProvider,
    SandboxSpec,
)
from infrastructure.tasks import (
    FlagFileVerification,
    FlagVerification,
    Task,
    TaskCatalog,
    TaskScriptOutputError,
    UnknownTask,
    parse_provision_output,
    variables_environment,
)
from infrastructure.work_queue import TranscriptStore

log = structlog.get_logger("assay.worker")
T = TypeVar("T")

CANCEL_POLL_SECONDS = 0.5


class DeadlinePassed(Exception):
    pass


class AgentErrored(Exception):
    """The agent could not do its job and a retry would meet the same wall: the model endpoint
    refused the request (bad model name, bad key), the agent crashed, or the oracle has no
    reference solution. The item ends `errored`, never `failed`: no answer was judged."""


class Deadline:
    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.at = time.monotonic() + seconds

    def remaining(self) -> float:
        left = self.at - time.monotonic()
        if left <= 0:
            raise DeadlinePassed()
        return left


class ItemJob:
    """Everything a runner needs about one claimed item, resolved by the pool."""

    def __init__(
        self,
        *,
        claimed: ClaimedItem,
        worker_id: str,
        evaluation: EvaluationView,
        agent_name: str,
        agent: Agent,
        provider: SandboxProvider,
        context_extras: Mapping[str, Any],
        secrets_env: Mapping[str, str],
    ) -> None:
        self.claimed = claimed
        self.worker_id = worker_id
        self.evaluation = evaluation
        self.agent_name = agent_name
        self.agent = agent
        self.provider = provider
        self.context_extras = context_extras
        self.secrets_env = secrets_env
        # Set once provisioned, so the watcher can kill it whatever phase is running.
        self.sandbox: Sandbox | None = None
        # The agent's transcript, waiting for the item's next append (see ItemRunner._record).
        self.transcript_write: SideWrite | None = None

    @property
    def item(self) -> it.ItemState:
        """The item as this worker last appended it (what to run is fixed at create)."""
        return self.claimed.state

    @property
    def item_id(self) -> str:
        return self.claimed.item_id

    @property
    def evaluation_id(self) -> str:
        return self.evaluation.id


class ItemRunner:
    def __init__(
        self,
        *,
        catalog: TaskCatalog,
        items: ItemService,
        transcripts: TranscriptStore,
        default_max_steps: int,
        bundles: BundleSource | None = None,
    ) -> None:
        self.catalog = catalog
        # Where an item's recorded bundle digest is fetched from (the registry's blobs).
        self.bundles = bundles
        self.items = items
        self.transcripts = transcripts
        self.default_max_steps = default_max_steps
        self.versions = StreamWatch(items.stored_versions, CANCEL_POLL_SECONDS)

    async def run(self, job: ItemJob) -> None:
        """Run the item's phases while a watcher checks nobody else moved the item; if someone
        did (cancelled, or took it back), kill the sandbox and stop at once, whatever phase."""
        work = asyncio.ensure_future(self._phases(job))
        watcher = asyncio.ensure_future(self._watch(job, work))
        try:
            await work
        except asyncio.CancelledError:
            if not (watcher.done() and not watcher.cancelled() and watcher.result()):
                raise  # our own task was cancelled (shutdown), not the item lost
            log.info("item_lost", item_id=job.item_id, reason="moved by someone else")
        finally:
            watcher.cancel()

    async def _watch(self, job: ItemJob, work: asyncio.Future[None]) -> bool:
        """Poll the item's stream version: any append this worker did not make means the item
        is no longer this run's (a status check alone misses cancel + retry + re-claim). The
        running items' polls share one query per interval (app/worker/stream_watch.py)."""
        claimed = job.claimed
        while not work.done():
            try:
                stored = await self.versions.next_version(claimed.item_id)
            except Exception as exc:
                if not is_database_unavailable(exc):
                    raise
                continue  # the database restarts: look again once it is back
            if claimed.busy:
                continue  # our own append may have committed before the item caught up
            if stored > claimed.state.version:
                if job.sandbox is not None:
                    await job.sandbox.kill_all()
                work.cancel()
                return True
        return False

    async def _phases(self, job: ItemJob) -> None:
        config = job.evaluation.config
        timeout_sec, timeout_source = item_timeout(job.item, config.task_timeout_sec)
        deadline = Deadline(timeout_sec)
        redactions = tuple(job.secrets_env.values())
        # Commands that go into the ending's append: the agent's finish when nothing that takes
        # time follows it (an in-process flag check, or a deadline already passed). One append
        # instead of two is a commit less per item; agent_result keeps the agent's own timing.
        prelude: list[it.AnyItemCommand] = []
        ending: it.AnyItemCommand | None = None
        try:
            task = await self._task(job)
            # Dataset row variables over task_config: template values, and environment
            # variables of every process of the item (secrets and services win a clash).
            variables = {**config.task_config, **job.item.variables}
            variables_env = variables_environment(variables)
            sandbox = await self._provision(job, task, variables_env)
            await self._setup(sandbox, task, deadline, variables)
            scripts_env = {
                **variables_env,
                **job.secrets_env,
                **task.service_environment(sandbox.endpoints()),
            }
            provided = await self._provision_script(task, sandbox, deadline, scripts_env)
            outcome = await self._run_agent(
                job, task, sandbox, deadline, redactions, {**variables, **provided}, scripts_env
            )
            # The agent's turn is over: every process it started dies before anything is
            # verified, however it detached, so nothing it left can touch what is checked.
            await sandbox.kill_all()
            finished = it.FinishAgent(agent_result=outcome.agent_result(job.agent_name))
            verifying = it.StartVerifying()
            try:
                deadline.remaining()
            except DeadlinePassed:
                prelude = [finished]
                raise
            if outcome.stop_reason == "error":
                prelude = [finished]
                raise AgentErrored(outcome.error or f"agent {job.agent_name} ended with an error")
            verification = task.verification
            if isinstance(verification, FlagVerification):
                prelude = [finished, verifying]
                passed, result = check_flag(verification, outcome, redactions)
            elif isinstance(verification, FlagFileVerification):
                prelude = [finished, verifying]
                passed, result = await check_flag_file(verification, sandbox, redactions)
            else:
                # Verification starts the moment the agent is done: both in one append.
                await self._record(job, finished, verifying)
                passed, result = await run_checker(
                    task,
                    sandbox,
                    timeout_sec=deadline.remaining(),
                    env=scripts_env,
                    redactions=redactions,
                )
            await self._teardown(task, sandbox, scripts_env)
            ending = it.RecordVerdict(passed=passed, result=result)
        except ItemLost as exc:
            log.info("item_lost", item_id=job.item_id, reason=str(exc))
            return
        except DeadlinePassed:
            ending = it.TimeOut(error=f"{TIMEOUT_NAMES[timeout_source]} ({timeout_sec}s) exceeded")
        except (CheckerBroke, TaskUnrunnable, TaskScriptOutputError, AgentErrored) as exc:
            ending = it.EndErrored(error=redact(str(exc), redactions))
        except (SandboxError, AgentInfraError) as exc:
            ending = self.items.infra_failure(redact(f"{type(exc).__name__}: {exc}", redactions))
        except Exception as exc:  # a bug in the engine must not strand the item in flight
            log.error("runner_failed", item_id=job.item_id, exc_info=exc)
            ending = self.items.infra_failure(f"worker error: {type(exc).__name__}")
        finally:
            # Clean up before the ending is recorded: once an item has ended, its sandbox is
            # gone (or kept, and the same append says where). Cancellation cleans up too, and
            # a cancellation that arrives during the clean-up (the watcher found the item
            # cancelled while the runner was already ending it) does not cut it short.
            kept = await run_to_completion(self._clean_up(job, prelude, ending))
        await self._end(job, [*prelude, ending, *([kept] if kept else [])])

    async def _task(self, job: ItemJob) -> Task:
        """The bundle the item recorded at create, by digest (a retry, or a worker with other
        local folders, runs the same bytes); items from before digests by their ref, in this
        worker's catalog. A worker that lacks such a task was started with other
        ASSAY_TASK_PATHS than the API, which no retry can change: the item ends errored at
        once, saying where to look."""
        item = job.item
        if item.bundle_digest is not None and self.bundles is not None:
            return await self.bundles.task(item.bundle_digest)
        try:
            return self.catalog.resolve(item.task_ref)
        except UnknownTask as exc:
            raise TaskUnrunnable(
                f"task {item.task_ref!r} is not in the task folders of worker "
                f"{job.worker_id} (the API accepted it: start this worker with the "
                "same ASSAY_TASK_PATHS as the API)"
            ) from exc

    async def _record(self, job: ItemJob, *commands: it.AnyItemCommand) -> None:
        """Append the item's next events; the agent's transcript, once there is one, goes into
        the same transaction (it becomes visible with them, and costs no commit of its own)."""
        side_writes = [job.transcript_write] if job.transcript_write is not None else []
        await job.claimed.execute(*commands, side_writes=side_writes)
        job.transcript_write = None

    # ---- phases ----

    async def _provision(
        self, job: ItemJob, task: Task, variables_env: Mapping[str, str]
    ) -> Sandbox:
        problems = task.service_problems(job.provider.name)
        if problems:
            raise TaskUnrunnable("; ".join(problems))
        spec = SandboxSpec(
            item_id=job.item_id,
            worker_id=job.worker_id,
            egress=egress_policy(task.egress_allow, job.evaluation.config.egress_overrides),
            services=task.services,
            env={**variables_env, **job.secrets_env},
        )
        with sandbox_start():
            sandbox = await job.provider.provision(spec)
        job.sandbox = sandbox
        # The agent gets the task's files, never its answers: no task.yaml (it holds the flag),
        # no reference solution, no checker, no service's files (see Task.agent_tree).
        tree = task.agent_tree()
        if tree.source is not None:
            await sandbox.put_tree(tree.source, exclude=tree.exclude)
        return sandbox

    async def _provision_script(
        self, task: Task, sandbox: Sandbox, deadline: Deadline, env: Mapping[str, str]
    ) -> dict[str, str]:
        """A dn task's `provision` script, run as a fresh principal (never the agent): its
        JSON output fills the instruction's variables."""
        if task.provision is None:
            return {}
        limit = min(deadline.remaining(), float(task.provision.timeout))
        result = await run_task_script(
            sandbox, task, task.provision.script, timeout_sec=limit, env=env
        )
        if result.timed_out or result.exit_code != 0:
            deadline.remaining()
            raise TaskUnrunnable(
                f"provision script failed (exit {result.exit_code}): {result.stderr[-500:]}"
            )
        return parse_provision_output(result.stdout)

    async def _teardown(self, task: Task, sandbox: Sandbox, env: Mapping[str, str]) -> None:
        """A dn task's `teardown`: best effort, after the verdict is known; never changes it."""
        if task.teardown is None:
            return
        try:
            await run_task_script(
                sandbox,
                task,
                task.teardown.script,
                timeout_sec=float(task.teardown.timeout),
                env=env,
            )
        except SandboxError as exc:
            log.warning("task_teardown_failed", task=task.ref, error=str(exc))

    async def _setup(
        self, sandbox: Sandbox, task: Task, deadline: Deadline, variables: Mapping[str, object]
    ) -> None:
        setup = task.render_setup(variables)
        if not setup:
            return
        result = await sandbox.run(setup, timeout_sec=deadline.remaining())
        if result.timed_out:
            deadline.remaining()  # past the item deadline: timed_out, else the setup hung
            raise SandboxError("task setup did not finish in time")
        if result.exit_code != 0:
            raise SandboxError(
                f"task setup failed with exit {result.exit_code}: {result.stderr[-500:]}"
            )

    async def _run_agent(
        self,
        job: ItemJob,
        task: Task,
        sandbox: Sandbox,
        deadline: Deadline,
        redactions: tuple[str, ...],
        variables: Mapping[str, object],
        scripts_env: Mapping[str, str],
    ) -> AgentOutcome:
        """`variables`: the template values (row, task_config, provision's output)."""
        session_id = str(uuid.uuid4())
        await self._record(
            job, it.StartAgent(session_id=session_id, isolation=dict(sandbox.isolation))
        )
        # The transcript is stored as the agent records it (side data, never events), so it
        # can be read while the agent runs; see app/worker/live_transcript.py.
        live = LiveTranscript(self.transcripts, session_id, job.item_id)
        config = job.evaluation.config
        context = AgentContext(
            task=task,
            instruction=task.render_instruction(variables, sandbox.endpoints()),
            env=scripts_env,
            model=config.model,
            max_steps=config.max_steps or self.default_max_steps,
            timeout_sec=deadline.remaining(),
            redact=redactions,
            on_message=live.add,
            **job.context_extras,
        )
        live.start()
        try:
            # The agent honours its own budget; the extra seconds only catch a hung agent.
            outcome = await asyncio.wait_for(
                job.agent.run(sandbox, context), deadline.remaining() + 5
            )
        except TimeoutError as exc:
            await live.stop(flush=True)
            await sandbox.kill_all()
            raise DeadlinePassed() from exc
        except (AgentInfraError, SandboxError, DeadlinePassed):
            await live.stop(flush=True)
            raise  # the endpoint or the sandbox failed, not the agent: infra_error, retried
        except asyncio.CancelledError:
            await run_to_completion(live.stop())
            raise
        except Exception as exc:
            await live.stop(flush=True)
            # A bug in the agent: the same agent on the same task crashes the same way again.
            log.warning("agent_crashed", item_id=job.item_id, agent=job.agent_name, exc_info=exc)
            raise AgentErrored(
                f"agent {job.agent_name} crashed: {type(exc).__name__}: {exc}"
            ) from exc
        await live.stop()
        # What the live writer has not stored yet goes with the item's next append.
        job.transcript_write = self.transcripts.transcript_write(
            session_id, job.item_id, outcome.transcript, after_seq=live.stored_seq
        )
        if outcome.stop_reason == "timeout":
            raise DeadlinePassed()
        return outcome

    # ---- endings ----

    async def _end(self, job: ItemJob, commands: list[it.AnyItemCommand]) -> None:
        try:
            await self._record(job, *commands)
        except ItemLost as exc:
            log.info("item_lost", item_id=job.item_id, reason=str(exc))
            return
        for command in commands:
            log_ending(job, command)

    async def _clean_up(
        self, job: ItemJob, prelude: list[it.AnyItemCommand], ending: it.AnyItemCommand | None
    ) -> it.KeepSandbox | None:
        """Destroy the sandbox, or keep it as the domain's keep-or-destroy rule says and return
        the command that records where. `prelude` is what the ending's append records first."""
        sandbox = job.sandbox
        if sandbox is None:
            return None
        keep = False
        if ending is not None:
            try:
                after = job.claimed.preview(*prelude, ending)
                keep = it.keeps_sandbox(job.evaluation.config.cleanup_policy, after.status)
            except IllegalTransition:
                keep = False  # the ending will be refused too; nothing to keep it for
        try:
            if keep:
                await sandbox.keep()
                return it.KeepSandbox(location=sandbox.location)
            await sandbox.destroy()
        except SandboxError as exc:
            log.warning("sandbox_cleanup_failed", item_id=job.item_id, error=str(exc))
        return None


async def run_to_completion(work: Coroutine[Any, Any, T]) -> T:
    """Await `work` to its end even if the caller is cancelled meanwhile; the cancellation is
    raised once it is done."""
    task = asyncio.ensure_future(work)
    cancelled = False
    while True:
        try:
            result = await asyncio.shield(task)
            break
        except asyncio.CancelledError:
            if task.done():
                raise  # the work itself was cancelled
            cancelled = True
    if cancelled:
        raise asyncio.CancelledError()
    return result


def log_ending(job: ItemJob, command: it.AnyItemCommand) -> None:
    """One line per way an item ends (or goes back to the queue), for the operator."""
    state = job.item
    where = {"item_id": job.item_id, "evaluation_id": job.evaluation_id}
    match command:
        case it.RecordVerdict(passed=passed):
            log.info("item_verdict", **where, passed=passed, task=state.task_ref)
        case it.ReportInfraFailure(error=error):
            # The domain decided whether a retry is left: the item is queued again, or ended.
            retrying = state.status == "queued"
            log.warning("item_infra_error", **where, error=error, will_retry=retrying)
            if retrying:
                log.info(
                    "item_retry_scheduled",
                    **where,
                    retry=state.retry_count,
                    max_retries=state.max_retries,
                    not_before=state.retry_not_before,
                )
        case it.EndErrored(error=error):
            log.warning("item_errored", **where, error=error)
        case it.TimeOut(error=error):
            log.warning("item_timed_out", **where, error=error)
        case _:
            pass


# What each timeout source is called in a timed-out item's error.
TIMEOUT_NAMES: dict[str, str] = {
    "evaluation": "task_timeout_sec",
    "task": "the task's timeout_sec",
    "default": "the default task timeout",
}


def item_timeout(item: it.ItemState, evaluation_timeout_sec: int) -> tuple[int, str]:
    """The item's wall-clock bound in seconds and its source, as recorded at create; items
    queued before that was recorded run under the evaluation's task_timeout_sec."""
    if item.timeout_sec is not None and item.timeout_source in TIMEOUT_NAMES:
        return item.timeout_sec, item.timeout_source
    return evaluation_timeout_sec, "evaluation"


def egress_policy(
    task_allow: tuple[str, ...] | None, overrides: list[str] | None
) -> EgressPolicy | None:
    """Deny-all plus the task's `egress.allow` and the evaluation's `egress_overrides`; no
    policy at all (the item's own network only) when neither says anything."""
    if task_allow is None and overrides is None:
        return None
    return EgressPolicy(tuple(dict.fromkeys([*(task_allow or ()), *(overrides or ())])))
