"""Task registry commands and queries: push (with ingest validation), pull, delete, visibility,
and the resolution of task refs that create uses (pushed versions first, then the catalog).

Every refusal is raised before anything is appended. Errors are application types
(`RegistryError` and its kinds); `app.errors` alone turns them into HTTP answers.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Callable
from typing import Any

import msgspec

from app.services.evaluations import actor_of
from app.services.registry_errors import (
    BadDigest,
    BlobUnknown,
    ManifestInvalid,
    ManifestUnknown,
    RegistryDenied,
    RegistryNotFound,
    VersionConflict,
)
from domain import registry as reg
from domain.errors import IllegalTransition
from infrastructure import codec
from infrastructure.clock import utc_now
from infrastructure.identity.records import CREATOR_ROLES, MANAGER_ROLES, Org, Principal
from infrastructure.identity.store import IdentityStore
from infrastructure.registry.blobs import BlobStore, DigestInvalid, check_digest, sha256_digest
from infrastructure.registry.bundles import BundleSource, ResolvedTask, load_layer
from infrastructure.registry.log import RegistryLog
from infrastructure.tasks import Task, TaskBundleError, TaskCatalog, UnknownTask, version_key

MEDIA_OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_LAYER_TAR_GZ = "application/vnd.dreadnode.layer.v1.tar+gzip"
# What `dn task push` annotates its images with (it builds tasks as "environment" images).
TASK_PACKAGE_TYPES = ("environment", "task")
ANN_TYPE = "io.dreadnode.type"
ANN_VERSION = "io.dreadnode.version"
MAX_MANIFEST_BYTES = 256 * 1024
NAME = re.compile(r"\A[a-z0-9][a-z0-9_-]*\Z")
_REF = re.compile(r"\A(?:(?P<org>[^/@\s]+)/)?(?P<name>[^/@\s]+)(?:@(?P<version>[^/@\s]+))?\Z")


class Located(msgspec.Struct, frozen=True, kw_only=True):
    """Where a ref points (see `RegistryService.locate`)."""

    ref: str
    version: str
    digest: str | None  # a pushed version's bundle; None for the catalog (packed on use)
    source: str
    publicly_runnable: bool
    catalog_task: Task | None = None


class TaskEntry(msgspec.Struct, frozen=True, kw_only=True):
    """One task version as the JSON routes show it, pushed or from the catalog."""

    org_key: str
    name: str
    version: str
    is_public: bool
    source: str
    bundle_digest: str | None
    manifest_digest: str | None
    description: str | None
    instruction: str | None
    tags: tuple[str, ...]
    difficulty: str | None
    author: str | None
    license: str | None
    created_at: str | None
    updated_at: str | None
    created_by: str | None
    task: Task | None = None  # catalog entries carry their loaded task


class RegistryService:
    def __init__(
        self,
        *,
        log: RegistryLog,
        blobs: BlobStore,
        bundles: BundleSource,
        identity: IdentityStore,
        catalog: TaskCatalog,
        clock: Callable[[], str] = utc_now,
    ) -> None:
        self.log = log
        self.blobs = blobs
        self.bundles = bundles
        self.identity = identity
        self.catalog = catalog
        self.clock = clock

    # ---- who may do what ----

    async def org(self, principal: Principal, org_key: str, *, write: bool = False) -> Org:
        """The org of a repository; RegistryNotFound unless the caller belongs to it."""
        org = await self.identity.get_org_by_key(org_key)
        if org is None or not principal.can_read_org(org.id):
            raise RegistryNotFound(f"organization {org_key!r} not found")
        if write and principal.role_in(org.id) not in CREATOR_ROLES:
            raise RegistryDenied(f"your role in {org_key!r} cannot push or change tasks")
        return org

    async def readable_family(
        self, principal: Principal, org_key: str, name: str
    ) -> tuple[Org, reg.TaskFamily]:
        """A family the caller may read: its own org's, or a public one of another org."""
        org = await self.identity.get_org_by_key(org_key)
        family = await self.log.family(org.id, name) if org else None
        if org is None or family is None or not family.versions:
            raise RegistryNotFound(f"task {org_key}/{name} not found")
        if not (principal.can_read_org(org.id) or family.is_public):
            raise RegistryNotFound(f"task {org_key}/{name} not found")
        return org, family

    # ---- blobs ----

    async def blob_size(self, principal: Principal, org_key: str, digest: str) -> int:
        data = await self.blob(principal, org_key, digest)
        return len(data)

    async def blob(self, principal: Principal, org_key: str, digest: str) -> bytes:
        """A blob of the org, to a member, or of one of its public tasks, to anyone."""
        try:
            check_digest(digest)
        except DigestInvalid as exc:
            raise BadDigest(str(exc)) from exc
        org = await self.identity.get_org_by_key(org_key)
        if org is None:
            raise BlobUnknown(f"blob {digest} not found")
        if principal.can_read_org(org.id):
            if await self.blobs.exists(org.id, digest) is None:
                raise BlobUnknown(f"blob {digest} not found")
        elif not await self._in_public_task(org.id, digest):
            raise BlobUnknown(f"blob {digest} not found")
        data = await self.blobs.get(digest)
        if data is None:
            raise BlobUnknown(f"blob {digest} not found")
        return data

    async def _in_public_task(self, org_id: str, digest: str) -> bool:
        for family in (await self.log.catch_up()).values():
            if family.org_id != org_id or not family.is_public:
                continue
            for state in family.versions.values():
                pushed = state.pushed
                if digest in (pushed.manifest_digest, pushed.bundle_digest, pushed.config_digest):
                    return True
        return False

    async def put_blob(self, org: Org, digest: str, data: bytes) -> None:
        try:
            await self.blobs.put(org.id, digest, data)
        except DigestInvalid as exc:
            raise BadDigest(str(exc)) from exc

    # ---- manifests ----

    async def push_manifest(
        self,
        principal: Principal,
        org_key: str,
        name: str,
        reference: str,
        body: bytes,
        request_id: str | None,
    ) -> str:
        """Validate and record a pushed task version; returns the manifest's digest."""
        org = await self.org(principal, org_key, write=True)
        if not NAME.match(name):
            raise ManifestInvalid(
                f"task name {name!r} must be lowercase letters, digits, '-' and '_'"
            )
        if len(body) > MAX_MANIFEST_BYTES:
            raise ManifestInvalid("the manifest is larger than 256 KiB")
        manifest_digest = sha256_digest(body)
        manifest = _parse_manifest(body)
        annotations = manifest.get("annotations") or {}
        package_type = annotations.get(ANN_TYPE)
        if package_type not in TASK_PACKAGE_TYPES:
            raise ManifestInvalid(
                f"this registry holds tasks only; the image is of type {package_type!r}"
            )
        if reference.startswith("sha256:"):
            if reference != manifest_digest:
                raise BadDigest(f"the manifest has digest {manifest_digest}, not {reference}")
            version = str(annotations.get(ANN_VERSION) or "")
        else:
            version = reference
        if not version or version == "latest":
            raise ManifestInvalid("push a task under its version tag (task.yaml's version)")
        config_digest, layer_digest = _digests(manifest)
        for digest in (config_digest, layer_digest):
            if await self.blobs.exists(org.id, digest) is None:
                raise BlobUnknown(f"blob {digest} named by the manifest was not uploaded")
        layer = await self.blobs.get(layer_digest)
        assert layer is not None  # exists() said so, and blobs are never removed
        try:
            task = await asyncio.to_thread(load_layer, layer)
        except TaskBundleError as exc:
            raise ManifestInvalid(f"task bundle rejected: {exc}") from exc
        problems = _ingest_problems(task, name, version)
        if problems:
            raise ManifestInvalid("task bundle rejected: " + "; ".join(problems))
        pushed = reg.TaskVersionPushed(
            org_id=org.id,
            org_key=org.key,
            name=name,
            version=version,
            manifest_digest=manifest_digest,
            bundle_digest=layer_digest,
            config_digest=config_digest,
            bundle_size=len(layer),
            description=_description(task),
            instruction=task.instruction,
            tags=tuple(task.tags),
            difficulty=task.difficulty,
            author=task.author,
            license=task.license,
        )
        family = await self.log.family(org.id, name)
        try:
            new_events = reg.decide_push(family, pushed)
        except IllegalTransition as exc:
            raise VersionConflict(str(exc)) from exc
        await self.blobs.put(org.id, manifest_digest, body)
        await self.log.append_task(
            family, org.id, name, new_events, event_metadata(principal, request_id)
        )
        return manifest_digest

    async def manifest(
        self, principal: Principal, org_key: str, name: str, reference: str
    ) -> tuple[str, bytes]:
        """(digest, bytes) of a version's manifest, by tag, `latest`, or digest."""
        _org, family = await self.readable_family(principal, org_key, name)
        state = _version_by_reference(family, reference)
        if state is None:
            raise ManifestUnknown(f"manifest {org_key}/{name}:{reference} not found")
        digest = state.pushed.manifest_digest
        data = await self.blobs.get(digest)
        if data is None:
            raise ManifestUnknown(f"manifest {digest} not found")
        return digest, data

    async def tags(self, principal: Principal, org_key: str, name: str) -> list[str]:
        _org, family = await self.readable_family(principal, org_key, name)
        return sorted(family.versions, key=version_key)

    # ---- JSON routes: family-level commands ----

    async def delete_version(
        self, principal: Principal, org_key: str, name: str, version: str, request_id: str | None
    ) -> None:
        org = await self.org(principal, org_key, write=True)
        family = await self.log.family(org.id, name)
        if family is None or version not in family.versions:
            raise RegistryNotFound(f"task {org_key}/{name}@{version} not found")
        pushed_by = family.versions[version].pushed_by
        if principal.role_in(org.id) not in MANAGER_ROLES and pushed_by != principal.user.email:
            raise RegistryDenied("your role lets you delete only task versions you pushed")
        await self.log.append_task(
            family,
            org.id,
            name,
            reg.decide_delete(family, version),
            event_metadata(principal, request_id),
        )

    async def set_visibility(
        self,
        principal: Principal,
        org_key: str,
        name: str,
        is_public: bool,
        request_id: str | None,
    ) -> reg.TaskFamily:
        org = await self.org(principal, org_key, write=True)
        if principal.role_in(org.id) not in MANAGER_ROLES:
            raise RegistryDenied("only owners and admins publish or unpublish tasks")
        family = await self.log.family(org.id, name)
        if family is None or not family.versions:
            raise RegistryNotFound(f"task {org_key}/{name} not found")
        await self.log.append_task(
            family,
            org.id,
            name,
            reg.decide_visibility(family, is_public),
            event_metadata(principal, request_id),
        )
        changed = await self.log.family(org.id, name)
        assert changed is not None
        return changed

    # ---- JSON routes: queries ----

    async def entries(
        self, principal: Principal, org: Org, *, include_public: bool
    ) -> list[TaskEntry]:
        """The latest version of each task the caller sees in `org`: the org's pushed tasks,
        other orgs' public ones when asked, and the catalog's built-in tasks."""
        found: list[TaskEntry] = []
        own_names: set[str] = set()
        for family in (await self.log.catch_up()).values():
            if not family.versions:
                continue
            if family.org_id == org.id:
                own_names.add(family.name)
            elif not (include_public and family.is_public):
                continue
            found.append(_latest_entry(family))
        for name in self.catalog.names():
            if name not in own_names:
                found.append(self._catalog_entry(self.catalog.resolve(name)))
        return sorted(found, key=lambda e: (e.name, e.org_key))

    async def versions(self, principal: Principal, org: Org, name: str) -> list[TaskEntry]:
        """Every version of `name` the caller sees in `org`, newest first: a member sees the
        org's versions (or the built-in task of that name), anyone else only a public family."""
        member = principal.can_read_org(org.id)
        family = await self.log.family(org.id, name)
        if family is not None and family.versions and (member or family.is_public):
            entries = [_entry(family, state) for state in family.versions.values()]
        elif not member:
            # Worded as for an org that does not exist: nothing about it is disclosed.
            raise RegistryNotFound(f"organization {org.key!r} not found")
        else:
            entries = [self._catalog_entry(t) for t in self.catalog.tasks() if t.name == name]
        if not entries:
            raise RegistryNotFound(f"task {org.key}/{name} not found")
        return sorted(entries, key=lambda e: version_key(e.version), reverse=True)

    async def entry(
        self, principal: Principal, org: Org, name: str, version: str | None
    ) -> TaskEntry:
        for candidate in await self.versions(principal, org, name):
            if version is None or candidate.version == version:
                return candidate
        raise RegistryNotFound(f"task {org.key}/{name}@{version} not found")

    async def readme(self, entry: TaskEntry) -> str | None:
        task = entry.task if entry.task is not None else None
        if task is None and entry.bundle_digest is not None:
            task = await self.bundles.task(entry.bundle_digest)
        if task is None:
            return None
        for candidate in ("README.md", "readme.md", "README"):
            path = task.bundle_dir / candidate
            if path.is_file():
                return path.read_text(encoding="utf-8", errors="replace")
        return None

    def _catalog_entry(self, task: Task) -> TaskEntry:
        digest, _layer = self.bundles.packed(task.bundle_dir)
        return TaskEntry(
            org_key="assay",
            name=task.name,
            version=task.version,
            is_public=True,
            source="built-in",
            bundle_digest=digest,
            manifest_digest=None,
            description=_description(task),
            instruction=task.instruction,
            tags=tuple(task.tags),
            difficulty=task.difficulty,
            author=task.author,
            license=task.license,
            created_at=None,
            updated_at=None,
            created_by=None,
            task=task,
        )

    # ---- create: refs to runnable tasks ----

    async def locate(self, org_id: str, ref: str) -> Located:
        """Where `[org/]name[@version]` points for a caller in `org_id`, without loading or
        storing anything: the org's pushed versions first (or another org's public ones, when
        named), then the catalog. UnknownTask when nothing the caller may run matches."""
        match = _REF.match(ref.strip())
        if not match:
            raise UnknownTask(ref)
        owner_key, name, version = match["org"], match["name"], match["version"]
        owner_id = org_id
        if owner_key is not None:
            found = await self.identity.get_org_by_key(owner_key)
            # A prefix that names no org (the client's habit, or `assay/` of the built-in
            # entries) is the caller's own namespace: the catalog is everybody's.
            if found is not None:
                owner_id = found.id
        family = await self.log.family(owner_id, name)
        if family is not None and (owner_id == org_id or family.is_public):
            state = _version_by_reference(family, version or "latest")
            if state is not None:
                pushed = state.pushed
                return Located(
                    ref=f"{family.org_key}/{name}@{pushed.version}",
                    version=pushed.version,
                    digest=pushed.bundle_digest,
                    source="registry",
                    publicly_runnable=family.is_public,
                )
        if owner_id != org_id:
            raise UnknownTask(ref)
        task = self.catalog.resolve(f"{name}@{version}" if version else name)
        return Located(
            ref=task.ref,
            version=task.version,
            digest=None,
            source="catalog",
            publicly_runnable=True,
            catalog_task=task,
        )

    async def resolve(self, org_id: str, ref: str) -> ResolvedTask:
        """What create records for a ref: the task and its bundle's digest (a catalog
        bundle's layer is stored in the blob store here, so any worker can fetch it)."""
        located = await self.locate(org_id, ref)
        if located.catalog_task is not None:
            task = located.catalog_task
            digest = await self.bundles.store_catalog_bundle(org_id, task.bundle_dir)
            return ResolvedTask(task=task, ref=located.ref, digest=digest, source="catalog")
        assert located.digest is not None
        task = await self.bundles.task(located.digest)
        return ResolvedTask(task=task, ref=located.ref, digest=located.digest, source="registry")


