"""Sandbox commands: removing the kept sandbox of an item that ended.

An item's sandbox is the one its latest run used; `cleanup_policy: on_success` keeps it when
the item ends without a pass. Removing a kept one destroys what the provider still holds and
appends `item.sandbox_discarded`, so the item stops saying it is kept. A sandbox whose item is
still in flight is refused (409): it is torn down when its item ends, and stopping it early
means cancelling its evaluation, which says so in the history.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from app.services.errors import ActionFailed, Forbidden, StateConflict
from app.services.evaluations import CommandContext, actor_of
from domain import item as it
from domain.projections import EvaluationView, ItemView
from domain.timestamps import iso
from infrastructure import codec
from infrastructure.clock import Clock, system_clock
from infrastructure.eventstore import ConcurrencyConflict
from infrastructure.queries import ReadModelQueries
from infrastructure.repository import Repository
from infrastructure.sandbox.local import LocalSandboxProvider
from infrastructure.sandbox.protocol import IsolationLevel, SandboxError
from infrastructure.settings import Settings

SandboxState = Literal["running", "kept", "killed"]


def sandbox_state(item: ItemView) -> SandboxState:
    """`running` while its item is in flight, `kept` when kept after the item ended, else
    `killed` (destroyed when the item ended, or removed since)."""
    if item.status in it.IN_FLIGHT:
        return "running"
    if item.metadata_json.get("sandbox", {}).get("kept") is True:
        return "kept"
    return "killed"


class SandboxService:
    def __init__(
        self,
        *,
        repository: Repository,
        queries: ReadModelQueries,
        settings: Settings,
        clock: Clock = system_clock,
    ) -> None:
        self.repository = repository
        self.queries = queries
        self.settings = settings
        self.clock = clock

    def _local_provider(self) -> LocalSandboxProvider:
        isolation: IsolationLevel = (
            "weak" if self.settings.sandbox_isolation == "weak" else "strict"
        )
        return LocalSandboxProvider(Path(self.settings.sandbox_root), isolation=isolation)

    async def discard(
        self, ctx: CommandContext, evaluation: EvaluationView, item: ItemView
    ) -> ItemView:
        created_by = evaluation.created_by.user_id if evaluation.created_by else None
        if not ctx.principal.can_manage(ctx.org_id, evaluation.workspace_id, created_by):
            raise Forbidden("your role lets you delete only sandboxes of your evaluations")
        state = sandbox_state(item)
        if state == "running":
            raise StateConflict(
                f"the sandbox of item {item.id} is in use (item {item.status}); it is removed "
                f"when the item ends, or cancel evaluation {evaluation.id} to stop it now",
            )
        if state == "killed":
            raise StateConflict(f"the sandbox of item {item.id} was already removed")
        provider = evaluation.config.sandbox_provider
        if provider != "local":
            raise StateConflict(
                f"removing a kept sandbox of the {provider!r} provider is not supported by "
                "this route; remove it with the provider's own tools",
            )
        location = str(item.metadata_json.get("sandbox", {}).get("location", ""))
        local = self._local_provider()
        kept = [m for m in local.sandboxes() if m.item_id == item.id and m.kept]
        if not kept:
            # Never record a removal that did not happen: the sandbox lives where its worker
            # ran, which may be another machine (or this server has another sandbox root).
            raise StateConflict(
                f"the kept sandbox of item {item.id} ({location}) is not under this server's "
                "sandbox root; delete it through a server on the machine its worker ran on",
            )
        for meta in kept:
            try:
                await local.discard(meta.id)
            except SandboxError as exc:
                raise ActionFailed(f"cannot remove sandbox {meta.id}: {exc}") from exc
        loaded = await self.repository.item(item.id)
        assert loaded is not None  # the read model showed it
        decided = it.decide(loaded, it.DiscardSandbox(location=location))
        metadata = codec.EventMetadata(
            actor=actor_of(ctx.principal),
            request_id=ctx.request_id,
            correlation_id=ctx.request_id,
        )
        try:
            await self.repository.commit(
                decided,
                versions={("item", item.id): loaded.version},
                metadata=metadata,
                recorded_at=iso(self.clock()),
            )
        except ConcurrencyConflict as exc:
            raise StateConflict(f"item {item.id} changed meanwhile; try again") from exc
        found = await self.queries.item(item.evaluation_id, item.id)
        assert found is not None  # it was just appended to
        return found
