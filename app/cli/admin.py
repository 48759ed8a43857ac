"""`assay admin ...`: create the first tenant and manage users, keys, projects and secrets.

Every command opens its own engine on `--database-url`, does one thing through the identity
store and exits. Errors the operator can fix (unknown org, duplicate name, bad slug, database
not migrated) become one-line messages, never tracebacks. Credentials are read from stdin or a
hidden prompt, never from arguments: arguments end up in shell history and `ps`.
"""

from __future__ import annotations

import asyncio
import json
import shlex
import sys
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import click
import msgspec
import sqlalchemy as sa

from app.cli.checks import UPGRADE_HINT, require_migrated
from infrastructure.db.engine import create_engine
from infrastructure.db.migrate import upgrade
from infrastructure.identity.bootstrap import BootstrapResult, bootstrap
from infrastructure.identity.crypto import load_cipher
from infrastructure.identity.records import (
    ROLE_NAMES,
    IdentityError,
    NotFound,
    Org,
    User,
    Workspace,
)
from infrastructure.identity.store import IdentityStore
from infrastructure.ids import canonical_id
from infrastructure.settings import Settings

T = TypeVar("T")


@click.group("admin")
def admin_commands() -> None:
    """Orgs, workspaces, users, memberships, API keys, projects, runtimes and secrets."""


def _database_url_option(fn: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--database-url",
        # Resolved when the command runs, so ASSAY_DATABASE_URL set by a test or a shell wins.
        default=lambda: Settings.from_env().database_url,
        show_default="ASSAY_DATABASE_URL or the embedded SQLite file",
        help="Database to use (must be migrated: `assay db upgrade`).",
    )(fn)


def _run(
    database_url: str,
    action: Callable[[IdentityStore], Awaitable[T]],
    *,
    needs_cipher: bool = False,
    migrate: bool = False,
) -> T:
    """Run one store action in its own event loop and engine; turn known failures into
    one-line click errors."""

    if not migrate:
        require_migrated(database_url)

    async def go() -> T:
        cipher = None
        if needs_cipher:
            # The key file lives next to this database (or where ASSAY_SECRET_KEY_FILE says),
            # the same place the server looks, so both encrypt with one key.
            settings = msgspec.structs.replace(Settings.from_env(), database_url=database_url)
            cipher = load_cipher(settings)
        if migrate:
            await upgrade(database_url)
        engine = create_engine(database_url)
        try:
            return await action(IdentityStore(engine, cipher))
        finally:
            await engine.dispose()

    try:
        return asyncio.run(go())
    except (IdentityError, ValueError) as exc:
        raise click.ClickException(str(exc)) from None
    except sa.exc.DBAPIError as exc:
        # Only the driver's first line: the full message repeats SQL and bound parameters.
        first_line = str(exc.orig).strip().splitlines()[0] if exc.orig else type(exc).__name__
        raise click.ClickException(
            f"database error: {first_line} (is the database reachable?); {UPGRADE_HINT}"
        ) from None
    except OSError as exc:
        raise click.ClickException(f"cannot reach the database: {exc.strerror or exc}") from None


async def _user(store: IdentityStore, email: str) -> User:
    user = await store.get_user_by_email(email)
    if user is None:
        raise NotFound(f"user {email!r}")
    return user


async def _org(store: IdentityStore, key: str) -> Org:
    org = await store.get_org_by_key(key)
    if org is None:
        raise NotFound(f"org {key!r}")
    return org


async def _workspace(store: IdentityStore, org_key: str, key: str) -> Workspace:
    org = await _org(store, org_key)
    workspace = await store.get_workspace(org.id, key)
    if workspace is None:
        raise NotFound(f"workspace {org_key}/{key}")
    return workspace


def _server_url() -> str:
    settings = Settings.from_env()
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "::", "") else settings.host
    return f"http://{host}:{settings.port}"


# -- bootstrap ---------------------------------------------------------------------------


