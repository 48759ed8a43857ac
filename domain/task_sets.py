"""Task sets: a named, org-scoped list of task references, run as one evaluation.

One stream per set (`task_set`, id a uuid5 of `<org_id>/<name>`). A set is created, replaced
in full (members, description, source, tags: the client has no member-level patch), made
public or private, and deleted; after a deletion the name may be created again. Members are
refs `<org>/<name>` (the latest version the runner may see) or `<org>/<name>@<version>`
(pinned); they are resolved when read or run, never at write time. Pure.
"""

from __future__ import annotations

import re
import uuid
from typing import Any

import msgspec

from domain.errors import IllegalTransition, InvalidCommand

SET_NAME = re.compile(r"\A[a-z0-9][a-z0-9_-]*\Z")
_MEMBER = re.compile(r"\A(?P<org>[a-z0-9][a-z0-9-]*)/(?P<name>[a-z0-9][a-z0-9_-]*)\Z")
_VERSION = re.compile(r"\A[A-Za-z0-9][A-Za-z0-9.+_-]*\Z")
MAX_MEMBERS = 1000
TASK_SET_STREAM = "task_set"
_NAMESPACE = uuid.UUID("1b7e4d2a-3c9f-4f61-8a0e-5d2c7b9e6f14")


def task_set_stream_id(org_id: str, name: str) -> str:
    return str(uuid.uuid5(_NAMESPACE, f"{org_id}/{name}"))


