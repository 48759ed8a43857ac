"""What the live-stream tests share: a server subprocess on either backend, a parser of
server-sent events, and a simulated worker that appends item events from this process (to
the server, another process) while a client reads."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from app.composition import open_store
from domain import item as it
from infrastructure import codec
from infrastructure.clock import utc_now
from infrastructure.db.engine import create_engine
from tests.app.dn_client import LiveServer


@contextlib.contextmanager
def live_server(database_url: str, workdir: Path, **env: str) -> Iterator[LiveServer]:
    """`assay serve` (no worker) on `database_url`, a migrated database of either backend."""
    workdir.mkdir(parents=True, exist_ok=True)
    server = LiveServer(workdir, env={"ASSAY_SECRET_KEY_FILE": str(workdir / "key"), **env})
    server.database_url = database_url
    server.prepare()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@dataclass
class Message:
    id: str | None = None
    event: str | None = None
    data: str = ""
    comment: str | None = None

    def json(self) -> Any:
        return json.loads(self.data)


def messages(response: httpx.Response) -> Iterator[Message]:
    """Server-sent events as they arrive; a comment line is a message of its own."""
    current = Message()
    for line in response.iter_lines():
        if line == "":
            if current.id is not None or current.event is not None or current.data:
                yield current
            current = Message()
        elif line.startswith(":"):
            yield Message(comment=line[1:].strip())
        else:
            name, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if name == "id":
                current.id = value
            elif name == "event":
                current.event = value
            elif name == "data":
                current.data = f"{current.data}\n{value}" if current.data else value


@dataclass
class SimulatedWorker:
    """Runs every item of an evaluation through its lifecycle, one item at a time, from a
    thread of this process through an event store of its own (as a worker process does)."""

    database_url: str
    evaluation_id: str
    item_ids: list[str]
    renewals: int = 3
    pause: float = 0.005
    error: BaseException | None = None
    _thread: threading.Thread | None = field(default=None, repr=False)

    def start(self) -> SimulatedWorker:
        self._thread = threading.Thread(target=self._main, daemon=True)
        self._thread.start()
        return self

    def join(self, timeout: float = 120) -> None:
        assert self._thread is not None
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "the simulated worker did not finish"
        if self.error is not None:
            raise self.error

    def _main(self) -> None:
        try:
            asyncio.run(self._run())
        except BaseException as exc:  # reported by join()
            self.error = exc

    async def _run(self) -> None:
        engine = create_engine(self.database_url)
        store = open_store(engine)[0]
        try:
            for index, item_id in enumerate(self.item_ids):
                ids = {"item_id": item_id, "evaluation_id": self.evaluation_id}
                lease = "2099-01-01T00:00:00.000000+00:00"
                steps: list[it.AnyItemEvent] = [
                    it.ItemClaimed(**ids, worker_id="w-sim", lease_expires_at=lease),
                    it.ItemProvisioning(**ids, sandbox_id=f"sb-{index}"),
                    it.ItemAgentStarted(**ids, session_id=f"sess-{index}"),
                    *[
                        it.ItemLeaseRenewed(**ids, worker_id="w-sim", lease_expires_at=lease)
                        for _ in range(self.renewals)
                    ],
                    it.ItemAgentFinished(**ids, agent_result={"agent": "sim"}),
                    it.ItemVerifying(**ids),
                    it.ItemVerdict(**ids, passed=index % 2 == 0, result={"i": index}),
                ]
                for version, event in enumerate(steps, start=1):
                    await store.append(
                        codec.to_appends(
                            [event], {("item", item_id): version}, codec.EventMetadata()
                        ),
                        recorded_at=utc_now(),
                    )
                    await asyncio.sleep(self.pause)
        finally:
            await store.close()
            await engine.dispose()
