"""Settings read from the environment once, at start-up (every variable is ASSAY_*)."""

from __future__ import annotations

import os
from pathlib import Path

import msgspec

from infrastructure.sandbox.local.principals import parse_uid_range

DEFAULT_DATABASE_URL = "sqlite+aiosqlite:///./assay.db"
# Decoders recurse per JSON level and Python's stack allows about 1000: a configured depth
# limit must stay well below that to keep deep bodies from ever reaching a decoder.
MAX_JSON_DEPTH_CEILING = 512


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    database_url: str = DEFAULT_DATABASE_URL
    host: str = "127.0.0.1"
    port: int = 8000
    # Requests per minute per API key; 0 turns rate limiting off.
    rate_limit: int = 600
    # Largest accepted request body, in bytes.
    max_body_bytes: int = 1_048_576
    # Deepest nesting of arrays and objects a JSON body may have (deeper: 400, never decoded).
    max_json_depth: int = 64
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
    # Seconds a server keeps an evaluation view or a list page in memory at most. Its own
    # writes update them at once, other processes' appends within view_tail_seconds; 0 turns
    # caching off.
    view_cache_seconds: float = 5.0
    view_tail_seconds: float = 0.2
    # Largest blob the task registry accepts in one upload request (a task bundle layer).
    max_blob_bytes: int = 64 * 1024 * 1024
    # Where bundles are unpacked by digest (what create validates and the worker runs).
    bundle_cache: str = ".assay/bundles"
    # Live streams (server-sent events): a `: keep-alive` comment every this many seconds; a
    # subscriber this many events behind is dropped (it resumes with Last-Event-ID); the
    # tailer reads other processes' appends every live_poll_seconds.
    sse_heartbeat_seconds: float = 15.0
    sse_queue_limit: int = 5000
    live_poll_seconds: float = 0.05
    # Bearer token `GET /metrics` requires; unset: the metrics are open (bind to a private net).
    metrics_token: str | None = None
    # After SIGTERM a worker claims nothing more and lets running items finish this long, then
    # hands the rest back to the queue at once for another worker.
    shutdown_grace_seconds: float = 30.0
    # Secret that encrypts the dashboard's session cookies and signs its CSRF tokens; when
    # unset, a random one per process (sign-ins then end when the server restarts).
    web_secret: str | None = None
    # Mark the dashboard's cookies Secure (set when the server is reached over HTTPS).
    web_secure_cookies: bool = False

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
            ("max_json_depth", int),
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
            ("sse_heartbeat_seconds", float),
            ("sse_queue_limit", int),
            ("live_poll_seconds", float),
            ("metrics_token", str),
            ("shutdown_grace_seconds", float),
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
        raw_web_secret = get("WEB_SECRET")
        if raw_web_secret is not None:
            values["web_secret"] = raw_web_secret
        raw_secure = get("WEB_SECURE_COOKIES")
        if raw_secure is not None:
            values["web_secure_cookies"] = raw_secure.lower() in ("1", "true", "yes")
        raw_paths = get("TASK_PATHS")
        if raw_paths is not None:
            values["task_paths"] = tuple(p for p in raw_paths.split(os.pathsep) if p)
        settings = cls(**values)  # type: ignore[arg-type]
        if settings.sandbox_isolation not in ("strict", "weak"):
            raise ValueError(
                f"ASSAY_SANDBOX_ISOLATION={settings.sandbox_isolation!r}: use strict or weak"
            )
        parse_uid_range(settings.sandbox_uids)
        if not 1 <= settings.max_json_depth <= MAX_JSON_DEPTH_CEILING:
            raise ValueError(
                f"ASSAY_MAX_JSON_DEPTH={settings.max_json_depth}: use 1 to {MAX_JSON_DEPTH_CEILING}"
            )
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
