"""The worker's runner as a unit: an item's phases, endings and sandbox fate, with an in-memory
log, a fake clock, a fake sandbox and a scripted agent (tests/app/worker_fakes.py). No database,
no sandbox host, no model: what is checked here is the runner's logic through the same item
commands (app/services/items.py) and repository it uses in production."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta
from pathlib import Path

import msgspec

from app.services.items import ItemService
from app.worker.runner import ItemJob, ItemRunner
from domain import evaluation as ev
from domain import item as it
from domain.timestamps import iso
from infrastructure import codec
from infrastructure.agents.protocol import AgentInfraError
from infrastructure.readmodels import fold
from infrastructure.repository import Repository
from infrastructure.tasks import load_catalog
from tests.app.execution_fixtures import write_bundle
from tests.app.worker_fakes import (
    FakeClock,
    FakeProvider,
    InMemoryEventLog,
    InMemoryLeases,
    MemoryTranscripts,
    ScriptedAgent,
)

FLAG = "FLAG{unit}"
BACKOFF = 5.0


class Rig(msgspec.Struct, kw_only=True):
    log: InMemoryEventLog
    clock: FakeClock
    items: ItemService
    provider: FakeProvider
    runner: ItemRunner
    evaluation_id: str
    item_id: str

    async def job(self, agent: ScriptedAgent) -> ItemJob:
        (claimed,) = await self.items.claim([self.item_id], "w-unit")
        view = fold(self.log.events).evaluations[self.evaluation_id]
        return ItemJob(
            claimed=claimed,
            worker_id="w-unit",
            evaluation=view,
            agent_name=agent.name,
            agent=agent,
            provider=self.provider,
            context_extras={},
            secrets_env={},
        )

    def item_types(self) -> list[str]:
        return self.log.types(self.item_id)

    async def item(self) -> it.ItemState:
        state = await self.items.repository.item(self.item_id)
        assert state is not None
        return state


async def rig(tmp_path: Path, *, cleanup: ev.CleanupPolicy = "always", retries: int = 1) -> Rig:
    write_bundle(tmp_path / "bundles", "unit-task", flag=FLAG)
    catalog = load_catalog([tmp_path / "bundles"])
    task = catalog.resolve("unit-task")
    log, clock = InMemoryEventLog(), FakeClock()
    repository = Repository(log)
    items = ItemService(
        repository=repository,
        leases=InMemoryLeases(),
        clock=clock,
        lease_seconds=30,
        retry_backoff_seconds=BACKOFF,
    )
    evaluation_id, item_id = str(uuid.uuid4()), str(uuid.uuid4())
    created = ev.decide(
        None,
        {},
        ev.CreateEvaluation(
            evaluation_id=evaluation_id,
            org_id="org",
            workspace_id="ws",
            config=ev.EvaluationConfig(
                name="unit", agent_type="scripted", cleanup_policy=cleanup, max_retries=retries
            ),
            items=(ev.ItemSpec(item_id=item_id, task_name=task.name, task_ref=task.ref),),
        ),
    )
    await repository.commit(
        created, versions={}, metadata=codec.EventMetadata(), recorded_at="2026-11-30T12:00:00Z"
    )
    provider = FakeProvider()
    runner = ItemRunner(
        catalog=catalog, items=items, transcripts=MemoryTranscripts(), default_max_steps=5
    )
    return Rig(
        log=log,
        clock=clock,
        items=items,
        provider=provider,
        runner=runner,
        evaluation_id=evaluation_id,
        item_id=item_id,
    )


async def test_a_right_flag_runs_every_phase_and_passes_and_the_sandbox_is_destroyed(
    tmp_path: Path,
) -> None:
    r = await rig(tmp_path)
    await r.runner.run(await r.job(ScriptedAgent(submission=FLAG)))

    assert r.item_types() == [
        "item.queued",
        "item.claimed",
        "item.provisioning",
        "item.agent_started",
        "item.agent_finished",
        "item.verifying",
        "item.verdict",
    ]
    assert (await r.item()).status == "passed"
    (sandbox,) = r.provider.sandboxes
    assert sandbox.fate == "destroyed"
    assert sandbox.killed >= 1, "the agent's processes die before anything is verified"
    assert sandbox.trees, "the agent got the task's files"


async def test_a_wrong_flag_fails_and_on_success_keeps_the_sandbox_saying_where(
    tmp_path: Path,
) -> None:
    r = await rig(tmp_path, cleanup="on_success")
    await r.runner.run(await r.job(ScriptedAgent(submission="FLAG{nope}")))

    assert r.item_types()[-2:] == ["item.verdict", "item.sandbox_kept"]
    assert (await r.item()).status == "failed"
    (sandbox,) = r.provider.sandboxes
    assert sandbox.fate == "kept"
    kept = codec.decode(r.log.events[-1])
    assert isinstance(kept, it.ItemSandboxKept) and kept.location == sandbox.location


async def test_an_infra_failure_requeues_after_the_backoff_of_the_fake_clock(
    tmp_path: Path,
) -> None:
    r = await rig(tmp_path, cleanup="on_success", retries=1)
    await r.runner.run(await r.job(ScriptedAgent(failure=AgentInfraError("endpoint 503"))))

    state = await r.item()
    assert state.status == "queued" and state.retry_count == 1
    assert state.retry_not_before == iso(r.clock.now + timedelta(seconds=BACKOFF))
    # Going back for a retry in a fresh sandbox: this one is destroyed even on_success.
    assert r.provider.sandboxes[0].fate == "destroyed"


async def test_an_item_cancelled_while_its_agent_runs_is_let_go_and_its_sandbox_killed(
    tmp_path: Path,
) -> None:
    r = await rig(tmp_path)
    release = asyncio.get_running_loop().create_future()
    run = asyncio.create_task(r.runner.run(await r.job(ScriptedAgent(FLAG, hold=release))))
    while "item.agent_started" not in r.item_types():
        await asyncio.sleep(0.01)

    # Someone else (the API) cancels the evaluation, through the same repository.
    loaded = await r.items.repository.evaluation(r.evaluation_id)
    assert loaded is not None
    await r.items.repository.commit(
        ev.decide(loaded.state, loaded.items, ev.CancelEvaluation()),
        versions=loaded.versions(),
        metadata=codec.EventMetadata(),
        recorded_at="2026-11-30T12:00:01Z",
    )
    await asyncio.wait_for(run, 10)

    assert r.item_types()[-1] == "item.cancelled", "the runner recorded nothing after"
    (sandbox,) = r.provider.sandboxes
    assert sandbox.killed >= 1 and sandbox.fate == "destroyed"
    assert release.cancelled(), "the agent was stopped, not left to finish"


async def test_with_no_retries_left_an_infra_failure_ends_the_item(tmp_path: Path) -> None:
    r = await rig(tmp_path, retries=0)
    await r.runner.run(await r.job(ScriptedAgent(failure=AgentInfraError("endpoint 503"))))
    state = await r.item()
    assert state.status == "infra_error" and state.retry_not_before is None
