"""The task registry: pushed task versions and their visibility, as events and a fold.

A task family is one stream (`task`, id a uuid5 of `<org_id>/<name>`): its versions, each
bound to the digest of the bundle pushed under it, and whether the family is public. A version is
immutable: pushing other bytes under a version already there is refused; pushing the same
bytes again changes nothing. Deleting a version frees it. Pure: time and actors come in
through the store's envelope, never from here.
"""

from __future__ import annotations

import uuid

import msgspec

from domain.errors import IllegalTransition, InvalidCommand


class TaskEvent(msgspec.Struct, frozen=True, kw_only=True, tag_field="type"):
    org_id: str
    name: str


class TaskVersionPushed(TaskEvent, frozen=True, tag="task.version_pushed"):
    org_key: str
    version: str
    manifest_digest: str
    # The digest of the bundle layer (tar.gz): what items record and workers fetch.
    bundle_digest: str
    config_digest: str
    bundle_size: int
    description: str | None = None
    instruction: str | None = None
    tags: tuple[str, ...] = ()
    difficulty: str | None = None
    author: str | None = None
    license: str | None = None


class TaskVersionDeleted(TaskEvent, frozen=True, tag="task.version_deleted"):
    version: str
    bundle_digest: str


class TaskVisibilityChanged(TaskEvent, frozen=True, tag="task.visibility_changed"):
    is_public: bool


AnyTaskEvent = TaskVersionPushed | TaskVersionDeleted | TaskVisibilityChanged
TASK_STREAM = "task"


# Stream ids are uuid-sized in the log: a family's is derived from (org id, name).
_TASK_NAMESPACE = uuid.UUID("6f1d3c52-9a47-4a8e-b1f0-7c2d5e8a9b30")


def task_stream_id(org_id: str, name: str) -> str:
    return str(uuid.uuid5(_TASK_NAMESPACE, f"{org_id}/{name}"))


class TaskVersionState(msgspec.Struct, frozen=True, kw_only=True):
    pushed: TaskVersionPushed
    pushed_at: str
    pushed_by: str | None


class TaskFamily(msgspec.Struct, frozen=True, kw_only=True):
    """A task name in one org: its live versions and its visibility."""

    org_id: str
    org_key: str
    name: str
    is_public: bool = False
    versions: dict[str, TaskVersionState] = {}
    created_at: str = ""
    updated_at: str = ""
    # Events folded so far: the stream version an append must expect.
    stream_version: int = 0


def evolve(
    family: TaskFamily | None, event: AnyTaskEvent, recorded_at: str, actor: str | None
) -> TaskFamily | None:
    """The family after one event (None: nothing has been pushed under the name yet)."""
    version = (family.stream_version if family else 0) + 1
    match event:
        case TaskVersionPushed():
            base = family or TaskFamily(
                org_id=event.org_id,
                org_key=event.org_key,
                name=event.name,
                created_at=recorded_at,
            )
            versions = dict(base.versions)
            versions[event.version] = TaskVersionState(
                pushed=event, pushed_at=recorded_at, pushed_by=actor
            )
            return msgspec.structs.replace(
                base, versions=versions, updated_at=recorded_at, stream_version=version
            )
        case TaskVersionDeleted():
            if family is None:
                return None
            versions = {k: v for k, v in family.versions.items() if k != event.version}
            return msgspec.structs.replace(
                family, versions=versions, updated_at=recorded_at, stream_version=version
            )
        case TaskVisibilityChanged():
            if family is None:
                return None
            return msgspec.structs.replace(
                family, is_public=event.is_public, updated_at=recorded_at, stream_version=version
            )


def decide_push(family: TaskFamily | None, pushed: TaskVersionPushed) -> list[AnyTaskEvent]:
    """[] when exactly these bytes are already there; IllegalTransition when other bytes are."""
    if family is not None:
        existing = family.versions.get(pushed.version)
        if existing is not None:
            if existing.pushed.manifest_digest == pushed.manifest_digest:
                return []
            raise IllegalTransition(
                f"{family.org_key}/{pushed.name}@{pushed.version} is already pushed with "
                f"digest {existing.pushed.manifest_digest}; a version is immutable: "
                "bump the version in task.yaml"
            )
    return [pushed]


def decide_delete(family: TaskFamily | None, version: str) -> list[AnyTaskEvent]:
    if family is None or version not in family.versions:
        raise InvalidCommand(f"no version {version!r} to delete")
    gone = family.versions[version].pushed
    return [
        TaskVersionDeleted(
            org_id=family.org_id,
            name=family.name,
            version=version,
            bundle_digest=gone.bundle_digest,
        )
    ]


def decide_visibility(family: TaskFamily, is_public: bool) -> list[AnyTaskEvent]:
    if family.is_public == is_public:
        return []
    return [TaskVisibilityChanged(org_id=family.org_id, name=family.name, is_public=is_public)]
