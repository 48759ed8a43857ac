"""The engine as operators run it: real `assay worker` processes against a real database.

1. Crash safety (SQLite and PostgreSQL): a worker is SIGKILLed while its item's agent runs. The
   item's lease lapses, another worker process takes it back (item.infra_failed "lost its
   lease", then a second item.claimed by the new worker), the item ends exactly once, and the
   new worker finds the dead worker's sandbox and destroys it.
2. Several processes (PostgreSQL only: on SQLite one process should do all writing): three
   workers share one evaluation of 200 items; from the event log, no item is claimed twice
   unless it went back to the queue in between, the evaluation's concurrency holds at every
   position of the history, and every worker claimed some of the items.
3. In process, deterministic: a lease renewal that races an item's end (the renewal the
   multi-worker run hits many times a second).

Evaluations are created and read through the HTTP API (Litestar's TestClient, no in-process
worker). Every worker process is killed in teardown, whatever happened.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from litestar.testing import TestClient

from app.api.schemas import CreateEvaluationRequest
from app.composition import build_container
from app.main import create_app
from app.services.evaluations import CommandContext
from domain import item as it
from infrastructure.identity.bootstrap import bootstrap
from infrastructure.settings import Settings
from tests.app.conftest import Api, make_settings, run_identity
from tests.app.http_helpers import items_of

ASSAY = Path(sys.executable).with_name("assay")
LEASE_SECONDS = 2.0
POLL_SECONDS = 0.1
SLOW_SECONDS = 10
SLOW_FLAG = "FLAG{still-alive}"
TRIVIAL_FLAG = "FLAG{trivial}"
# Item events that end an item for good (an infra failure that will retry does not).
TERMINAL_TYPES = frozenset({"item.verdict", "item.timed_out", "item.cancelled", "item.errored"})


def is_terminal(event: dict[str, Any]) -> bool:
    return event["type"] in TERMINAL_TYPES or (
        event["type"] == "item.infra_failed" and event["data"]["will_retry"] is False
    )


def is_requeue(event: dict[str, Any]) -> bool:
    """The item went back to the queue: retry-failed, or an infra failure that will retry."""
    return event["type"] == "item.requeued" or (
        event["type"] == "item.infra_failed" and event["data"]["will_retry"] is True
    )


# ---- fixtures ----------------------------------------------------------------------------


class Workers:
    """Starts `assay worker` processes; kills every one of them at teardown."""

    def __init__(self, root: Path, settings: Settings) -> None:
        self.root = root
        self.settings = settings
        self.procs: list[subprocess.Popen[bytes]] = []
        self.logs: dict[int, Path] = {}

    def env(self) -> dict[str, str]:
        assert self.settings.secret_key is not None
        return {
            **os.environ,
            "ASSAY_DATABASE_URL": self.settings.database_url,
            "ASSAY_SECRET_KEY": self.settings.secret_key,
            "ASSAY_LEASE_SECONDS": str(LEASE_SECONDS),
            "ASSAY_POLL_SECONDS": str(POLL_SECONDS),
            "ASSAY_RETRY_BACKOFF_SECONDS": "0.2",
            "ASSAY_SANDBOX_ROOT": self.settings.sandbox_root,
            "ASSAY_SANDBOX_ISOLATION": self.settings.sandbox_isolation,
            "ASSAY_TASK_PATHS": os.pathsep.join(self.settings.task_paths),
            "ASSAY_LOG_JSON": "1",
            "ASSAY_LOG_LEVEL": "INFO",
        }

    def start(self, slots: int) -> subprocess.Popen[bytes]:
        log = self.root / f"worker-{len(self.procs)}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [str(ASSAY), "worker", "--slots", str(slots)],
                env=self.env(),
                cwd=self.root,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        self.procs.append(proc)
        self.logs[proc.pid] = log
        return proc

    def log_of(self, proc: subprocess.Popen[bytes]) -> str:
        return self.logs[proc.pid].read_text(errors="replace")

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        for proc in self.procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _write_bundle(folder: Path, name: str, flag: str, solution: str) -> None:
    folder.mkdir(parents=True)
    (folder / "task.yaml").write_text(
        f"name: {name}\n"
        'version: "1.0.0"\n'
        "instruction: Print the flag.\n"
        f"verification:\n  type: flag\n  flag: {json.dumps(flag)}\n"
        "timeout_sec: 120\n"
    )
    (folder / "solution.sh").write_text(solution)


@pytest.fixture
def beats(tmp_path: Path) -> Path:
    """Where the slow task's solution writes one heartbeat file per sandbox."""
    folder = tmp_path / "beats"
    folder.mkdir()
    return folder