def event_metadata(principal: Principal, request_id: str | None) -> codec.EventMetadata:
    return codec.EventMetadata(
        actor=actor_of(principal), request_id=request_id, correlation_id=request_id
    )


def _parse_manifest(body: bytes) -> dict[str, Any]:
    try:
        manifest = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ManifestInvalid(f"the manifest is not JSON: {exc}") from exc
    except RecursionError:
        # Nested past the decoder's stack (a manifest has a handful of levels): not a 500.
        raise ManifestInvalid("the manifest nests JSON too deeply") from None
    if not isinstance(manifest, dict) or manifest.get("schemaVersion") != 2:
        raise ManifestInvalid("the manifest must be an OCI image manifest (schemaVersion 2)")
    return manifest


def _digests(manifest: dict[str, Any]) -> tuple[str, str]:
    """(config digest, bundle layer digest) of a task image: one config, one tar.gz layer."""
    config = manifest.get("config")
    layers = manifest.get("layers")
    if not isinstance(config, dict) or not isinstance(layers, list) or len(layers) != 1:
        raise ManifestInvalid("a task image has one config and exactly one bundle layer")
    layer = layers[0]
    if not isinstance(layer, dict) or layer.get("mediaType") != MEDIA_LAYER_TAR_GZ:
        raise ManifestInvalid(f"the task's layer must be of media type {MEDIA_LAYER_TAR_GZ}")
    try:
        return check_digest(str(config.get("digest"))), check_digest(str(layer.get("digest")))
    except DigestInvalid as exc:
        raise BadDigest(str(exc)) from exc


