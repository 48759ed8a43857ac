"""Settings read from the environment once, at start-up (every variable is ASSAY_*)."""

from __future__ import annotations

import os
from pathlib import Path

import msgspec

from infrastructure.sandbox.local.principals import parse_uid_range

DEFAULT_DATABASE_URL = "sqlite+aiosqlite:///./assay.db"


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    database_url: str = DEFAULT_DATABASE_URL
    host: str = "127.0.0.1"
    port: int = 8000
    # Requests per minute per API key; 0 turns rate limiting off.
    rate_limit: int = 600
    # Largest accepted request body, in bytes.
    max_body_bytes: int = 1_048_576
    # Oldest `dreadnode-sdk/<version>` user agent accepted; older ones get 426.
    min_client_version: str = "2.0.0"
    default_task_timeout_sec: int = 1800
    default_max_retries: int = 2
    # os.pathsep-separated folders of extra task bundles, beside the shipped `tasks/`.
    task_paths: tuple[str, ...] = ()
    # Fernet key (urlsafe base64, 32 bytes) that encrypts secret values at rest. When unset,
    # a key file next to a SQLite database is created on first start (embedded default).
    secret_key: str | None = None
    secret_key_file: str | None = None
    # Where the service keeps files of its own (the generated secret key). Default: `.assay/`
    # beside a SQLite database file, else `.assay/` in the working directory.
    data_dir: str | None = None
    log_level: str = "INFO"
    log_json: bool = True
    # Seconds an authenticated API key stays cached in a server process; a revoked key stops
    # working within this bound.
    auth_cache_seconds: float = 2.0
    # Item slots of the worker that `assay serve` runs in-process; 0 runs none.
    workers: int = 4
    # A worker renews its items' leases every third of this; an item whose lease lapses
    # (its worker died) is taken back and retried.
    lease_seconds: float = 30.0
    # How often an idle worker looks for work made by other processes.
    poll_seconds: float = 0.5
    # First backoff of an automatic infra_error retry; doubles with each retry.
    retry_backoff_seconds: float = 2.0
    # Where the local sandbox provider makes its per-item directories.
    sandbox_root: str = ".assay/sandboxes"
    # strict: every sandbox principal in a bubblewrap view of its own (refused where the host
    # cannot give one); weak: namespaces and rlimits only, opted into and recorded as weak.
    sandbox_isolation: str = "strict"
    # Host uids a root worker gives sandbox principals, one per live view (FIRST-LAST).
    sandbox_uids: str = "200000-299999"
    # Strict sandboxes a worker starts ahead of its items: -1 as many as its slots, 0 none.
    sandbox_warm: int = -1
    # OpenAI-compatible endpoint of the `openai` agent when the evaluation names no runtime.
    openai_base_url: str | None = None
    default_max_steps: int = 30
    # Seconds a server keeps an evaluation view in memory. Its own writes and (within
    # view_tail_seconds) every other process's appends evict it sooner; 0 turns caching off.
    view_cache_seconds: float = 5.0
    view_tail_seconds: float = 0.2
    # Largest blob the task registry accepts in one upload request (a task bundle layer).
    max_blob_bytes: int = 64 * 1024 * 1024
    # Where bundles are unpacked by digest (what create validates and the worker runs).
    bundle_cache: str = ".assay/bundles"

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> Settings:
        env = dict(os.environ if environ is None else environ)

        def get(name: str) -> str | None:
            value = env.get(f"ASSAY_{name}")
            return value if value not in (None, "") else None

        values: dict[str, object] = {}
        for field, convert in (
            ("database_url", str),
            ("host", str),
            ("port", int),
            ("rate_limit", int),
            ("max_body_bytes", int),
            ("min_client_version", str),
            ("default_task_timeout_sec", int),
            ("default_max_retries", int),
            ("secret_key", str),
            ("secret_key_file", str),
            ("data_dir", str),
            ("log_level", str),
            ("auth_cache_seconds", float),
            ("workers", int),
            ("lease_seconds", float),
            ("poll_seconds", float),
            ("retry_backoff_seconds", float),
            ("sandbox_root", str),
            ("sandbox_isolation", str),
            ("sandbox_uids", str),
            ("sandbox_warm", int),
            ("openai_base_url", str),
            ("default_max_steps", int),
            ("view_cache_seconds", float),
            ("view_tail_seconds", float),
            ("max_blob_bytes", int),
            ("bundle_cache", str),
        ):
            raw = get(field.upper())
            if raw is not None:
                try:
                    values[field] = convert(raw)
                except ValueError as exc:
                    raise ValueError(
                        f"ASSAY_{field.upper()}={raw!r} is not a valid {convert.__name__}"
                    ) from exc
        raw_json = get("LOG_JSON")
        if raw_json is not None:
            values["log_json"] = raw_json.lower() not in ("0", "false", "no")
        raw_paths = get("TASK_PATHS")
        if raw_paths is not None:
            values["task_paths"] = tuple(p for p in raw_paths.split(os.pathsep) if p)
        settings = cls(**values)  # type: ignore[arg-type]
        if settings.sandbox_isolation not in ("strict", "weak"):
            raise ValueError(
                f"ASSAY_SANDBOX_ISOLATION={settings.sandbox_isolation!r}: use strict or weak"
            )
        parse_uid_range(settings.sandbox_uids)
        return settings

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    def sqlite_path(self) -> Path | None:
        """The SQLite database file, or None (PostgreSQL, or an in-memory database)."""
        if self.is_sqlite and ":///" in self.database_url:
            db_path = self.database_url.split(":///", 1)[1].split("?", 1)[0]
            if db_path and db_path != ":memory:":
                return Path(db_path)
        return None

    def resolved_data_dir(self) -> Path:
        """ASSAY_DATA_DIR, else `.assay/` beside the SQLite file, else `.assay/` here."""
        if self.data_dir:
            return Path(self.data_dir)
        db_file = self.sqlite_path()
        if db_file is not None:
            return db_file.parent / ".assay"
        return Path(".assay")

    def resolved_secret_key_file(self) -> Path:
        """Where the embedded default keeps its generated encryption key."""
        if self.secret_key_file:
            return Path(self.secret_key_file)
        return self.resolved_data_dir() / "secret-key"

    def legacy_secret_key_file(self) -> Path | None:
        """Where releases before the data directory wrote the key: `<database>.secret-key`
        beside a SQLite file (in a repository checkout, its root, not ignored by git)."""
        db_file = self.sqlite_path()
        return None if db_file is None else db_file.with_suffix(".secret-key")