@pytest.fixture
def task_root(tmp_path: Path, beats: Path) -> Path:
    root = tmp_path / "tasks"
    # Runs ~SLOW_SECONDS, appending a timestamp every 0.1 s to a file named after its sandbox
    # directory (outside it, so the beat survives the directory and shows when writing stops).
    _write_bundle(
        root / "slow-beat",
        "slow-beat",
        SLOW_FLAG,
        f'beat="{beats}/$(basename "$PWD")"\n'
        f'for i in $(seq 1 {SLOW_SECONDS * 10}); do date +%s.%N >> "$beat"; sleep 0.1; done\n'
        f"echo '{SLOW_FLAG}'\n",
    )
    _write_bundle(root / "trivial", "trivial", TRIVIAL_FLAG, f"echo '{TRIVIAL_FLAG}'\n")
    return root


@pytest.fixture
def engine_settings(database_url: str, tmp_path: Path, task_root: Path) -> Settings:
    return make_settings(
        database_url,
        workers=0,
        task_paths=(str(task_root),),
        sandbox_root=str(tmp_path / "sandboxes"),
        # The slow task writes heartbeats to the host (see `beats`): only the weak sandbox
        # lets it; the strict view's kills are pinned in the sandbox suites.
        sandbox_isolation="weak",
        lease_seconds=LEASE_SECONDS,
        poll_seconds=POLL_SECONDS,
    )


@pytest.fixture
def api(engine_settings: Settings) -> Iterator[Api]:
    result = run_identity(
        engine_settings,
        lambda store: bootstrap(store, org_key="demo", workspace_key="main", email="e@x.y"),
    )
    with TestClient(create_app(engine_settings)) as client:
        yield Api(
            client=client,
            settings=engine_settings,
            org="demo",
            workspace="main",
            key=result.raw_key,
            user_id=result.user.id,
            headers={"X-API-Key": result.raw_key},
        )


@pytest.fixture
def workers(tmp_path: Path, engine_settings: Settings) -> Iterator[Workers]:
    pool = Workers(tmp_path, engine_settings)
    try:
        yield pool
    finally:
        pool.stop_all()


# ---- helpers -----------------------------------------------------------------------------