@admin_commands.command("bootstrap")
@click.option("--org", "org_key", required=True, help="Org slug, e.g. acme.")
@click.option("--workspace", "workspace_key", required=True, help="Workspace slug, e.g. main.")
@click.option("--email", required=True, help="The owner's email address.")
@click.option(
    "--username",
    default=None,
    help="Default: the email's local part, with a numeric suffix when taken (owner-2).",
)
@click.option("--full-name", default=None, help="Default: the username.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of text.")
@_database_url_option
def bootstrap_command(
    org_key: str,
    workspace_key: str,
    email: str,
    username: str | None,
    full_name: str | None,
    as_json: bool,
    database_url: str,
) -> None:
    """Create the org, workspace, owner and membership if missing, and print a NEW API key.

    Migrates the database first. Safe to run again: only the key is new each time (keys are
    shown once, so an old one cannot be printed again).
    """
    result: BootstrapResult = _run(
        database_url,
        lambda store: bootstrap(
            store, org_key, workspace_key, email, username=username, full_name=full_name
        ),
        migrate=True,
    )
    if as_json:
        click.echo(
            json.dumps(
                {
                    "org": result.org.key,
                    "workspace": result.workspace.key,
                    "user_id": result.user.id,
                    "api_key": result.raw_key,
                }
            )
        )
        return

    def state(what: str) -> str:
        return "created" if what in result.created else "exists"

    click.echo(f"org        {result.org.key} ({state('org')})")
    click.echo(f"workspace  {result.org.key}/{result.workspace.key} ({state('workspace')})")
    click.echo(f"user       {result.user.email} id={result.user.id} ({state('user')})")
    click.echo(f"role       {result.membership.role} ({state('membership')})")
    click.echo(f"api key    id={result.api_key.id} (new; shown once, store it now)")
    click.echo(result.raw_key)
    click.echo("\nPoint the dn client at this service (paste into your shell):")
    for name, value in (
        ("DREADNODE_SERVER", _server_url()),
        ("DREADNODE_API_KEY", result.raw_key),
        ("DREADNODE_ORGANIZATION", result.org.key),
        ("DREADNODE_WORKSPACE", result.workspace.key),
    ):
        click.echo(f"export {name}={shlex.quote(value)}")


# -- users, members, keys ----------------------------------------------------------------


@admin_commands.command("add-user")
@click.option("--email", required=True)
@click.option(
    "--username",
    default=None,
    help="Default: the email's local part, with a numeric suffix when taken (owner-2).",
)
@click.option("--full-name", default=None, help="Default: the username.")
@_database_url_option
def add_user(email: str, username: str | None, full_name: str | None, database_url: str) -> None:
    """Create a user (no org yet: see add-member)."""
    user = _run(database_url, lambda store: store.create_user(email, username, full_name))
    click.echo(f"user {user.email} username={user.username} id={user.id}")


@admin_commands.command("add-member")
@click.option("--org", "org_key", required=True)
@click.option("--email", required=True)
@click.option("--role", required=True, type=click.Choice(ROLE_NAMES))
@_database_url_option
def add_member(org_key: str, email: str, role: str, database_url: str) -> None:
    """Give a user a role in an org (replaces the role they had)."""

    async def action(store: IdentityStore) -> None:
        org = await _org(store, org_key)
        user = await _user(store, email)
        await store.add_membership(org.id, user.id, role)

    _run(database_url, action)
    click.echo(f"{email} is {role} of {org_key}")


@admin_commands.command("create-key")
@click.option("--email", required=True)
@click.option(
    "--workspace", "scope", default=None, metavar="ORG/WS", help="Only valid in this workspace."
)
@click.option("--name", default="cli", show_default=True)
@_database_url_option
def create_key(email: str, scope: str | None, name: str, database_url: str) -> None:
    """Issue an API key for a user and print it (shown once)."""
    if scope is not None and scope.count("/") != 1:
        raise click.BadParameter("expected ORG/WS", param_hint="--workspace")

    async def action(store: IdentityStore) -> tuple[str, str]:
        user = await _user(store, email)
        workspace_id = None
        if scope is not None:
            org_key, ws_key = scope.split("/")
            workspace_id = (await _workspace(store, org_key, ws_key)).id
        info, raw_key = await store.create_api_key(user.id, name, workspace_id)
        return info.id, raw_key

    key_id, raw_key = _run(database_url, action)
    click.echo(f"api key id={key_id} for {email}{f' (only {scope})' if scope else ''}")
    click.echo(raw_key)


@admin_commands.command("revoke-key")
@click.argument("key_id")
@_database_url_option
def revoke_key(key_id: str, database_url: str) -> None:
    """Revoke an API key by id (see list-keys); it stops working at once (servers may cache
    it for ASSAY_AUTH_CACHE_SECONDS)."""
    # An id typed in upper case is the same id (ids are stored in canonical form).
    info = _run(database_url, lambda store: store.revoke_api_key(canonical_id(key_id) or key_id))
    click.echo(f"revoked {info.id} ({info.prefix}…) at {info.revoked_at}")


