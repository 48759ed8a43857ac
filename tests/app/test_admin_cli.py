"""`assay admin ...` through click's runner, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from app.cli import main
from infrastructure.db.engine import create_engine
from infrastructure.identity.records import Principal
from infrastructure.identity.store import IdentityStore


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # The PostgreSQL case would otherwise create `.assay/secret-key` in the working directory.
    monkeypatch.setenv("ASSAY_SECRET_KEY_FILE", str(tmp_path / "keys" / "secret-key"))
    monkeypatch.delenv("ASSAY_SECRET_KEY", raising=False)
    for name in ("ASSAY_DATABASE_URL", "ASSAY_HOST", "ASSAY_PORT"):
        monkeypatch.delenv(name, raising=False)


def admin(url: str, *args: str, input: str | None = None) -> Result:
    return CliRunner().invoke(main, ["admin", *args, "--database-url", url], input=input)


def ok(result: Result) -> Result:
    assert result.exit_code == 0, result.output
    return result


def clean_error(result: Result, message: str) -> None:
    assert result.exit_code == 1, result.output
    assert message in result.stderr
    assert "Traceback" not in result.output
    assert isinstance(result.exception, SystemExit)


def authenticate(url: str, raw_key: str) -> Principal | None:
    async def go() -> Principal | None:
        engine = create_engine(url)
        try:
            return await IdentityStore(engine, None).authenticate(raw_key)
        finally:
            await engine.dispose()

    return asyncio.run(go())


def bootstrap_json(url: str) -> dict[str, str]:
    result = ok(
        admin(
            url, "bootstrap", "--org", "acme", "--workspace", "main", "--email", "a@x.io", "--json"
        )
    )
    parsed: dict[str, str] = json.loads(result.stdout)
    return parsed


def test_bootstrap_json_shape_and_idempotence(database_url: str) -> None:
    first = bootstrap_json(database_url)
    second = bootstrap_json(database_url)

    assert list(first) == ["org", "workspace", "user_id", "api_key"]
    assert first["org"] == "acme" and first["workspace"] == "main"
    assert first["api_key"].startswith("assay_")
    assert second["user_id"] == first["user_id"]
    assert second["api_key"] != first["api_key"]
    for raw in (first["api_key"], second["api_key"]):
        principal = authenticate(database_url, raw)
        assert principal is not None and principal.user.id == first["user_id"]


def test_bootstrap_human_output_prints_the_client_environment(database_url: str) -> None:
    result = ok(
        admin(database_url, "bootstrap", "--org", "acme", "--workspace", "lab", "--email", "b@x.io")
    )
    # `export NAME=value` lines, so that pasting them sets the client's environment.
    exports = [line for line in result.stdout.splitlines() if line.startswith("export ")]
    env = dict(line.removeprefix("export ").split("=", 1) for line in exports)

    assert env["DREADNODE_SERVER"] == "http://127.0.0.1:8000"
    assert env["DREADNODE_ORGANIZATION"] == "acme"
    assert env["DREADNODE_WORKSPACE"] == "lab"
    assert authenticate(database_url, env["DREADNODE_API_KEY"]) is not None


def test_unknown_org_bad_slug_and_duplicates_are_clean_errors(database_url: str) -> None:
    bootstrap_json(database_url)

    clean_error(
        admin(database_url, "add-member", "--org", "nope", "--email", "a@x.io", "--role", "admin"),
        "org 'nope' not found",
    )
    clean_error(
        admin(database_url, "add-workspace", "--org", "nope", "--key", "w", "--name", "W"),
        "org 'nope' not found",
    )
    clean_error(
        admin(database_url, "add-workspace", "--org", "acme", "--key", "Bad_Slug", "--name", "W"),
        "is not a slug",
    )
    clean_error(
        admin(database_url, "add-workspace", "--org", "acme", "--key", "main", "--name", "W"),
        "already exists",
    )
    clean_error(
        admin(database_url, "create-key", "--email", "ghost@x.io"), "user 'ghost@x.io' not found"
    )
    clean_error(
        admin(
            database_url,
            "bootstrap",
            "--org",
            "Not A Slug",
            "--workspace",
            "main",
            "--email",
            "a@x.io",
        ),
        "is not a slug",
    )


def test_users_members_and_scoped_keys(database_url: str) -> None:
    boot = bootstrap_json(database_url)
    ok(
        admin(
            database_url,
            "add-user",
            "--email",
            "bob@x.io",
            "--username",
            "bob",
            "--full-name",
            "Bob",
        )
    )
    clean_error(
        admin(
            database_url, "add-user", "--email", "bob@x.io", "--username", "bob", "--full-name", "B"
        ),
        "already exists",
    )
    ok(
        admin(
            database_url, "add-member", "--org", "acme", "--email", "bob@x.io", "--role", "viewer"
        )
    )
    ok(admin(database_url, "add-workspace", "--org", "acme", "--key", "lab", "--name", "Lab"))
    created = ok(
        admin(database_url, "create-key", "--email", "bob@x.io", "--workspace", "acme/lab")
    )
    raw_key = created.stdout.strip().splitlines()[-1]

    principal = authenticate(database_url, raw_key)
    assert principal is not None
    assert principal.roles == {principal.key_org_id: "viewer"}
    assert principal.key_workspace_id is not None
    assert principal.key_workspace_id != boot["workspace"]

    listed = json.loads(
        ok(admin(database_url, "list-keys", "--email", "bob@x.io", "--json")).stdout
    )
    assert len(listed) == 1 and raw_key not in json.dumps(listed)
    assert listed[0]["prefix"] == raw_key[:12] and listed[0]["revoked_at"] is None

    ok(admin(database_url, "revoke-key", listed[0]["id"]))
    assert authenticate(database_url, raw_key) is None
    clean_error(admin(database_url, "revoke-key", "no-such-key"), "not found")
    clean_error(
        admin(database_url, "create-key", "--email", "bob@x.io", "--workspace", "acme/nope"),
        "workspace acme/nope not found",
    )


def test_projects_and_runtimes(database_url: str) -> None:
    bootstrap_json(database_url)
    result = ok(
        admin(
            database_url,
            "add-project",
            *("--org", "acme", "--workspace", "main", "--key", "web", "--name", "Web"),
        )
    )
    assert "acme/main/web" in result.stdout
    ok(
        admin(
            database_url,
            "add-runtime",
            *("--org", "acme", "--workspace", "main", "--name", "vllm"),
            *("--base-url", "http://127.0.0.1:8001/v1"),
        )
    )
    clean_error(
        admin(
            database_url,
            "add-project",
            *("--org", "acme", "--workspace", "ghost", "--key", "web", "--name", "Web"),
        ),
        "workspace acme/ghost not found",
    )


def test_secret_value_comes_from_stdin_or_a_prompt_and_is_never_printed(
    database_url: str, tmp_path: Path
) -> None:
    bootstrap_json(database_url)
    value = "sk-test-SUPERSECRET-0123456789wxyz"

    piped = ok(
        admin(
            database_url,
            *(
                "add-secret",
                "--email",
                "a@x.io",
                "--name",
                "OPENAI_API_KEY",
                "--provider",
                "openai",
            ),
            "--value-stdin",
            input=value + "\n",
        )
    )
    prompted = ok(
        admin(
            database_url,
            *("add-secret", "--email", "a@x.io", "--name", "OTHER", "--provider", "openai"),
            input=f"{value}\n{value}\n",
        )
    )

    for result in (piped, prompted):
        assert "SUPERSECRET" not in result.output
        assert "…wxyz" in result.stdout
    assert (tmp_path / "keys" / "secret-key").exists()
    clean_error(
        admin(
            database_url,
            *("add-secret", "--email", "a@x.io", "--name", "OTHER", "--provider", "openai"),
            "--value-stdin",
            input="another-value-0123",
        ),
        "already exists",
    )


def test_database_that_is_not_migrated_is_a_clean_error(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path}/empty.db"
    clean_error(admin(url, "list-keys", "--email", "a@x.io"), "assay db upgrade")


def user_of(url: str, raw_key: str) -> tuple[str, str]:
    principal = authenticate(url, raw_key)
    assert principal is not None
    return principal.user.email, principal.user.username


def test_two_orgs_each_bootstrap_an_owner_at_user(database_url: str) -> None:
    keys = []
    for org in ("alpha", "beta", "gamma"):
        result = ok(
            admin(
                database_url,
                "bootstrap",
                "--org",
                org,
                "--workspace",
                "main",
                "--email",
                f"owner@{org}.example.com",
                "--json",
            )
        )
        keys.append(json.loads(result.stdout)["api_key"])

    users = [user_of(database_url, key) for key in keys]
    assert users == [
        ("owner@alpha.example.com", "owner"),
        ("owner@beta.example.com", "owner-2"),
        ("owner@gamma.example.com", "owner-3"),
    ]


def test_add_user_without_a_username_derives_a_free_one(database_url: str) -> None:
    bootstrap_json(database_url)  # user a@x.io, username `a`

    added = ok(admin(database_url, "add-user", "--email", "a@other.example"))

    assert "username=a-2" in added.stdout
    clean_error(
        admin(database_url, "add-user", "--email", "new@x.io", "--username", "a"),
        "already exists",
    )


def test_every_sub_command_family_is_registered_under_a_name_that_says_what_it_is() -> None:
    commands = {name: command.callback.__name__ for name, command in main.commands.items()}

    assert commands == {
        "admin": "admin_commands",
        "audit": "audit_commands",
        "db": "db_commands",
        "log": "log_commands",
        "projections": "projection_commands",
        "serve": "serve_command",
        "tasks": "task_commands",
        "worker": "worker_command",
    }
