"""Evaluation commands of the API: create, cancel, retry-failed.

Each one validates against the outside world, loads the aggregate from its streams
(`infrastructure.repository`), calls the pure `domain.evaluation.decide`, and commits the
events in one append transaction (read models included), or appends nothing. Lookups that
can refuse a request (tasks, projects, runtimes, secrets, agents) all run before `decide`, so
a refused command never reaches the store. Refusals are application errors
(`app.services.errors`); `app.errors` turns them into HTTP answers.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import msgspec

from app.services.errors import FieldProblem, Forbidden, InvalidInput, NotFound
from app.services.idempotency import Idempotency
from app.services.work_signal import WorkSignal
from domain import evaluation as ev
from domain import item as it
from domain import task_sets as ts
from domain.projections import Actor, EvaluationView
from domain.timestamps import iso
from infrastructure import codec
from infrastructure.agents.registry import AGENTS, agent_names, resolve_agent
from infrastructure.clock import Clock, system_clock
from infrastructure.eventstore import ConcurrencyConflict
from infrastructure.identity.records import Principal, Runtime
from infrastructure.identity.store import IdentityStore
from infrastructure.queries import ReadModelQueries
from infrastructure.readmodels import fold
from infrastructure.registry.bundles import ResolvedTask
from infrastructure.repository import LoadedEvaluation, Repository
from infrastructure.sandbox.registry import provider_names
from infrastructure.settings import Settings
from infrastructure.tasks import (
    Task,
    TaskCatalog,
    UnknownTask,
    environment_name,
    reserved_environment,
)

SUPPORTED_KINDS = ("security_task_benchmark",)
CONFLICT_RETRIES = 5


def actor_of(principal: Principal) -> Actor:
    user = principal.user
    return Actor(
        user_id=user.id, email=user.email, username=user.username, full_name=user.full_name
    )


class TaskResolver(Protocol):
    """Finds what a task ref names for an org, with its bundle's digest (the registry)."""

    async def resolve(self, org_id: str, ref: str) -> ResolvedTask: ...


class TaskSetExpander(Protocol):
    """Turns `<org>/<name>` of a task set into the refs to run and the members it skips."""

    async def expand(self, org_id: str, ref: str) -> tuple[list[str], list[ts.SkippedMember]]: ...


class EvaluationRequest(Protocol):
    """What create reads of a request (the HTTP schema `EvaluationRequest` is one)."""

    @property
    def name(self) -> str: ...
    @property
    def kind(self) -> str: ...
    @property
    def model(self) -> str | None: ...
    @property
    def capability(self) -> str | None: ...
    @property
    def agent_type(self) -> str | None: ...
    @property
    def task_names(self) -> list[str] | None: ...
    @property
    def dataset(self) -> dict[str, Any] | list[Any] | None: ...
    @property
    def task_set(self) -> str | None: ...
    @property
    def task_config(self) -> dict[str, Any] | None: ...
    @property
    def project_id(self) -> uuid.UUID | None: ...
    @property
    def runtime_id(self) -> uuid.UUID | None: ...
    @property
    def secret_ids(self) -> list[uuid.UUID] | None: ...
    @property
    def sandbox_provider(self) -> str | None: ...
    @property
    def cleanup_policy(self) -> ev.CleanupPolicy: ...
    @property
    def concurrency(self) -> int: ...
    @property
    def task_timeout_sec(self) -> int | None: ...
    @property
    def engine(self) -> str | None: ...
    @property
    def max_steps(self) -> int | None: ...
    @property
    def judge_model(self) -> str | None: ...
    @property
    def model_overrides(self) -> dict[str, Any] | None: ...
    @property
    def egress_overrides(self) -> Any: ...


class CreateReport(msgspec.Struct, kw_only=True):
    """What create tells besides the evaluation: task-set members it left out."""

    skipped_members: list[ts.SkippedMember] | None = None


class CommandContext(msgspec.Struct, frozen=True, kw_only=True):
    principal: Principal
    org_id: str
    workspace_id: str
    request_id: str | None = None