@admin_commands.command("list-keys")
@click.option("--email", required=True)
@click.option("--json", "as_json", is_flag=True)
@_database_url_option
def list_keys(email: str, as_json: bool, database_url: str) -> None:
    """A user's API keys: id, prefix, scope and state (never the key)."""

    async def action(store: IdentityStore) -> list[Any]:
        return await store.list_api_keys((await _user(store, email)).id)

    keys = _run(database_url, action)
    if as_json:
        click.echo(msgspec.json.encode(keys).decode())
        return
    for key in keys:
        state = f"revoked {key.revoked_at}" if key.revoked_at else "active"
        scope = f"workspace={key.workspace_id}" if key.workspace_id else "all workspaces"
        used = key.last_used_at or "never"
        click.echo(
            f"{key.id}  {key.prefix}…  {key.name}  {scope}  created {key.created_at}  "
            f"last used {used}  {state}"
        )


# -- workspaces, projects, runtimes ------------------------------------------------------


@admin_commands.command("add-workspace")
@click.option("--org", "org_key", required=True)
@click.option("--key", required=True, help="Workspace slug.")
@click.option("--name", required=True)
@click.option("--default", "is_default", is_flag=True, help="Make it the org's default.")
@_database_url_option
def add_workspace(org_key: str, key: str, name: str, is_default: bool, database_url: str) -> None:
    """Create a workspace (with its `default` project) in an org."""

    async def action(store: IdentityStore) -> Workspace:
        org = await _org(store, org_key)
        return await store.create_workspace(org.id, key, name, is_default)

    workspace = _run(database_url, action)
    click.echo(f"workspace {org_key}/{workspace.key} id={workspace.id}")


@admin_commands.command("add-project")
@click.option("--org", "org_key", required=True)
@click.option("--workspace", "workspace_key", required=True)
@click.option("--key", required=True, help="Project slug.")
@click.option("--name", required=True)
@_database_url_option
def add_project(org_key: str, workspace_key: str, key: str, name: str, database_url: str) -> None:
    """Create a project in a workspace."""

    async def action(store: IdentityStore) -> Any:
        workspace = await _workspace(store, org_key, workspace_key)
        return await store.create_project(workspace.id, key, name)

    project = _run(database_url, action)
    click.echo(f"project {org_key}/{workspace_key}/{project.key} id={project.id}")


@admin_commands.command("add-runtime")
@click.option("--org", "org_key", required=True)
@click.option("--workspace", "workspace_key", required=True)
@click.option("--name", required=True)
@click.option("--base-url", default=None, help="OpenAI-compatible endpoint for the agent.")
@_database_url_option
def add_runtime(
    org_key: str, workspace_key: str, name: str, base_url: str | None, database_url: str
) -> None:
    """Register a runtime (where the agent's model is served) in a workspace."""

    async def action(store: IdentityStore) -> Any:
        workspace = await _workspace(store, org_key, workspace_key)
        return await store.create_runtime(workspace.id, name, base_url)

    runtime = _run(database_url, action)
    click.echo(f"runtime {runtime.name} id={runtime.id}")


# -- secrets -----------------------------------------------------------------------------


@admin_commands.command("add-secret")
@click.option("--email", required=True, help="The user who owns (and may use) the secret.")
@click.option("--name", required=True, help="What `dn ... --secret NAME` refers to.")
@click.option("--provider", required=True, help="e.g. openai, anthropic.")
@click.option("--value-stdin", is_flag=True, help="Read the value from stdin (else a prompt).")
@_database_url_option
def add_secret(email: str, name: str, provider: str, value_stdin: bool, database_url: str) -> None:
    """Store a secret value, encrypted. There is deliberately no --value option."""
    value: str
    if value_stdin:
        # One trailing newline is how `echo` and here-strings end; it is not part of the value.
        value = sys.stdin.read().removesuffix("\n").removesuffix("\r")
    else:
        value = click.prompt("Secret value", hide_input=True, confirmation_prompt=True)

    async def action(store: IdentityStore) -> Any:
        user = await _user(store, email)
        return await store.create_secret(user.id, name, provider, value)

    info = _run(database_url, action, needs_cipher=True)
    click.echo(f"secret {info.name} ({info.provider}) {info.masked_value} id={info.id}")
