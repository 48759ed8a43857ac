"""In-memory stand-ins for what a worker's runner touches: the log, the lease book, the clock,
a sandbox provider, an agent and the transcript store. With them the runner's phases run in a
unit test without a database, a sandbox host or a model (tests/app/test_runner_unit.py)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import msgspec

from infrastructure.agents.protocol import AgentContext, AgentOutcome, TranscriptMessage
from infrastructure.eventstore import (
    ConcurrencyConflict,
    RecordedEvent,
    SideWrite,
    StreamAppend,
)
from infrastructure.leases import Lease
from infrastructure.sandbox.protocol import ExecResult, Sandbox, SandboxSpec, ServiceEndpoint


class FakeClock:
    """A clock that moves only when told to."""

    def __init__(self, start: datetime = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


class InMemoryEventLog:
    """The event store's append and stream reads, with its optimistic concurrency, in a list."""

    def __init__(self) -> None:
        self.events: list[RecordedEvent] = []

    async def append(
        self,
        appends: Sequence[StreamAppend],
        *,
        recorded_at: str,
        side_writes: Sequence[SideWrite] = (),
    ) -> list[RecordedEvent]:
        if side_writes:
            raise TypeError("an in-memory log has no tables for side writes")
        for append in appends:
            current = self._version(append.stream_type, append.stream_id)
            if current != append.expected_version:
                raise ConcurrencyConflict(
                    f"{append.stream_type}/{append.stream_id} is at {current}, "
                    f"not {append.expected_version}"
                )
        recorded: list[RecordedEvent] = []
        for append in appends:
            for offset, event in enumerate(append.events, start=1):
                recorded.append(
                    RecordedEvent(
                        position=len(self.events) + len(recorded) + 1,
                        event_id=event.event_id,
                        stream_type=append.stream_type,
                        stream_id=append.stream_id,
                        stream_version=append.expected_version + offset,
                        event_type=event.event_type,
                        schema_version=event.schema_version,
                        data=event.data,
                        metadata=event.metadata,
                        recorded_at=recorded_at,
                    )
                )
        self.events += recorded
        return recorded

    async def read_stream(
        self, stream_type: str, stream_id: str, *, after_version: int = 0
    ) -> list[RecordedEvent]:
        return [
            e
            for e in self.events
            if (e.stream_type, e.stream_id) == (stream_type, stream_id)
            and e.stream_version > after_version
        ]

    async def read_streams(
        self, stream_type: str, stream_ids: Sequence[str]
    ) -> dict[str, list[RecordedEvent]]:
        return {sid: await self.read_stream(stream_type, sid) for sid in stream_ids}

    async def stream_versions(self, stream_type: str, stream_ids: Sequence[str]) -> dict[str, int]:
        versions = {sid: self._version(stream_type, sid) for sid in stream_ids}
        return {sid: version for sid, version in versions.items() if version > 0}

    def _version(self, stream_type: str, stream_id: str) -> int:
        return sum(
            1 for e in self.events if (e.stream_type, e.stream_id) == (stream_type, stream_id)
        )

    def types(self, stream_id: str) -> list[str]:
        return [e.event_type for e in self.events if e.stream_id == stream_id]


class InMemoryLeases:
    def __init__(self) -> None:
        self.leases: dict[str, Lease] = {}

    async def renew(self, worker_id: str, item_ids: Sequence[str], until: str) -> None:
        for item_id in item_ids:
            lease = self.leases.get(item_id)
            if lease is not None and lease.worker_id == worker_id:
                self.leases[item_id] = msgspec.structs.replace(lease, expires_at=until)

    async def expired(self, now: str, limit: int = 100) -> list[Lease]:
        return sorted(
            (lease for lease in self.leases.values() if lease.expires_at < now),
            key=lambda lease: lease.expires_at,
        )[:limit]

    async def held(self, item_id: str) -> Lease | None:
        return self.leases.get(item_id)


class FakeSandbox:
    """Records what the runner asked of it; runs nothing."""

    def __init__(self, spec: SandboxSpec) -> None:
        self.spec = spec
        self.commands: list[str] = []
        self.trees: list[Path] = []
        self.killed = 0
        self.fate: str | None = None  # destroyed | kept

    @property
    def id(self) -> str:
        return f"fake-{self.spec.item_id}"

    @property
    def location(self) -> str:
        return f"/fake/{self.spec.item_id}"

    @property
    def isolation(self) -> Mapping[str, object]:
        return {"level": "strict", "provider": "fake"}

    def endpoints(self) -> Mapping[str, ServiceEndpoint]:
        return {}

    async def run(
        self,
        command: str,
        *,
        timeout_sec: float,
        env: Mapping[str, str] | None = None,
        stdin: str | None = None,
    ) -> ExecResult:
        self.commands.append(command)
        return ExecResult(exit_code=0, stdout="", stderr="", timed_out=False, duration_ms=1.0)

    async def put_file(self, relative_path: str, content: bytes, mode: int = 0o644) -> None:
        pass

    async def put_tree(self, source: Path, exclude: frozenset[str] = frozenset()) -> None:
        self.trees.append(source)

    async def get_file(self, path: str) -> bytes:
        raise FileNotFoundError(path)

    async def kill_all(self) -> None:
        self.killed += 1

    async def open_checker(self) -> Sandbox:
        return self

    async def run_in_service(self, service: str, command: str, *, timeout_sec: float) -> ExecResult:
        return await self.run(command, timeout_sec=timeout_sec)

    async def keep(self) -> None:
        self.fate = "kept"

    async def destroy(self) -> None:
        self.fate = "destroyed"


class FakeProvider:
    name = "fake"

    def __init__(self) -> None:
        self.sandboxes: list[FakeSandbox] = []

    def isolation_report(self) -> Mapping[str, bool]:
        return {"fake": True}

    def unavailable_reason(self) -> str | None:
        return None

    async def provision(self, spec: SandboxSpec) -> Sandbox:
        sandbox = FakeSandbox(spec)
        self.sandboxes.append(sandbox)
        return sandbox

    async def reap_orphans(self, live_worker_ids: frozenset[str]) -> list[str]:
        return []


class ScriptedAgent:
    """Submits `submission`, or raises `failure`; `hold` (an awaitable factory) keeps it
    running until the test lets it go."""

    name = "scripted"

    def __init__(
        self,
        submission: str | None = None,
        failure: Exception | None = None,
        hold: object | None = None,
    ) -> None:
        self.submission = submission
        self.failure = failure
        self.hold = hold

    async def run(self, sandbox: Sandbox, context: AgentContext) -> AgentOutcome:
        if self.hold is not None:
            await self.hold  # type: ignore[misc]
        if self.failure is not None:
            raise self.failure
        return AgentOutcome(submission=self.submission, transcript=[], stop_reason="submitted")


class MemoryTranscripts:
    def __init__(self) -> None:
        self.messages: dict[str, list[TranscriptMessage]] = {}

    def transcript_write(
        self,
        session_id: str,
        item_id: str,
        messages: Sequence[TranscriptMessage],
        *,
        after_seq: int = 0,
    ) -> SideWrite | None:
        # Stored at once: an in-memory log takes no side writes.
        self.messages.setdefault(session_id, []).extend(m for m in messages if m.seq > after_seq)
        return None

    async def store_transcript(
        self, session_id: str, item_id: str, messages: Sequence[TranscriptMessage]
    ) -> None:
        self.messages.setdefault(session_id, []).extend(messages)
