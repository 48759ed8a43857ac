"""Sandbox commands: removing the kept sandbox of an item that ended.

An item's sandbox is the one its latest run used; `cleanup_policy: on_success` keeps it when
the item ends without a pass. Removing a kept one destroys what the provider still holds and
appends `item.sandbox_discarded`, so the item stops saying it is kept. A sandbox whose item is
still in flight is refused (409): it is torn down when its item ends, and stopping it early
means cancelling its evaluation, which says so in the history.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Literal

from app.errors import ApiError
from app.services.evaluations import CommandContext, actor_of
from domain import item as it
from domain.projections import EvaluationView, ItemView
from infrastructure import codec
from infrastructure.clock import utc_now
from infrastructure.eventstore import ConcurrencyConflict, EventStore
from infrastructure.queries import ReadModelQueries
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
        store: EventStore,
        queries: ReadModelQueries,
        settings: Settings,
        clock: Callable[[], str] = utc_now,
    ) -> None:
        self.store = store
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
            raise ApiError(403, "your role lets you delete only sandboxes of your evaluations")
        state = sandbox_state(item)
        if state == "running":
            raise ApiError(
                409,
                f"the sandbox of item {item.id} is in use (item {item.status}); it is removed "
                f"when the item ends, or cancel evaluation {evaluation.id} to stop it now",
            )
        if state == "killed":
            raise ApiError(409, f"the sandbox of item {item.id} was already removed")
        provider = evaluation.config.sandbox_provider
        if provider != "local":
            raise ApiError(
                409,
                f"removing a kept sandbox of the {provider!r} provider is not supported by "
                "this route; remove it with the provider's own tools",
            )
        location = str(item.metadata_json.get("sandbox", {}).get("location", ""))
        local = self._local_provider()
        kept = [m for m in local.sandboxes() if m.item_id == item.id and m.kept]
        if not kept:
            # Never record a removal that did not happen: the sandbox lives where its worker
            # ran, which may be another machine (or this server has another sandbox root).
            raise ApiError(
                409,
                f"the kept sandbox of item {item.id} ({location}) is not under this server's "
                "sandbox root; delete it through a server on the machine its worker ran on",
            )
        for meta in kept:
            try:
                await local.discard(meta.id)
            except SandboxError as exc:
                raise ApiError(500, f"cannot remove sandbox {meta.id}: {exc}") from exc
        event = it.ItemSandboxDiscarded(
            item_id=item.id, evaluation_id=item.evaluation_id, location=location
        )
        state_now = it.ItemState(
            item_id=item.id,
            evaluation_id=item.evaluation_id,
            status=item.status,
            retry_count=item.retry_count,
            max_retries=item.max_retries,
            version=item.version,
        )
        decided = it.decide(state_now, event)
        metadata = codec.EventMetadata(
            actor=actor_of(ctx.principal),
            request_id=ctx.request_id,
            correlation_id=ctx.request_id,
        )
        try:
            await self.store.append(
                codec.to_appends(decided, {("item", item.id): item.version}, metadata),
                recorded_at=self.clock(),
            )
        except ConcurrencyConflict as exc:
            raise ApiError(409, f"item {item.id} changed meanwhile; try again") from exc
        found = await self.queries.item(item.evaluation_id, item.id)
        assert found is not None  # it was just appended to
        return found
