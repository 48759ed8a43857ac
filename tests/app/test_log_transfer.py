"""`assay log export` / `import`: SQLite -> PostgreSQL -> SQLite with every API answer, API key
and secret unchanged, the chains verified; a foreign key or a non-empty target is refused."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from litestar.testing import TestClient

from app.cli import main
from app.main import create_app
from infrastructure.identity.bootstrap import bootstrap
from infrastructure.settings import Settings
from tests.app.conftest import make_settings, run_identity
from tests.conftest import PgDatabases

BASE = "/api/v1/org/acme/ws/main"


def cli(*args: str, env: dict[str, str]) -> Result:
    return CliRunner().invoke(main, list(args), env=env)


def answers(settings: Settings, key: str, ids: list[str]) -> dict[str, Any]:
    """Every GET an API user or an auditor makes, by path."""
    paths = ["/evaluations"]
    for i in ids:
        paths += [f"/evaluation/{i}", f"/evaluation/{i}/items", f"/evaluation/{i}/analytics"]
        paths += [f"/evaluation/{i}/events"]
    with TestClient(create_app(settings)) as client:
        found = {}
        for path in paths:
            response = client.get(BASE + path, headers={"X-API-Key": key})
            assert response.status_code == 200, (path, response.text)
            found[path] = response.json()
        return found


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    for name in ("ASSAY_DATABASE_URL", "ASSAY_SECRET_KEY_FILE"):
        monkeypatch.delenv(name, raising=False)
    return {"ASSAY_SECRET_KEY": make_settings("sqlite://").secret_key or ""}


def sqlite_copy(template: Path, target: Path) -> str:
    target.write_bytes(template.read_bytes())
    return f"sqlite+aiosqlite:///{target}"


def test_sqlite_to_postgresql_and_back_keeps_every_answer_key_and_secret(
    tmp_path: Path,
    sqlite_template: Path,
    pg_databases: PgDatabases,
    env: dict[str, str],
) -> None:
    source = make_settings(sqlite_copy(sqlite_template, tmp_path / "source.db"))
    source = make_settings(source.database_url, secret_key=env["ASSAY_SECRET_KEY"])
    boot = run_identity(
        source,
        lambda store: bootstrap(store, org_key="acme", workspace_key="main", email="o@acme.test"),
    )
    secret = run_identity(
        source,
        lambda store: store.create_secret(boot.user.id, "OPENAI_API_KEY", "openai", "sk-très"),
    )
    with TestClient(create_app(source)) as client:
        headers = {"X-API-Key": boot.raw_key}
        ids = []
        for name in ("first ✓", "second"):
            body = {"name": name, "model": "m", "task_names": ["find-the-flag", "decode-payload"]}
            created = client.post(f"{BASE}/evaluation", json=body, headers=headers)
            assert created.status_code == 201, created.text
            ids.append(created.json()["id"])
        assert client.post(f"{BASE}/evaluation/{ids[0]}/cancel", headers=headers).is_success
    before = answers(source, boot.raw_key, ids)

    hop = source
    for step, target_url in enumerate(
        [pg_databases.new_database(), sqlite_copy(sqlite_template, tmp_path / "back.db")]
    ):
        exported = tmp_path / f"export-{step}.ndjson"
        result = cli(
            "log", "export", "--database-url", hop.database_url, "-o", str(exported), env=env
        )
        assert result.exit_code == 0, result.output
        lines = [json.loads(line) for line in exported.read_text().splitlines()]
        tables = {line["record"] for line in lines if "record" in line}
        assert {"orgs", "users", "api_keys", "secrets", "memberships"} <= tables
        secret_rows = [line["row"] for line in lines if line.get("record") == "secrets"]
        assert "sk-très" not in exported.read_text() and secret_rows[0]["ciphertext"]

        result = cli("log", "import", str(exported), "--database-url", target_url, env=env)
        assert result.exit_code == 0, result.output
        assert "chains verified, read models rebuilt" in result.stdout
        verified = cli("audit", "verify", "--database-url", target_url, env=env)
        assert verified.exit_code == 0, verified.output

        hop = make_settings(target_url, secret_key=env["ASSAY_SECRET_KEY"])
        assert answers(hop, boot.raw_key, ids) == before
        revealed = run_identity(hop, lambda store: store.reveal_secret(secret.id))
        assert revealed == "sk-très"

    again = cli("log", "import", str(exported), "--database-url", hop.database_url, env=env)
    assert again.exit_code == 1
    assert "not empty" in again.output


def test_import_with_another_secret_key_writes_nothing(
    tmp_path: Path, sqlite_template: Path, env: dict[str, str]
) -> None:
    source = make_settings(
        sqlite_copy(sqlite_template, tmp_path / "s.db"), secret_key=env["ASSAY_SECRET_KEY"]
    )
    boot = run_identity(
        source,
        lambda store: bootstrap(store, org_key="acme", workspace_key="main", email="o@acme.test"),
    )
    run_identity(source, lambda store: store.create_secret(boot.user.id, "K", "openai", "v"))
    exported = tmp_path / "export.ndjson"
    assert cli("log", "export", "--database-url", source.database_url, "-o", str(exported), env=env)
    target = sqlite_copy(sqlite_template, tmp_path / "t.db")
    other = {"ASSAY_SECRET_KEY": make_settings("sqlite://").secret_key or ""}
    refused = cli("log", "import", str(exported), "--database-url", target, env=other)
    assert refused.exit_code == 1
    assert "encrypted with another key" in refused.output
    assert cli("log", "import", str(exported), "--database-url", target, env=env).exit_code == 0


def test_import_to_postgresql_without_a_key_says_which_key_and_writes_nothing(
    tmp_path: Path, sqlite_template: Path, pg_databases: PgDatabases, env: dict[str, str]
) -> None:
    source = make_settings(
        sqlite_copy(sqlite_template, tmp_path / "s.db"), secret_key=env["ASSAY_SECRET_KEY"]
    )
    boot = run_identity(
        source,
        lambda store: bootstrap(store, org_key="acme", workspace_key="main", email="o@acme.test"),
    )
    run_identity(source, lambda store: store.create_secret(boot.user.id, "K", "openai", "v"))
    exported = tmp_path / "export.ndjson"
    assert cli("log", "export", "--database-url", source.database_url, "-o", str(exported), env=env)
    target = pg_databases.new_database()
    refused = cli("log", "import", str(exported), "--database-url", target, env={})
    assert refused.exit_code == 1
    assert "holds encrypted secrets" in refused.output and "ASSAY_SECRET_KEY" in refused.output
    assert "Traceback" not in refused.output
    assert cli("log", "import", str(exported), "--database-url", target, env=env).exit_code == 0


def test_a_filtered_export_holds_only_that_orgs_events_and_cannot_be_imported(
    tmp_path: Path, sqlite_template: Path, env: dict[str, str]
) -> None:
    source = make_settings(
        sqlite_copy(sqlite_template, tmp_path / "s.db"), secret_key=env["ASSAY_SECRET_KEY"]
    )
    keys = {}
    for org in ("acme", "beta"):
        boot = run_identity(
            source,
            lambda store, org=org: bootstrap(
                store, org_key=org, workspace_key="main", email=f"{org}@example.test"
            ),
        )
        keys[org] = boot.raw_key
    with TestClient(create_app(source)) as client:
        for org, key in keys.items():
            body = {"name": org, "model": "m", "task_names": ["find-the-flag"]}
            path = f"/api/v1/org/{org}/ws/main/evaluation"
            assert client.post(path, json=body, headers={"X-API-Key": key}).status_code == 201
    exported = tmp_path / "acme.ndjson"
    result = cli(
        "log", "export", "--org", "acme", "--database-url", source.database_url, "-o",
        str(exported), env=env,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in exported.read_text().splitlines()]
    assert [line["type"] for line in lines] == ["evaluation.created", "item.queued"]
    assert lines[0]["hash"] and lines[0]["chain_hash"]
    target = sqlite_copy(sqlite_template, tmp_path / "t.db")
    refused = cli("log", "import", str(exported), "--database-url", target, env=env)
    assert refused.exit_code == 1
    assert "import needs a full export" in refused.output


def test_an_export_edited_on_its_way_is_refused_and_nothing_is_written(
    tmp_path: Path, sqlite_template: Path, env: dict[str, str]
) -> None:
    source = make_settings(
        sqlite_copy(sqlite_template, tmp_path / "s.db"), secret_key=env["ASSAY_SECRET_KEY"]
    )
    boot = run_identity(
        source,
        lambda store: bootstrap(store, org_key="acme", workspace_key="main", email="o@acme.test"),
    )
    with TestClient(create_app(source)) as client:
        body = {"name": "e", "model": "m", "task_names": ["find-the-flag", "decode-payload"]}
        created = client.post(f"{BASE}/evaluation", json=body, headers={"X-API-Key": boot.raw_key})
        assert created.status_code == 201
    exported = tmp_path / "export.ndjson"
    assert cli("log", "export", "--database-url", source.database_url, "-o", str(exported), env=env)
    lines = exported.read_text().splitlines()
    events = [i for i, line in enumerate(lines) if '"chain_hash"' in line]
    edited = json.loads(lines[events[1]])
    edited["data"]["task_name"] = "something-else"
    lines[events[1]] = json.dumps(edited)
    exported.write_text("\n".join(lines) + "\n")

    target = sqlite_copy(sqlite_template, tmp_path / "t.db")
    refused = cli("log", "import", str(exported), "--database-url", target, env=env)
    assert refused.exit_code == 1
    assert f"broken at position {edited['position']}: changed" in refused.output
    empty = cli("log", "export", "--database-url", target, env=env)
    assert empty.exit_code == 0 and empty.stdout == ""