class EvaluationService:
    def __init__(
        self,
        *,
        repository: Repository,
        queries: ReadModelQueries,
        identity: IdentityStore,
        catalog: TaskCatalog,
        settings: Settings,
        work: WorkSignal,
        idempotency: Idempotency,
        clock: Clock = system_clock,
        new_id: Callable[[], str] = lambda: str(uuid.uuid4()),
        tasks: TaskResolver | None = None,
        task_sets: TaskSetExpander | None = None,
    ) -> None:
        self.repository = repository
        self.queries = queries
        self.identity = identity
        self.catalog = catalog
        self.settings = settings
        self.clock = clock
        self.new_id = new_id
        # Without one (tests of create alone), refs resolve in the catalog and carry no digest.
        self.tasks = tasks
        self.task_sets = task_sets
        self.idempotency = idempotency
        # Told when a command made items claimable, so an in-process worker starts at once.
        self.work = work

    # ---- create ----

    async def create(self, ctx: CommandContext, request: EvaluationRequest) -> EvaluationView:
        view, _report = await self.create_reporting(ctx, request)
        return view

    async def create_reporting(
        self,
        ctx: CommandContext,
        request: EvaluationRequest,
        idempotency_key: str | None = None,
    ) -> tuple[EvaluationView, CreateReport]:
        """Create, and say which members of a task set were skipped (unresolvable). With an
        idempotency key used before for the same request: that request's evaluation."""
        if not ctx.principal.can_create(ctx.org_id, ctx.workspace_id):
            raise Forbidden("your role in this organization cannot create evaluations")
        once = self.idempotency.begin(
            ctx.principal.user.id, idempotency_key, ctx.workspace_id, request
        )
        if once is not None and (earlier := await once.earlier()) is not None:
            return await self._current(earlier), CreateReport()
        errors: list[FieldProblem] = []
        report = CreateReport()
        specs = await self._item_specs(ctx, request, errors, report)
        self._check_agent(request, errors)
        if request.kind not in SUPPORTED_KINDS:
            errors.append(_field_error(["body", "kind"], f"kind must be one of {SUPPORTED_KINDS}"))
        provider = request.sandbox_provider or "local"
        if provider not in provider_names():
            errors.append(
                _field_error(
                    ["body", "sandbox_provider"],
                    f"unknown sandbox provider {provider!r}; "
                    f"registered: {', '.join(provider_names())}",
                )
            )
        if errors:
            raise InvalidInput(errors)
        runtime = await self._check_references(ctx, request)
        self._check_openai_endpoint(request, runtime)

        evaluation_id = self.new_id()
        config = ev.EvaluationConfig(
            name=request.name,
            kind=request.kind,
            model=request.model,
            capability=request.capability,
            agent_type=request.agent_type,
            project_id=_id_text(request.project_id),
            runtime_id=_id_text(request.runtime_id),
            sandbox_provider=provider,
            cleanup_policy=request.cleanup_policy,
            concurrency=request.concurrency,
            task_timeout_sec=request.task_timeout_sec or self.settings.default_task_timeout_sec,
            max_retries=self.settings.default_max_retries,
            secret_ids=tuple(str(s) for s in request.secret_ids or ()),
            task_config=request.task_config or {},
            engine=request.engine,
            max_steps=request.max_steps,
            judge_model=request.judge_model,
            model_overrides=request.model_overrides,
            egress_overrides=request.egress_overrides,
            task_set=request.task_set,
        )
        command = ev.CreateEvaluation(
            evaluation_id=evaluation_id,
            org_id=ctx.org_id,
            workspace_id=ctx.workspace_id,
            config=config,
            items=tuple(specs),
        )
        new_events = ev.decide(None, {}, command)
        metadata = msgspec.structs.replace(self._metadata(ctx), idempotency_key=idempotency_key)
        try:
            recorded = await self.repository.commit(
                new_events,
                versions={},
                metadata=metadata,
                recorded_at=iso(self.clock()),
                side_writes=[once.record(evaluation_id)] if once is not None else [],
            )
        except ConcurrencyConflict:  # a concurrent request with the same key came first
            if once is None or (earlier := await once.earlier()) is None:
                raise
            return await self._current(earlier), CreateReport()
        self.work.notify()
        # A new evaluation's row is exactly the fold of its own events: no read needed.
        return fold(recorded).evaluations[evaluation_id], report

    async def _item_specs(
        self,
        ctx: CommandContext,
        request: EvaluationRequest,
        errors: list[FieldProblem],
        report: CreateReport,
    ) -> list[ev.ItemSpec]:
        rows: list[tuple[list[str | int], str, dict[str, Any]]] = []
        if request.task_names:  # task_names wins over dataset
            rows = [
                (["body", "task_names", i], ref, {}) for i, ref in enumerate(request.task_names)
            ]
        elif request.dataset is not None:
            rows = _dataset_rows(request.dataset, errors)
        elif request.task_set:
            rows = await self._task_set_rows(ctx, request.task_set, errors, report)
        if not rows and not errors:
            errors.append(
                _field_error(
                    ["body"],
                    "name at least one task: task_names or dataset rows must yield an item",
                )
            )
        specs: list[ev.ItemSpec] = []
        for loc, ref, variables in rows:
            try:
                resolved = await self._resolve(ctx.org_id, ref)
            except UnknownTask:
                close = self.catalog.suggest(ref)
                hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
                errors.append(_field_error(loc, f"unknown task {ref!r}{hint}", "unknown_task"))
                continue
            task = resolved.task
            if not task.has_verification:
                errors.append(
                    _field_error(
                        loc, f"task {ref!r} has no verification config", "unverifiable_task"
                    )
                )
                continue
            missing = _missing_variables(task, variables, request.task_config or {})
            for name in missing:
                errors.append(
                    _field_error(
                        loc,
                        f"{_entry(loc)} lacks variable {name!r}: task {task.ref} uses "
                        f"{{{{ {name} }}}}; give it in the dataset row or task_config",
                        "missing_variable",
                    )
                )
            if missing:
                continue
            timeout_sec, timeout_source = self._timeout_of(request, task)
            specs.append(
                ev.ItemSpec(
                    item_id=self.new_id(),
                    task_name=task.name,
                    task_ref=resolved.ref,
                    variables=variables,
                    bundle_digest=resolved.digest,
                    timeout_sec=timeout_sec,
                    timeout_source=timeout_source,
                )
            )
        return specs

    async def _task_set_rows(
        self, ctx: CommandContext, ref: str, errors: list[FieldProblem], report: CreateReport
    ) -> list[tuple[list[str | int], str, dict[str, Any]]]:
        loc: list[str | int] = ["body", "task_set"]
        if self.task_sets is None:
            errors.append(_field_error(loc, "task sets are not available on this service"))
            return []
        try:
            refs, skipped = await self.task_sets.expand(ctx.org_id, ref)
        except UnknownTask:
            errors.append(_field_error(loc, f"unknown task set {ref!r}", "unknown_task_set"))
            return []
        report.skipped_members = skipped
        if not refs:
            errors.append(
                _field_error(
                    loc,
                    f"no member of task set {ref!r} can be run by your organization",
                    "empty_task_set",
                )
            )
        return [([*loc, index], member, {}) for index, member in enumerate(refs)]

    async def _resolve(self, org_id: str, ref: str) -> ResolvedTask:
        if self.tasks is not None:
            return await self.tasks.resolve(org_id, ref)
        task = self.catalog.resolve(ref)
        return ResolvedTask(task=task, ref=task.ref, digest=None, source="catalog")

    def _timeout_of(self, request: EvaluationRequest, task: Task) -> tuple[int, it.TimeoutSource]:
        """The evaluation's task_timeout_sec when given, else the task's own timeout_sec,
        else the service default."""
        if request.task_timeout_sec is not None:
            return request.task_timeout_sec, "evaluation"
        if task.timeout_sec is not None:
            return task.timeout_sec, "task"
        return self.settings.default_task_timeout_sec, "default"

    def _check_openai_endpoint(self, request: EvaluationRequest, runtime: Runtime | None) -> None:
        """The openai agent needs an endpoint; fail at create, not item by item later."""
        if ev.chosen_agent(request.agent_type, request.capability) != "openai":
            return
        if request.model is None:
            raise InvalidInput(
                [_field_error(["body", "model"], "model is required for the openai agent")],
                "the openai agent needs a model",
            )
        if self.settings.openai_base_url:
            return
        if runtime is not None and runtime.base_url:
            return
        message = (
            "the openai agent has no endpoint: set ASSAY_OPENAI_BASE_URL on the server or pass "
            "a runtime_id whose runtime has a base_url (or choose another agent with "
            "agent_type/capability, e.g. oracle or nop)"
        )
        raise InvalidInput([_field_error(["body", "runtime_id"], message, "missing_endpoint")])

    def _check_agent(self, request: EvaluationRequest, errors: list[FieldProblem]) -> None:
        for field in ("agent_type", "capability"):
            name = getattr(request, field)
            if name is not None and resolve_agent(name) is None:
                errors.append(
                    _field_error(
                        ["body", field],
                        f"unknown agent {name!r}; known agents: {', '.join(agent_names())}",
                        "unknown_agent",
                    )
                )
        # The agent chosen (agent_type, else capability, else openai) says whether a model is
        # needed: `agent_type: oracle` alone is a complete request. An unknown agent cannot say,
        # so the model is asked for as well (every problem is reported at once).
        chosen = resolve_agent(ev.chosen_agent(request.agent_type, request.capability))
        if request.model is None and (chosen is None or chosen.needs_model):
            errors.append(
                _field_error(
                    ["body", "model"],
                    "model is required for the openai agent (or choose an agent that needs "
                    "none with agent_type or capability: "
                    + ", ".join(n for n in agent_names() if not AGENTS[n].needs_model)
                    + ")",
                )
            )

    async def _check_references(
        self, ctx: CommandContext, request: EvaluationRequest
    ) -> Runtime | None:
        """References to other resources answer 404 when they are not the caller's to use.
        Returns the runtime named, if any (the openai agent's endpoint may come from it)."""
        project_id = _id_text(request.project_id)
        if project_id is not None and (
            await self.identity.get_project(ctx.workspace_id, project_id) is None
        ):
            raise NotFound(f"project {project_id!r}")
        runtime: Runtime | None = None
        runtime_id = _id_text(request.runtime_id)
        if runtime_id is not None:
            runtime = await self.identity.get_runtime(ctx.workspace_id, runtime_id)
            if runtime is None:
                raise NotFound(f"runtime {runtime_id!r}")
        wanted = list(dict.fromkeys(str(s) for s in request.secret_ids or ()))
        if wanted:
            found = {s.id for s in await self.identity.get_secrets(ctx.principal.user.id, wanted)}
            missing = [s for s in wanted if s not in found]
            if missing:
                raise NotFound(f"secret(s) {', '.join(missing)}")
        return runtime

    # ---- cancel / retry-failed ----

    async def cancel(self, ctx: CommandContext, evaluation_id: str) -> EvaluationView:
        return await self._run(ctx, evaluation_id, ev.CancelEvaluation())

    async def retry_failed(self, ctx: CommandContext, evaluation_id: str) -> EvaluationView:
        view = await self._run(ctx, evaluation_id, ev.RetryFailed())
        self.work.notify()
        return view

    async def _run(
        self, ctx: CommandContext, evaluation_id: str, command: ev.Command
    ) -> EvaluationView:
        for _attempt in range(CONFLICT_RETRIES):
            loaded = await self._load(ctx, evaluation_id)
            new_events = ev.decide(loaded.state, loaded.items, command)
            try:
                await self.repository.commit(
                    new_events,
                    versions=loaded.versions(),
                    metadata=self._metadata(ctx),
                    recorded_at=iso(self.clock()),
                )
            except ConcurrencyConflict:
                continue  # a worker moved an item meanwhile: decide again on fresh state
            return await self._current(evaluation_id)
        raise ConcurrencyConflict(f"evaluation {evaluation_id} kept changing; try again")

    async def _load(self, ctx: CommandContext, evaluation_id: str) -> LoadedEvaluation:
        """The evaluation from its streams, when it is in the caller's workspace and the
        caller may change it."""
        loaded = await self.repository.evaluation(evaluation_id)
        if loaded is None or loaded.state.workspace_id != ctx.workspace_id:
            raise NotFound(f"evaluation {evaluation_id!r}")
        if not ctx.principal.can_manage(ctx.org_id, ctx.workspace_id, loaded.created_by):
            role = ctx.principal.role_in(ctx.org_id)
            if role == "member":
                raise Forbidden("your role lets you change only evaluations you created")
            # A viewer (or a key without a role here) changes nothing, whoever created it.
            raise Forbidden(
                f"your role in this org is {role or 'none'}, which only reads evaluations; "
                "cancel and retry-failed need member (own evaluations), admin or owner"
            )
        return loaded

    async def _current(self, evaluation_id: str) -> EvaluationView:
        view = await self.queries.evaluation(evaluation_id)
        assert view is not None  # its creation was folded into the read model with it
        return view

    def _metadata(self, ctx: CommandContext) -> codec.EventMetadata:
        return codec.EventMetadata(
            actor=actor_of(ctx.principal),
            request_id=ctx.request_id,
            correlation_id=ctx.request_id,
        )