def wait_for(what: str, check: Callable[[], Any], timeout: float, every: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(every)


def history(api: Api, evaluation_id: str) -> list[dict[str, Any]]:
    """Every event of the evaluation, in position order, through the paged history route."""
    events: list[dict[str, Any]] = []
    after = 0
    while True:
        response = api.get(f"/evaluation/{evaluation_id}/events", params={"after": after})
        assert response.status_code == 200, response.text
        page = response.json()
        events.extend(page["events"])
        if page["next_after"] is None:
            return events
        after = page["next_after"]


def process_is(pid: int, starttime: int) -> bool:
    """Whether `pid` still runs and is the very process recorded (not a reuse of the pid)."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    fields = raw[raw.rfind(")") + 2 :].split()
    return int(fields[19]) == starttime and fields[0] != "Z"


def worker_of(proc: subprocess.Popen[bytes]) -> Callable[[str], bool]:
    """Whether a worker id (hostname:pid:random) belongs to this process."""
    return lambda worker_id: worker_id.split(":")[-2] == str(proc.pid)


def create(api: Api, **body: Any) -> str:
    response = api.create(model="test-model", agent_type="oracle", **body)
    assert response.status_code == 201, response.text
    evaluation_id: str = response.json()["id"]
    return evaluation_id


# ---- 1. crash safety ---------------------------------------------------------------------


def test_a_killed_worker_loses_its_item_to_another_worker_which_reaps_its_sandbox(
    api: Api, workers: Workers, beats: Path, engine_settings: Settings
) -> None:
    sandbox_root = Path(engine_settings.sandbox_root)
    first = workers.start(slots=1)
    evaluation_id = create(api, task_names=["slow-beat"], concurrency=1)

    def running() -> dict[str, Any] | None:
        (item,) = items_of(api, evaluation_id)
        return item if item["status"] == "agent_running" else None

    item = wait_for("the item's agent to run", running, timeout=30)
    item_id = item["id"]
    assert worker_of(first)(item["worker_id"])
    # The dead worker's sandbox: its metadata file, its directory, its heartbeat.
    (meta_path,) = sandbox_root.glob("*.json")
    sandbox_dir = Path(json.loads(meta_path.read_bytes())["path"])
    assert sandbox_dir.is_dir()
    beat = beats / sandbox_dir.name
    wait_for("the agent's heartbeat", lambda: beat.exists() and beat.stat().st_size > 0, 10)
    meta = json.loads(meta_path.read_bytes())  # now naming the namespace init of the run
    assert meta["worker_id"] == item["worker_id"] and meta["item_id"] == item_id
    init = (meta["init_pid"], meta["init_starttime"])
    assert init[0] is not None and process_is(*init)

    first.send_signal(signal.SIGKILL)
    first.wait()  # reaped: a zombie's pid would still look alive to the next worker
    second = workers.start(slots=1)

    # The new worker reaps the orphan at start (and at every heartbeat).
    wait_for("the orphaned sandbox to be removed", lambda: not sandbox_dir.exists(), 20)
    assert not meta_path.exists()
    size = beat.stat().st_size
    time.sleep(0.6)
    assert beat.stat().st_size == size, "the dead worker's agent still writes its heartbeat"
    assert not process_is(*init), "the dead worker's sandbox namespace still runs"
    reaped = [
        line
        for line in workers.log_of(second).splitlines()
        if '"orphan_sandboxes_destroyed"' in line and meta["id"] in line
    ]
    assert reaped, workers.log_of(second)

    def ended() -> dict[str, Any] | None:
        (current,) = items_of(api, evaluation_id)
        return current if current["status"] in ("passed", "failed", "errored") else None

    final = wait_for("the item to end", ended, timeout=SLOW_SECONDS + 30)
    assert final["status"] == "passed", final
    assert final["retry_count"] == 1

    events = [e for e in history(api, evaluation_id) if e["stream_id"] == item_id]
    types = [e["type"] for e in events]
    claims = [e for e in events if e["type"] == "item.claimed"]
    assert len(claims) == 2, types
    assert worker_of(first)(claims[0]["data"]["worker_id"])
    assert worker_of(second)(claims[1]["data"]["worker_id"])
    lost = [e for e in events if e["type"] == "item.infra_failed"]
    assert len(lost) == 1, types
    assert f"worker {claims[0]['data']['worker_id']} lost its lease" in lost[0]["data"]["error"]
    assert lost[0]["data"]["will_retry"] is True
    # Taken back only after the dead worker's last lease lapsed, then claimed again.
    assert claims[0]["position"] < lost[0]["position"] < claims[1]["position"]
    last_lease = max(
        e["data"]["lease_expires_at"]
        for e in events
        if e["type"] in ("item.claimed", "item.lease_renewed")
        and e["position"] < lost[0]["position"]
    )
    assert lost[0]["recorded_at"] > last_lease
    # Ends exactly once: one terminal event, and it is the one verdict.
    terminal = [e for e in events if is_terminal(e)]
    assert [e["type"] for e in terminal] == ["item.verdict"], types
    assert terminal[0]["data"]["passed"] is True
    assert events[-1]["type"] == "item.verdict" or all(
        e["type"] == "item.sandbox_kept" for e in events[events.index(terminal[0]) + 1 :]
    )
    # The second run left nothing behind either.
    wait_for("the second sandbox to be destroyed", lambda: not list(sandbox_root.glob("*")), 10)


# ---- 2. several worker processes share one evaluation (PostgreSQL) ------------------------


def concurrency_peak(events: list[dict[str, Any]]) -> int:
    """Replay in position order: items in flight after each event, the highest count seen."""
    in_flight: set[str] = set()
    peak = 0
    for event in events:
        kind, item_id = event["type"], event["stream_id"]
        if kind == "item.claimed":
            assert item_id not in in_flight, f"{item_id} claimed while in flight"
            in_flight.add(item_id)
        elif is_terminal(event) or is_requeue(event):
            in_flight.discard(item_id)
        peak = max(peak, len(in_flight))
    return peak


# Several worker processes are a PostgreSQL deployment: on SQLite one process does all writing.
@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_three_worker_processes_share_one_evaluation_within_its_concurrency(
    database_url: str, request: pytest.FixtureRequest
) -> None:
    api: Api = request.getfixturevalue("api")
    workers: Workers = request.getfixturevalue("workers")
    count, concurrency = 200, 8
    procs = [workers.start(slots=4) for _ in range(3)]
    # Every worker registered before the work appears, so all three race for it.
    wait_for(
        "three workers to start",
        lambda: all('"worker_started"' in workers.log_of(p) for p in procs),
        timeout=30,
    )
    evaluation_id = create(api, task_names=["trivial"] * count, concurrency=concurrency)

    def all_ended() -> bool:
        response = api.get(f"/evaluation/{evaluation_id}")
        assert response.status_code == 200, response.text
        return response.json()["status"] in ("completed", "partial")

    wait_for(f"{count} items to end", all_ended, timeout=90, every=0.5)
    items = items_of(api, evaluation_id)
    assert Counter(i["status"] for i in items) == {"passed": count}

    events = [e for e in history(api, evaluation_id) if e["stream_type"] == "item"]
    by_item: dict[str, list[dict[str, Any]]] = {}
    for event in events:
        by_item.setdefault(event["stream_id"], []).append(event)
    assert len(by_item) == count
    for item_id, item_events in by_item.items():
        kinds = Counter(e["type"] for e in item_events)
        requeues = sum(1 for e in item_events if is_requeue(e))
        assert kinds["item.claimed"] == 1 + requeues, (item_id, kinds)
        assert sum(1 for e in item_events if is_terminal(e)) == 1, (item_id, kinds)

    peak = concurrency_peak(events)
    assert peak <= concurrency
    assert peak == concurrency  # the bound was reached, so the check above means something
    claimers = Counter(
        next(p.pid for p in procs if worker_of(p)(e["data"]["worker_id"]))
        for e in events
        if e["type"] == "item.claimed"
    )
    assert set(claimers) == {p.pid for p in procs}, claimers
    for proc in procs:
        assert proc.poll() is None, workers.log_of(proc)


# ---- 3. a lease renewal racing an item's end -------------------------------------------------


async def test_a_lease_renewal_racing_an_items_end_still_renews_the_other_items(
    engine_settings: Settings,
) -> None:
    container = build_container(engine_settings)
    placeholder = asyncio.create_task(asyncio.sleep(3600))
    try:
        boot = await bootstrap(
            container.identity, org_key="demo", workspace_key="main", email="e@x.y"
        )
        principal = await container.identity.authenticate(boot.raw_key)
        assert principal is not None
        ctx = CommandContext(
            principal=principal, org_id=boot.org.id, workspace_id=boot.workspace.id
        )
        view = await container.evaluations.create(
            ctx,
            CreateEvaluationRequest(
                name="race", model="m", agent_type="nop", task_names=["trivial"] * 2, concurrency=2
            ),
        )
        pool = container.worker_pool(2)  # not started: its maintenance is driven by hand
        items = await container.items.claim(
            [item.id for item in await container.queries.items(view.id)], pool.worker_id
        )
        for item in items:
            await item.execute(
                it.StartAgent(session_id=str(uuid.uuid4())),
                it.FinishAgent(),
                it.StartVerifying(),
            )
            pool._running[item.item_id] = (placeholder, item)
        ending, other = items
        before = await container.items.leases.held(other.item_id)
        assert before is not None

        # The runner appends the first item's verdict; the renewal comes while it is in flight.
        verdict = asyncio.create_task(ending.execute(it.RecordVerdict(passed=False)))
        await asyncio.sleep(0)
        assert ending.state.status == "verifying" and ending.busy
        await asyncio.sleep(0.01)  # the clock moves, so a renewal shows
        (renewal,) = await asyncio.gather(pool._renew_leases(), return_exceptions=True)
        await verdict
        assert ending.state.status == "failed", "the verdict was appended"

        assert not isinstance(renewal, BaseException), repr(renewal)
        after = await container.items.leases.held(other.item_id)
        assert after is not None and after.expires_at > before.expires_at, "not renewed"
        assert await container.items.leases.held(ending.item_id) is None, "an ended item's lease"
        history = await container.store.read_all(limit=1000)
        assert not [e for e in history if e.event_type == "item.lease_renewed"], (
            "a renewal went into the log"
        )
    finally:
        placeholder.cancel()
        await container.close()
