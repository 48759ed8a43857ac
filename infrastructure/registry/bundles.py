"""Task bundles as the `dn` client ships them: one deterministic tar.gz layer per version.

`pack` builds the layer from a folder exactly as `dn task push` does (sorted files, zeroed
times and owners, the same excluded names), so a shipped or local bundle gets a digest the
same way a pushed one has it. `BundleCache` unpacks a layer once per digest into a folder
of its own and loads it: what create validates and what the worker runs are the same bytes.
"""

from __future__ import annotations

import asyncio
import gzip
import io
import os
import shutil
import tarfile
import tempfile
from pathlib import Path, PurePosixPath

import msgspec

from infrastructure.registry.blobs import BlobStore, sha256_digest
from infrastructure.tasks import Task, TaskBundleError, UnknownTask, load_bundle

EXCLUDED_NAMES = frozenset({".git", "__pycache__", ".DS_Store", "dist", ".venv", "node_modules"})
EXCLUDED_SUFFIXES = (".pyc", ".pyo")
# Bounds on what an unpacked layer may hold (a small gzip can expand enormously).
MAX_UNPACKED_BYTES = 256 * 1024 * 1024
MAX_MEMBERS = 10_000


def pack(folder: Path) -> bytes:
    """The folder as the client's task layer: a deterministic tar.gz of its files."""
    folder = folder.resolve()
    buffer = io.BytesIO()
    with (
        gzip.GzipFile(fileobj=buffer, mode="wb", mtime=0) as compressed,
        tarfile.open(fileobj=compressed, mode="w") as tar,
    ):
        for path in sorted(folder.rglob("*")):
            if not path.is_file():
                continue
            relative = path.relative_to(folder)
            if any(part in EXCLUDED_NAMES for part in relative.parts) or path.name.endswith(
                EXCLUDED_SUFFIXES
            ):
                continue
            info = tar.gettarinfo(path, arcname=str(relative))
            info.mtime = 0
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            with path.open("rb") as handle:
                tar.addfile(info, handle)
    return buffer.getvalue()


def unpack(layer: bytes, destination: Path) -> None:
    """Extract a layer into an empty folder, refusing links, devices, escaping paths and
    archives that expand past MAX_UNPACKED_BYTES. Raises TaskBundleError with the reason."""
    try:
        with tarfile.open(fileobj=io.BytesIO(layer), mode="r:gz") as tar:
            members = tar.getmembers()
            if len(members) > MAX_MEMBERS:
                raise TaskBundleError(f"the bundle holds more than {MAX_MEMBERS} entries")
            total = 0
            for member in members:
                path = PurePosixPath(member.name)
                if path.is_absolute() or ".." in path.parts:
                    raise TaskBundleError(f"bundle entry {member.name!r} escapes the bundle")
                if not (member.isfile() or member.isdir()):
                    raise TaskBundleError(
                        f"bundle entry {member.name!r} is a link or device; only files are allowed"
                    )
                total += member.size
                if total > MAX_UNPACKED_BYTES:
                    raise TaskBundleError(
                        f"the bundle expands past {MAX_UNPACKED_BYTES // (1024 * 1024)} MiB"
                    )
            tar.extractall(destination, filter="data")
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise TaskBundleError(f"the bundle layer is not a readable tar.gz: {exc}") from exc


def load_layer(layer: bytes) -> Task:
    """Validate a layer the way the worker would run it: unpack to a scratch folder and load.
    The Task returned points at a folder that is gone: use it for its fields only."""
    with tempfile.TemporaryDirectory(prefix="assay-ingest-") as scratch:
        unpack(layer, Path(scratch))
        return load_bundle(Path(scratch))


class BundleCache:
    """Unpacked bundles by digest under `root`, each loaded once per process."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._loaded: dict[str, Task] = {}

    def folder(self, digest: str) -> Path:
        return self.root / digest.replace(":", "-")

    def cached(self, digest: str) -> Task | None:
        task = self._loaded.get(digest)
        if task is not None:
            return task
        folder = self.folder(digest)
        if folder.is_dir():
            task = load_bundle(folder)
            self._loaded[digest] = task
        return task

    def install(self, digest: str, layer: bytes) -> Task:
        """Unpack `layer` (whose digest the caller checked) as the folder of `digest`."""
        if sha256_digest(layer) != digest:
            raise TaskBundleError(f"the bundle bytes do not have digest {digest}")
        known = self.cached(digest)
        if known is not None:
            return known
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        scratch = Path(tempfile.mkdtemp(prefix=".unpack-", dir=self.root))
        try:
            unpack(layer, scratch)
            load_bundle(scratch)  # refuse before the folder becomes visible under its digest
            try:
                os.rename(scratch, self.folder(digest))
            except OSError:
                if not self.folder(digest).is_dir():  # another process won the race: fine
                    raise
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        task = load_bundle(self.folder(digest))
        self._loaded[digest] = task
        return task


class ResolvedTask(msgspec.Struct, frozen=True, kw_only=True):
    """What create needs of a task ref: the task, its canonical ref, and its bundle's digest."""

    task: Task
    ref: str
    digest: str | None  # None only where no registry is wired (create tested alone)
    source: str  # "registry" or "catalog"


class BundleMissing(UnknownTask):
    """An item names a bundle digest that the registry's blob store does not hold."""

    def __init__(self, digest: str) -> None:
        super().__init__(f"bundle {digest}")


class BundleSource:
    """Bundles by digest for create and the worker: the cache, filled from the blob store.

    Catalog bundles (shipped and ASSAY_TASK_PATHS) are packed the way `dn task push` packs,
    and their layer is stored like a pushed one the first time an item names it, so a worker
    on another machine, or with other local folders, runs exactly the bytes create saw.
    """

    def __init__(self, blobs: BlobStore, cache: BundleCache) -> None:
        self.blobs = blobs
        self.cache = cache
        self._packed: dict[Path, tuple[str, bytes]] = {}
        self._stored: set[tuple[str, str]] = set()

    def packed(self, folder: Path) -> tuple[str, bytes]:
        """(digest, layer) of a catalog bundle folder, packed once per process."""
        known = self._packed.get(folder)
        if known is None:
            layer = pack(folder)
            known = (sha256_digest(layer), layer)
            self._packed[folder] = known
        return known

    async def store_catalog_bundle(self, org_id: str, folder: Path) -> str:
        # Packing reads the folder: off the event loop, but only the first time.
        known = self._packed.get(folder)
        digest, layer = known if known is not None else await asyncio.to_thread(self.packed, folder)
        if (org_id, digest) not in self._stored:
            await self.blobs.put(org_id, digest, layer)
            self._stored.add((org_id, digest))
        return digest

    async def task(self, digest: str) -> Task:
        """The bundle of `digest`, unpacked once into the cache; BundleMissing when the blob
        store does not have it."""
        task = await asyncio.to_thread(self.cache.cached, digest)
        if task is not None:
            return task
        layer = await self.blobs.get(digest)
        if layer is None:
            raise BundleMissing(digest)
        return await asyncio.to_thread(self.cache.install, digest, layer)