def _ingest_problems(task: Task, name: str, version: str) -> list[str]:
    problems: list[str] = []
    if task.name != name:
        problems.append(f"task.yaml names the task {task.name!r}, but it is pushed as {name!r}")
    if task.version != version:
        problems.append(f"task.yaml has version {task.version!r}, but it is pushed as {version!r}")
    if not task.has_verification:
        problems.append("the task has no verification")
    return problems


def _description(task: Task) -> str | None:
    if task.description.strip():
        return task.description.strip()
    first = task.instruction.strip().splitlines()[0] if task.instruction.strip() else ""
    return first[:200] or None


def _version_by_reference(family: reg.TaskFamily, reference: str) -> reg.TaskVersionState | None:
    if reference == "latest":
        if not family.versions:
            return None
        return family.versions[max(family.versions, key=version_key)]
    if reference.startswith("sha256:"):
        for state in family.versions.values():
            if state.pushed.manifest_digest == reference:
                return state
        return None
    return family.versions.get(reference)


def _entry(family: reg.TaskFamily, state: reg.TaskVersionState) -> TaskEntry:
    pushed = state.pushed
    return TaskEntry(
        org_key=family.org_key,
        name=family.name,
        version=pushed.version,
        is_public=family.is_public,
        source="registry",
        bundle_digest=pushed.bundle_digest,
        manifest_digest=pushed.manifest_digest,
        description=pushed.description,
        instruction=pushed.instruction,
        tags=pushed.tags,
        difficulty=pushed.difficulty,
        author=pushed.author,
        license=pushed.license,
        created_at=state.pushed_at,
        updated_at=family.updated_at,
        created_by=state.pushed_by,
    )


def _latest_entry(family: reg.TaskFamily) -> TaskEntry:
    state = family.versions[max(family.versions, key=version_key)]
    return _entry(family, state)