class Member(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    task_name: str  # <org>/<name>
    task_version: str | None = None  # pinned, or None: the latest visible
    notes: str | None = None

    @property
    def ref(self) -> str:
        return f"{self.task_name}@{self.task_version}" if self.task_version else self.task_name


class SkippedMember(msgspec.Struct, frozen=True, kw_only=True):
    """A member an evaluation of the set left out, and why (the client prints these)."""

    task_name: str
    task_version: str | None
    reason: str


class SetContent(msgspec.Struct, frozen=True, kw_only=True):
    """What a PUT replaces."""

    description: str | None = None
    source: str | None = None
    tags: tuple[str, ...] = ()
    members: tuple[Member, ...] = ()


class TaskSetEvent(msgspec.Struct, frozen=True, kw_only=True, tag_field="type"):
    org_id: str
    name: str


class TaskSetCreated(TaskSetEvent, frozen=True, tag="task_set.created"):
    org_key: str
    content: SetContent
    is_public: bool = False


class TaskSetReplaced(TaskSetEvent, frozen=True, tag="task_set.replaced"):
    content: SetContent


class TaskSetVisibilityChanged(TaskSetEvent, frozen=True, tag="task_set.visibility_changed"):
    is_public: bool


class TaskSetDeleted(TaskSetEvent, frozen=True, tag="task_set.deleted"):
    pass


AnyTaskSetEvent = TaskSetCreated | TaskSetReplaced | TaskSetVisibilityChanged | TaskSetDeleted


class TaskSet(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    org_id: str
    org_key: str
    name: str
    content: SetContent
    is_public: bool
    created_at: str
    updated_at: str
    created_by: Any = None  # the creator's actor, as the log recorded it
    deleted: bool = False
    stream_version: int = 0


def evolve(
    current: TaskSet | None, event: AnyTaskSetEvent, recorded_at: str, actor: Any
) -> TaskSet | None:
    version = (current.stream_version if current else 0) + 1
    match event:
        case TaskSetCreated():
            return TaskSet(
                id=task_set_stream_id(event.org_id, event.name),
                org_id=event.org_id,
                org_key=event.org_key,
                name=event.name,
                content=event.content,
                is_public=event.is_public,
                created_at=recorded_at,
                updated_at=recorded_at,
                created_by=actor,
                stream_version=version,
            )
        case TaskSetReplaced():
            if current is None:
                return None
            return msgspec.structs.replace(
                current, content=event.content, updated_at=recorded_at, stream_version=version
            )
        case TaskSetVisibilityChanged():
            if current is None:
                return None
            return msgspec.structs.replace(
                current, is_public=event.is_public, updated_at=recorded_at, stream_version=version
            )
        case TaskSetDeleted():
            if current is None:
                return None
            return msgspec.structs.replace(
                current, deleted=True, updated_at=recorded_at, stream_version=version
            )


def live(current: TaskSet | None) -> TaskSet | None:
    return current if current is not None and not current.deleted else None


def decide_create(
    current: TaskSet | None,
    org_id: str,
    org_key: str,
    name: str,
    content: SetContent,
    is_public: bool,
) -> list[AnyTaskSetEvent]:
    if not SET_NAME.match(name):
        raise InvalidCommand(f"task set name {name!r} must be lowercase letters, digits, - and _")
    if live(current) is not None:
        raise IllegalTransition(f"task set {org_key}/{name} already exists; replace it with PUT")
    return [
        TaskSetCreated(
            org_id=org_id, org_key=org_key, name=name, content=content, is_public=is_public
        )
    ]


def decide_replace(current: TaskSet, content: SetContent) -> list[AnyTaskSetEvent]:
    if current.content == content:
        return []
    return [TaskSetReplaced(org_id=current.org_id, name=current.name, content=content)]


def decide_visibility(current: TaskSet, is_public: bool) -> list[AnyTaskSetEvent]:
    if current.is_public == is_public:
        return []
    return [TaskSetVisibilityChanged(org_id=current.org_id, name=current.name, is_public=is_public)]


def decide_delete(current: TaskSet) -> list[AnyTaskSetEvent]:
    return [TaskSetDeleted(org_id=current.org_id, name=current.name)]


def parse_content(body: dict[str, Any]) -> SetContent:
    """A manifest body's editable part, validated; InvalidCommand names what is wrong."""
    raw_members = body.get("members")
    if not isinstance(raw_members, list) or not raw_members:
        raise InvalidCommand("members must be a non-empty list of task references")
    if len(raw_members) > MAX_MEMBERS:
        raise InvalidCommand(f"a task set holds at most {MAX_MEMBERS} members")
    members: list[Member] = []
    seen: set[tuple[str, str | None]] = set()
    for index, raw in enumerate(raw_members):
        member = _member(raw, index)
        key = (member.task_name, member.task_version)
        if key in seen:
            raise InvalidCommand(f"member {member.ref!r} is listed twice")
        seen.add(key)
        members.append(member)
    tags = body.get("tags") or []
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        raise InvalidCommand("tags must be a list of strings")
    description, source = body.get("description"), body.get("source")
    for field, value in (("description", description), ("source", source)):
        if value is not None and not isinstance(value, str):
            raise InvalidCommand(f"{field} must be a string")
    return SetContent(
        description=description, source=source, tags=tuple(tags), members=tuple(members)
    )


def _member(raw: Any, index: int) -> Member:
    notes: str | None = None
    if isinstance(raw, str):
        name, sep, version = raw.strip().partition("@")
        pinned: str | None = version if sep else None
    elif isinstance(raw, dict):
        name = str(raw.get("task_name", "")).strip()
        pinned = raw.get("task_version")
        notes = raw.get("notes")
        if pinned is not None and not isinstance(pinned, str):
            raise InvalidCommand(f"members[{index}].task_version must be a string")
        if notes is not None and not isinstance(notes, str):
            raise InvalidCommand(f"members[{index}].notes must be a string")
    else:
        raise InvalidCommand(f"members[{index}] must be a reference string or an object")
    if not _MEMBER.match(name):
        raise InvalidCommand(
            f"members[{index}] {name!r} must be an org-qualified task name '<org>/<name>'"
        )
    if pinned is not None and not _VERSION.match(pinned):
        raise InvalidCommand(f"members[{index}] has an invalid version {pinned!r}")
    return Member(task_name=name, task_version=pinned, notes=notes)
