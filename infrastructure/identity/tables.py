"""Identity tables (orgs, workspaces, users, memberships, keys, projects, runtimes, secrets).

Same conventions as the event store: ids are canonical UUID text, times are fixed-width
ISO-8601 UTC text. Lengths are enforced by the store before insert, because SQLite ignores
VARCHAR lengths and PostgreSQL does not: both backends must accept and refuse the same input.
Credentials live only here, never in the event log (events are forever).
"""

from __future__ import annotations

import sqlalchemy as sa

from infrastructure.db.metadata import metadata

ID = sa.String(36)
TIME = sa.String(32)
SLUG = sa.String(64)
NAME = sa.String(255)

ROLES = ("owner", "admin", "member", "viewer", "auditor")

orgs = sa.Table(
    "orgs",
    metadata,
    sa.Column("id", ID, primary_key=True),
    sa.Column("key", SLUG, nullable=False, unique=True),
    sa.Column("name", NAME, nullable=False),
    # NULL means "inherit the platform setting"; the API reports which level won.
    sa.Column("max_sandbox_runtime_seconds", sa.Integer, nullable=True),
    sa.Column("default_sandbox_runtime_seconds", sa.Integer, nullable=True),
    sa.Column("created_at", TIME, nullable=False),
    sa.Column("updated_at", TIME, nullable=False),
)

workspaces = sa.Table(
    "workspaces",
    metadata,
    sa.Column("id", ID, primary_key=True),
    sa.Column("org_id", ID, sa.ForeignKey("orgs.id"), nullable=False),
    sa.Column("key", SLUG, nullable=False),
    sa.Column("name", NAME, nullable=False),
    sa.Column("is_default", sa.Boolean, nullable=False),
    sa.Column("created_at", TIME, nullable=False),
    sa.Column("updated_at", TIME, nullable=False),
    sa.UniqueConstraint("org_id", "key", name="uq_workspaces_org_key"),
)

users = sa.Table(
    "users",
    metadata,
    sa.Column("id", ID, primary_key=True),
    # Stored lower-cased: addresses are compared case-insensitively everywhere.
    sa.Column("email", sa.String(320), nullable=False, unique=True),
    sa.Column("username", SLUG, nullable=False, unique=True),
    sa.Column("full_name", NAME, nullable=False),
    sa.Column("created_at", TIME, nullable=False),
    sa.Column("updated_at", TIME, nullable=False),
)

memberships = sa.Table(
    "memberships",
    metadata,
    sa.Column("org_id", ID, sa.ForeignKey("orgs.id"), primary_key=True),
    sa.Column("user_id", ID, sa.ForeignKey("users.id"), primary_key=True),
    sa.Column("role", sa.String(16), nullable=False),
    sa.Column("created_at", TIME, nullable=False),
    sa.CheckConstraint(f"role IN {ROLES!r}", name="role"),
    # authenticate() loads every role of one user.
    sa.Index("ix_memberships_user", "user_id"),
)

api_keys = sa.Table(
    "api_keys",
    metadata,
    sa.Column("id", ID, primary_key=True),
    sa.Column("user_id", ID, sa.ForeignKey("users.id"), nullable=False),
    sa.Column("name", NAME, nullable=False),
    # SHA-256 hex of the whole raw key. The key is 32 random bytes, so it cannot be guessed or
    # brute-forced from its hash: a fast, unsalted hash is right here (a slow password hash
    # would only add latency to every request), and it lets us look the key up by index.
    sa.Column("key_hash", sa.String(64), nullable=False, unique=True),
    # First characters of the raw key, so people can tell their keys apart in listings.
    sa.Column("prefix", sa.String(16), nullable=False),
    # NULL: the key acts in every org and workspace of its user; else only in this workspace.
    sa.Column("workspace_id", ID, sa.ForeignKey("workspaces.id"), nullable=True),
    sa.Column("created_at", TIME, nullable=False),
    sa.Column("revoked_at", TIME, nullable=True),
    # Refreshed at most every few minutes (see store.LAST_USED_RESOLUTION), not per request.
    sa.Column("last_used_at", TIME, nullable=True),
    sa.Index("ix_api_keys_user", "user_id"),
)

projects = sa.Table(
    "projects",
    metadata,
    sa.Column("id", ID, primary_key=True),
    sa.Column("workspace_id", ID, sa.ForeignKey("workspaces.id"), nullable=False),
    sa.Column("key", SLUG, nullable=False),
    sa.Column("name", NAME, nullable=False),
    sa.Column("is_default", sa.Boolean, nullable=False),
    sa.Column("created_at", TIME, nullable=False),
    sa.Column("updated_at", TIME, nullable=False),
    sa.UniqueConstraint("workspace_id", "key", name="uq_projects_workspace_key"),
)

runtimes = sa.Table(
    "runtimes",
    metadata,
    sa.Column("id", ID, primary_key=True),
    sa.Column("workspace_id", ID, sa.ForeignKey("workspaces.id"), nullable=False),
    sa.Column("name", NAME, nullable=False),
    # An OpenAI-compatible endpoint the agent talks to; NULL means the provider's default.
    sa.Column("base_url", sa.String(2048), nullable=True),
    sa.Column("created_at", TIME, nullable=False),
    sa.Column("updated_at", TIME, nullable=False),
    sa.UniqueConstraint("workspace_id", "name", name="uq_runtimes_workspace_name"),
)

secrets = sa.Table(
    "secrets",
    metadata,
    sa.Column("id", ID, primary_key=True),
    sa.Column("user_id", ID, sa.ForeignKey("users.id"), nullable=False),
    sa.Column("name", sa.String(128), nullable=False),
    sa.Column("provider", sa.String(64), nullable=False),
    # Fernet token (AES-128-CBC + HMAC-SHA256) of the value; the key is never in the database.
    sa.Column("ciphertext", sa.Text, nullable=False),
    sa.Column("masked_value", sa.String(32), nullable=False),
    sa.Column("created_at", TIME, nullable=False),
    sa.Column("updated_at", TIME, nullable=False),
    sa.UniqueConstraint("user_id", "name", name="uq_secrets_user_name"),
)

IDENTITY_TABLES = (orgs, workspaces, users, memberships, api_keys, projects, runtimes, secrets)
