"""First-hour papercuts of the `assay` command: a database that is not migrated, a missing
key on PostgreSQL, where the generated secret key lives."""

from __future__ import annotations

import os
import stat
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog.testing
from click.testing import CliRunner, Result
from cryptography.fernet import Fernet

from app.cli import main
from infrastructure.identity.crypto import load_cipher
from infrastructure.settings import Settings
from tests.app.dn_client import assay_command
from tests.conftest import PgDatabases

HINT = "run: assay db upgrade"
# Every command that reads or writes the database, with the arguments it needs to get there.
COMMANDS = [
    ["admin", "list-keys", "--email", "a@x.io"],
    ["admin", "add-user", "--email", "a@x.io", "--username", "a", "--full-name", "A"],
    ["admin", "create-key", "--email", "a@x.io"],
    ["admin", "add-member", "--org", "o", "--email", "a@x.io", "--role", "viewer"],
    ["admin", "add-workspace", "--org", "o", "--key", "w", "--name", "W"],
    ["admin", "add-runtime", "--org", "o", "--workspace", "w", "--name", "r"],
    ["admin", "revoke-key", "k"],
    ["projections", "verify"],
    ["projections", "rebuild"],
    ["worker", "--slots", "1"],
    ["serve"],
]


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in list(os.environ):
        if name.startswith("ASSAY_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("ASSAY_SECRET_KEY", Fernet.generate_key().decode())


@pytest.fixture(params=["missing-sqlite-file", "empty-sqlite-file", "empty-postgresql"])
def unmigrated_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "missing-sqlite-file":
        yield f"sqlite+aiosqlite:///{tmp_path}/nothing-here.db"
    elif request.param == "empty-sqlite-file":
        (tmp_path / "empty.db").write_bytes(b"")
        yield f"sqlite+aiosqlite:///{tmp_path}/empty.db"
    else:
        dbs: PgDatabases = request.getfixturevalue("pg_databases")
        name = f"assay_empty_{uuid.uuid4().hex[:10]}"
        import asyncio

        asyncio.run(dbs._exec(f'CREATE DATABASE "{name}"'))
        dbs.created.append(name)
        yield dbs.url_for(name)


def run(args: list[str], url: str, monkeypatch: pytest.MonkeyPatch) -> Result:
    monkeypatch.setenv("ASSAY_DATABASE_URL", url)
    return CliRunner().invoke(main, args)


@pytest.mark.parametrize("args", COMMANDS, ids=lambda a: " ".join(a[:2]))
def test_every_command_on_an_unmigrated_database_says_run_assay_db_upgrade_in_one_line(
    args: list[str], unmigrated_url: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    result = run(args, unmigrated_url, monkeypatch)

    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: ") and lines[0].endswith(HINT)
    assert "Traceback" not in result.output
    # Looking did not create the database it reports missing.
    assert not (tmp_path / "nothing-here.db").exists()


def test_projections_verify_outside_the_repository_is_one_line_not_a_traceback(
    tmp_path: Path,
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ASSAY_")}
    done = subprocess.run(
        [*assay_command(), "projections", "verify"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        f"Error: there is no database at {tmp_path.resolve() / 'assay.db'}; {HINT}"
    ]
    assert list(tmp_path.iterdir()) == []


def test_a_database_behind_the_code_says_which_revision_and_the_same_hint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path}/old.db"
    assert (
        CliRunner()
        .invoke(main, ["db", "upgrade", "--database-url", url, "--revision", "0001"])
        .exit_code
        == 0
    )

    result = run(["projections", "verify"], url, monkeypatch)

    assert result.exit_code == 1
    assert "revision 0001" in result.stderr
    assert result.stderr.strip().endswith(HINT)


@pytest.mark.parametrize("command", [["serve"], ["worker", "--slots", "1"]])
def test_postgresql_without_a_secret_key_stops_at_start_in_one_line(
    command: list[str], pg_databases: PgDatabases, tmp_path: Path
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ASSAY_")}
    env["ASSAY_DATABASE_URL"] = pg_databases.new_database()
    done = subprocess.run(
        [*assay_command(), *command],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert done.returncode == 1, done.stderr
    [line] = done.stderr.strip().splitlines()
    assert line.startswith("Error: ASSAY_SECRET_KEY is not set")
    assert "Fernet.generate_key()" in line
    assert list(tmp_path.iterdir()) == []  # and no key file was made up in its place


def test_the_generated_key_lives_in_the_data_directory_beside_the_database(
    tmp_path: Path,
) -> None:
    settings = Settings(database_url=f"sqlite+aiosqlite:///{tmp_path}/assay.db")

    token = load_cipher(settings).encrypt(b"hello")

    key_file = tmp_path / ".assay" / "secret-key"
    assert settings.resolved_secret_key_file() == key_file
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(key_file.parent.stat().st_mode) == 0o700
    assert not (tmp_path / "assay.secret-key").exists()
    assert load_cipher(settings).decrypt(token) == b"hello"


def test_assay_data_dir_moves_the_key(tmp_path: Path) -> None:
    settings = Settings.from_env(
        {
            "ASSAY_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/assay.db",
            "ASSAY_DATA_DIR": str(tmp_path / "state"),
        }
    )
    load_cipher(settings)
    assert (tmp_path / "state" / "secret-key").exists()


def test_a_key_file_in_the_old_place_is_still_used_with_a_warning_naming_the_new_one(
    tmp_path: Path,
) -> None:
    old_key = Fernet.generate_key()
    (tmp_path / "assay.secret-key").write_bytes(old_key + b"\n")
    settings = Settings(database_url=f"sqlite+aiosqlite:///{tmp_path}/assay.db")

    with structlog.testing.capture_logs() as logs:
        cipher = load_cipher(settings)

    assert Fernet(old_key).decrypt(cipher.encrypt(b"x")) == b"x"
    assert not (tmp_path / ".assay" / "secret-key").exists()  # no second key made up
    [warning] = [e for e in logs if e["event"] == "secret_key_file_in_old_place"]
    assert warning["log_level"] == "warning"
    assert warning["found"] == str(tmp_path / "assay.secret-key")
    assert warning["move_to"] == str(tmp_path / ".assay" / "secret-key")


def test_the_repository_ignores_the_data_directory() -> None:
    root = Path(__file__).resolve().parents[2]
    ignored = subprocess.run(
        ["git", "check-ignore", "-q", ".assay/secret-key"], cwd=root, check=False
    )
    assert ignored.returncode == 0
