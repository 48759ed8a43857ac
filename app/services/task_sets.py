"""Task set commands and queries, and their expansion into an evaluation's task refs.

Members are resolved per caller at read and run time (never at write time): a member the
caller may not run is reported `not_found`, whether it is missing or another org's private
task, so nothing about other tenants leaks.
"""

from __future__ import annotations

from typing import Any

import msgspec

from app.services.registry import RegistryService, event_metadata
from app.services.registry_errors import RegistryDenied, RegistryNotFound, VersionConflict
from domain import task_sets as ts
from domain.errors import IllegalTransition, InvalidCommand
from infrastructure.identity.records import CREATOR_ROLES, MANAGER_ROLES, Org, Principal
from infrastructure.tasks import UnknownTask


class MemberStatus(msgspec.Struct, frozen=True, kw_only=True):
    member: ts.Member
    resolved_version: str | None
    resolved_ref: str | None
    reason: str | None  # None when the caller can run it
    publicly_runnable: bool


class TaskSetService:
    def __init__(self, registry: RegistryService) -> None:
        self.registry = registry
        self.log = registry.log

    async def _writable(self, principal: Principal, org_key: str) -> Org:
        org = await self.registry.org(principal, org_key)
        if principal.role_in(org.id) not in CREATOR_ROLES:
            raise RegistryDenied(f"your role in {org_key!r} cannot change task sets")
        return org

    async def readable(self, principal: Principal, org_key: str, name: str) -> ts.TaskSet:
        """A set of the caller's org, or a public one of another org."""
        org = await self.registry.identity.get_org_by_key(org_key)
        found = ts.live(await self.log.task_set(org.id, name)) if org else None
        if org is None or found is None:
            raise RegistryNotFound(f"task set {org_key}/{name} not found")
        if not (principal.can_read_org(org.id) or found.is_public):
            raise RegistryNotFound(f"task set {org_key}/{name} not found")
        return found

    async def create(
        self, principal: Principal, org_key: str, body: dict[str, Any], request_id: str | None
    ) -> ts.TaskSet:
        org = await self._writable(principal, org_key)
        name = body.get("name")
        if not isinstance(name, str):
            raise InvalidCommand("a task set needs a name")
        content = ts.parse_content(body)
        current = await self.log.task_set(org.id, name)
        try:
            new_events = ts.decide_create(
                current, org.id, org.key, name, content, bool(body.get("is_public", False))
            )
        except IllegalTransition as exc:
            raise VersionConflict(str(exc)) from exc
        await self.log.append_task_set(
            current, org.id, name, new_events, event_metadata(principal, request_id)
        )
        return await self._after(org, name)

    async def replace(
        self,
        principal: Principal,
        org_key: str,
        name: str,
        body: dict[str, Any],
        request_id: str | None,
    ) -> ts.TaskSet:
        org = await self._writable(principal, org_key)
        current = ts.live(await self.log.task_set(org.id, name))
        if current is None:
            raise RegistryNotFound(f"task set {org_key}/{name} not found")
        new_events = ts.decide_replace(current, ts.parse_content(body))
        await self.log.append_task_set(
            current, org.id, name, new_events, event_metadata(principal, request_id)
        )
        return await self._after(org, name)

    async def set_visibility(
        self, principal: Principal, org_key: str, name: str, is_public: bool, request_id: str | None
    ) -> ts.TaskSet:
        org = await self._writable(principal, org_key)
        if principal.role_in(org.id) not in MANAGER_ROLES:
            raise RegistryDenied("only owners and admins publish or unpublish task sets")
        current = ts.live(await self.log.task_set(org.id, name))
        if current is None:
            raise RegistryNotFound(f"task set {org_key}/{name} not found")
        await self.log.append_task_set(
            current,
            org.id,
            name,
            ts.decide_visibility(current, is_public),
            event_metadata(principal, request_id),
        )
        return await self._after(org, name)

    async def delete(
        self, principal: Principal, org_key: str, name: str, request_id: str | None
    ) -> ts.TaskSet:
        org = await self._writable(principal, org_key)
        current = ts.live(await self.log.task_set(org.id, name))
        if current is None:
            raise RegistryNotFound(f"task set {org_key}/{name} not found")
        await self.log.append_task_set(
            current, org.id, name, ts.decide_delete(current), event_metadata(principal, request_id)
        )
        return current

    async def _after(self, org: Org, name: str) -> ts.TaskSet:
        found = ts.live(await self.log.task_set(org.id, name))
        assert found is not None
        return found

    async def listing(
        self, principal: Principal, org: Org, *, include_public: bool
    ) -> list[ts.TaskSet]:
        return sorted(
            (
                s
                for s in await self.log.all_task_sets()
                if s.org_id == org.id or (include_public and s.is_public)
            ),
            key=lambda s: (s.org_key, s.name),
        )

    async def members(self, org_id: str, task_set: ts.TaskSet) -> list[MemberStatus]:
        """Each member as a caller of `org_id` would run it."""
        statuses: list[MemberStatus] = []
        for member in task_set.content.members:
            try:
                located = await self.registry.locate(org_id, member.ref)
            except UnknownTask:
                statuses.append(
                    MemberStatus(
                        member=member,
                        resolved_version=None,
                        resolved_ref=None,
                        reason="not_found",
                        publicly_runnable=False,
                    )
                )
                continue
            statuses.append(
                MemberStatus(
                    member=member,
                    resolved_version=located.version,
                    resolved_ref=located.ref,
                    reason=None,
                    publicly_runnable=located.publicly_runnable,
                )
            )
        return statuses

    async def expand(self, org_id: str, ref: str) -> tuple[list[str], list[ts.SkippedMember]]:
        """The refs an evaluation of set `<org>/<name>` runs, and the members it skips.
        UnknownTask when the caller may not see the set."""
        org_key, _, name = ref.strip().partition("/")
        owner = await self.registry.identity.get_org_by_key(org_key) if name else None
        found = ts.live(await self.log.task_set(owner.id, name)) if owner else None
        if owner is None or found is None or not (owner.id == org_id or found.is_public):
            raise UnknownTask(ref)
        runnable: list[str] = []
        skipped: list[ts.SkippedMember] = []
        for status in await self.members(org_id, found):
            if status.reason is None:
                runnable.append(status.member.ref)
            else:
                skipped.append(
                    ts.SkippedMember(
                        task_name=status.member.task_name,
                        task_version=status.member.task_version,
                        reason=status.reason,
                    )
                )
        return runnable, skipped


def publish_warnings(task_set: ts.TaskSet, statuses: list[MemberStatus]) -> list[str] | None:
    """On a public set, the members other orgs could not run (the client prints them)."""
    if not task_set.is_public:
        return None
    return [f"{s.member.ref} is not publicly runnable" for s in statuses if not s.publicly_runnable]