def _missing_variables(
    task: Task, variables: dict[str, Any], task_config: dict[str, Any]
) -> list[str]:
    """Template variables the task uses that neither the row, task_config nor its services
    give. A task with a provision script is not checked: its output may give any name."""
    if task.provision is not None:
        return []
    given = set(variables) | set(task_config) | task.service_variable_names()
    return sorted(task.template_names() - given)


def _entry(loc: Sequence[str | int]) -> str:
    """How an error names the request entry at `loc`: `dataset row 2`, `task_names[0]`."""
    if "dataset" in loc:
        return f"dataset row {loc[-1]}"
    return f"task_names[{loc[-1]}]"


def _field_error(loc: Sequence[str | int], msg: str, type: str = "value_error") -> FieldProblem:
    return FieldProblem(loc=list(loc), msg=msg, type=type)


def _id_text(value: uuid.UUID | None) -> str | None:
    """The canonical text of an id the schema decoded (how ids are stored)."""
    return None if value is None else str(value)


def _dataset_rows(
    dataset: dict[str, Any] | list[Any], errors: list[FieldProblem]
) -> list[tuple[list[str | int], str, dict[str, Any]]]:
    """Rows of `{task_name, <var>: str|int|null ...}`, as an object `{rows: [...]}` or a list."""
    base: list[str | int] = ["body", "dataset"]
    if isinstance(dataset, dict):
        rows_value = dataset.get("rows")
        base = [*base, "rows"]
        if not isinstance(rows_value, list):
            errors.append(_field_error(base, 'dataset must be a list of rows or {"rows": [...]}'))
            return []
    else:
        rows_value = dataset
    rows: list[tuple[list[str | int], str, dict[str, Any]]] = []
    for index, row in enumerate(rows_value):
        loc = [*base, index]
        if not isinstance(row, dict):
            errors.append(_field_error(loc, "a dataset row must be an object"))
            continue
        task_name = row.get("task_name")
        if not isinstance(task_name, str) or not task_name:
            errors.append(_field_error([*loc, "task_name"], "each dataset row needs a task_name"))
            continue
        variables = {k: v for k, v in row.items() if k != "task_name"}
        bad = [
            k
            for k, v in variables.items()
            if not (v is None or isinstance(v, str | int | float | bool))
        ]
        for key in bad:
            errors.append(
                _field_error([*loc, key], "row variables must be strings, numbers or null")
            )
        for key in variables:
            env_name = environment_name(key)
            if reserved_environment(env_name):
                errors.append(
                    _field_error(
                        [*loc, key],
                        f"row variable {key!r} would replace the sandbox's {env_name} "
                        "environment variable; rename it",
                        "reserved_variable",
                    )
                )
        rows.append((loc, task_name, variables))
    return rows
