"""Identity store conformance: every storage test runs on SQLite and on PostgreSQL."""

from __future__ import annotations

import hashlib
import stat
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
import sqlalchemy as sa
from cryptography.fernet import Fernet
from sqlalchemy.ext.asyncio import AsyncEngine

from infrastructure.db.metadata import metadata
from infrastructure.identity.bootstrap import bootstrap
from infrastructure.identity.crypto import load_cipher, mask_value
from infrastructure.identity.records import (
    AlreadyExists,
    IdentityError,
    InvalidValue,
    NotFound,
    Principal,
    SecretInfo,
    User,
)
from infrastructure.identity.store import IdentityStore
from infrastructure.settings import Settings


@pytest.fixture
def cipher() -> Fernet:
    return Fernet(Fernet.generate_key())


@pytest.fixture
def store(engine: AsyncEngine, cipher: Fernet) -> IdentityStore:
    return IdentityStore(engine, cipher)


async def _tenant(store: IdentityStore) -> tuple[str, str, str]:
    """An org with one workspace and an owner: (org_id, workspace_id, user_id)."""
    org = await store.create_org("acme", "Acme")
    ws = await store.create_workspace(org.id, "main", "Main", is_default=True)
    user = await store.create_user("Owner@Example.com", "owner", "O. Wner")
    await store.add_membership(org.id, user.id, "owner")
    return org.id, ws.id, user.id


async def _all_text(engine: AsyncEngine) -> list[str]:
    """Every value of every column of every table, as text."""
    values: list[str] = []
    async with engine.connect() as conn:
        for table in metadata.sorted_tables:
            for row in await conn.execute(sa.select(table)):
                values.extend(str(value) for value in row if value is not None)
    return values


def _sqlite_files(database_url: str) -> list[bytes]:
    if not database_url.startswith("sqlite"):
        return []
    db = Path(database_url.split(":///", 1)[1])
    return [p.read_bytes() for p in (db, Path(f"{db}-wal")) if p.exists()]


# -- API keys ----------------------------------------------------------------------------


async def test_api_key_is_shown_once_and_only_its_hash_is_stored(
    store: IdentityStore, engine: AsyncEngine, database_url: str
) -> None:
    _, _, user_id = await _tenant(store)
    info, raw_key = await store.create_api_key(user_id, "laptop")

    assert raw_key.startswith("assay_") and len(raw_key) >= 6 + 43
    assert info.prefix == raw_key[:12]
    assert raw_key not in repr(info)
    assert all(raw_key not in value for value in await _all_text(engine))
    assert all(raw_key.encode() not in blob for blob in _sqlite_files(database_url))
    async with engine.connect() as conn:
        stored = (await conn.execute(sa.text("SELECT key_hash FROM api_keys"))).scalar_one()
    assert stored == hashlib.sha256(raw_key.encode()).hexdigest()
    # Listings never carry the key or its hash.
    listed = await store.list_api_keys(user_id)
    assert [k.id for k in listed] == [info.id]
    assert stored not in repr(listed)


async def test_authenticate_returns_the_principal_with_roles(store: IdentityStore) -> None:
    org_id, ws_id, user_id = await _tenant(store)
    _, raw_key = await store.create_api_key(user_id, "laptop")

    principal = await store.authenticate(raw_key)

    assert principal is not None
    assert principal.user.id == user_id
    assert principal.user.email == "owner@example.com"
    assert principal.roles == {org_id: "owner"}
    assert principal.key_workspace_id is None
    assert principal.can_read(org_id, ws_id) and principal.can_create(org_id, ws_id)
    keys = await store.list_api_keys(user_id)
    assert keys[0].last_used_at is not None


async def test_unknown_malformed_and_revoked_keys_fail(store: IdentityStore) -> None:
    _, _, user_id = await _tenant(store)
    info, raw_key = await store.create_api_key(user_id, "laptop")
    assert await store.authenticate(raw_key) is not None

    assert await store.authenticate("assay_" + "x" * 43) is None
    assert await store.authenticate("not-a-key") is None
    assert await store.authenticate("") is None
    assert await store.authenticate("assay_" + "x" * 10_000) is None

    revoked = await store.revoke_api_key(info.id)
    assert revoked.revoked_at is not None
    assert await store.authenticate(raw_key) is None
    # Revoking again keeps the first revocation time.
    assert (await store.revoke_api_key(info.id)).revoked_at == revoked.revoked_at
    with pytest.raises(NotFound):
        await store.revoke_api_key("00000000-0000-0000-0000-000000000000")


async def test_workspace_scoped_key_cannot_read_another_workspace(store: IdentityStore) -> None:
    org_id, ws_id, user_id = await _tenant(store)
    other_ws = await store.create_workspace(org_id, "other", "Other")
    other_org = await store.create_org("globex", "Globex")
    other_org_ws = await store.create_workspace(other_org.id, "main", "Main")
    await store.add_membership(other_org.id, user_id, "admin")
    _, scoped = await store.create_api_key(user_id, "ci", workspace_id=ws_id)

    principal = await store.authenticate(scoped)

    assert principal is not None
    assert principal.key_workspace_id == ws_id and principal.key_org_id == org_id
    assert principal.can_read(org_id, ws_id) and principal.can_create(org_id, ws_id)
    assert not principal.can_read(org_id, other_ws.id)
    assert not principal.can_create(org_id, other_ws.id)
    assert not principal.can_manage(org_id, other_ws.id, user_id)
    # The user's other memberships do not travel with a key scoped elsewhere.
    assert principal.roles == {org_id: "owner"}
    assert not principal.can_read_org(other_org.id)
    assert not principal.can_read(other_org.id, other_org_ws.id)


async def test_key_for_unknown_user_or_workspace_is_refused(store: IdentityStore) -> None:
    _, _, user_id = await _tenant(store)
    with pytest.raises(NotFound):
        await store.create_api_key("00000000-0000-0000-0000-000000000000", "x")
    with pytest.raises(NotFound):
        await store.create_api_key(user_id, "x", "00000000-0000-0000-0000-000000000000")


# -- roles -------------------------------------------------------------------------------


def _principal(roles: dict[str, str], key_workspace_id: str | None = None) -> Principal:
    user = User(id="u1", email="u@x.io", username="u", full_name="U", created_at="", updated_at="")
    return Principal(user=user, roles=roles, key_id="k", key_workspace_id=key_workspace_id)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("role", "creates", "manages_own", "manages_others"),
    [
        ("owner", True, True, True),
        ("admin", True, True, True),
        ("member", True, True, False),
        ("viewer", False, False, False),
        (None, False, False, False),
    ],
)
def test_role_rules(
    role: str | None, creates: bool, manages_own: bool, manages_others: bool
) -> None:
    principal = _principal({} if role is None else {"o1": role})

    assert principal.role_in("o1") == role
    assert principal.can_read("o1", "w1") is (role is not None)
    assert principal.can_create("o1", "w1") is creates
    assert principal.can_manage("o1", "w1", created_by="u1") is manages_own
    assert principal.can_manage("o1", "w1", created_by="someone-else") is manages_others
    assert principal.can_manage("o1", "w1", created_by=None) is manages_others
    # Nothing reaches into an org the principal is not a member of.
    assert not principal.can_read("o2", "w1")


def test_scoped_key_denies_everything_outside_its_workspace() -> None:
    principal = _principal({"o1": "owner"}, key_workspace_id="w1")
    assert principal.can_manage("o1", "w1", created_by="x")
    assert not principal.can_read("o1", "w2")
    assert not principal.can_create("o1", "w2")
    assert not principal.can_manage("o1", "w2", created_by="u1")


async def test_membership_is_an_upsert(store: IdentityStore) -> None:
    org_id, _, user_id = await _tenant(store)
    changed = await store.add_membership(org_id, user_id, "viewer")
    assert changed.role == "viewer"
    assert (await store.get_membership(org_id, user_id)) == changed
    with pytest.raises(InvalidValue):
        await store.add_membership(org_id, user_id, "superuser")
    with pytest.raises(NotFound):
        await store.add_membership("00000000-0000-0000-0000-000000000000", user_id, "member")


# -- secrets -----------------------------------------------------------------------------


async def test_secret_is_encrypted_at_rest_and_decrypts(
    store: IdentityStore, engine: AsyncEngine, database_url: str
) -> None:
    _, _, user_id = await _tenant(store)
    value = "sk-proj-VERYSECRETvalue-0123456789abcd"

    info = await store.create_secret(user_id, "OPENAI_API_KEY", "openai", value)

    assert info.masked_value == "…abcd"
    assert "value" not in SecretInfo.__struct_fields__
    assert value not in repr(info)
    assert all(value not in text for text in await _all_text(engine))
    assert all(value.encode() not in blob for blob in _sqlite_files(database_url))
    assert all(b"VERYSECRET" not in blob for blob in _sqlite_files(database_url))
    assert await store.reveal_secret(info.id) == value
    assert await store.list_secrets(user_id) == [info]


async def test_secret_under_another_key_is_an_error_without_the_value(
    store: IdentityStore, engine: AsyncEngine
) -> None:
    _, _, user_id = await _tenant(store)
    info = await store.create_secret(user_id, "TOKEN", "github", "ghp_abcdefghijklmnop")
    other = IdentityStore(engine, Fernet(Fernet.generate_key()))
    with pytest.raises(IdentityError) as caught:
        await other.reveal_secret(info.id)
    assert "ghp_" not in str(caught.value)
    with pytest.raises(IdentityError):
        await IdentityStore(engine, None).reveal_secret(info.id)
    with pytest.raises(NotFound):
        await store.reveal_secret("00000000-0000-0000-0000-000000000000")


@pytest.mark.parametrize(
    "value", ["a", "short", "elevenchars", "twelve-chars", "sk-" + "x" * 60 + "wxyz", "é" * 20]
)
def test_masked_value_reveals_at_most_the_last_four_characters(value: str) -> None:
    masked = mask_value(value)
    shown = masked.removeprefix("…")
    assert masked.startswith("…")
    assert len(shown) <= 4
    assert value.endswith(shown)
    if len(value) < 12:
        assert shown == ""


async def test_get_secrets_returns_only_the_callers(store: IdentityStore) -> None:
    _, _, user_id = await _tenant(store)
    other = await store.create_user("eve@example.com", "eve", "Eve")
    mine = await store.create_secret(user_id, "A", "openai", "value-a-0123456789")
    theirs = await store.create_secret(other.id, "A", "openai", "value-b-0123456789")

    found = await store.get_secrets(user_id, [mine.id, theirs.id, mine.id])

    assert [s.id for s in found] == [mine.id]
    assert await store.get_secrets(user_id, []) == []
    with pytest.raises(AlreadyExists):
        await store.create_secret(user_id, "A", "openai", "another-value-123")


def test_load_cipher_generates_a_private_key_file_once(tmp_path: Path) -> None:
    key_file = tmp_path / "deep" / "dir" / "secret-key"
    settings = Settings(secret_key_file=str(key_file))

    first = load_cipher(settings)
    token = first.encrypt(b"hello")

    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert load_cipher(settings).decrypt(token) == b"hello"
    assert [p.name for p in key_file.parent.iterdir()] == ["secret-key"]


def test_load_cipher_prefers_the_configured_key_and_hides_a_bad_one(tmp_path: Path) -> None:
    key = Fernet.generate_key().decode()
    settings = Settings(secret_key=key, secret_key_file=str(tmp_path / "unused"))
    assert Fernet(key).decrypt(load_cipher(settings).encrypt(b"x")) == b"x"
    assert not (tmp_path / "unused").exists()

    with pytest.raises(ValueError) as caught:
        load_cipher(Settings(secret_key="not-a-real-key-but-secret"))
    assert "not-a-real-key" not in str(caught.value)


def test_sqlite_key_file_sits_in_the_data_directory_beside_the_database(tmp_path: Path) -> None:
    settings = Settings(database_url=f"sqlite+aiosqlite:///{tmp_path}/assay.db")
    load_cipher(settings)
    assert (tmp_path / ".assay" / "secret-key").exists()


# -- tenants, projects, runtimes ---------------------------------------------------------


async def test_workspace_comes_with_a_default_project(store: IdentityStore) -> None:
    org_id, ws_id, _ = await _tenant(store)

    project = await store.get_project_by_key(ws_id, "default")

    assert project is not None and project.is_default
    assert await store.get_project(ws_id, project.id) == project
    extra = await store.create_project(ws_id, "red-team", "Red team")
    assert not extra.is_default
    assert await store.get_project_by_key(ws_id, "red-team") == extra
    # A project is only found through its own workspace.
    other = await store.create_workspace(org_id, "other", "Other")
    assert await store.get_project(other.id, extra.id) is None


async def test_one_default_workspace_per_org(store: IdentityStore) -> None:
    org_id, ws_id, _ = await _tenant(store)
    await store.create_workspace(org_id, "zeta", "Zeta")
    new_default = await store.create_workspace(org_id, "beta", "Beta", is_default=True)

    listed = await store.list_workspaces(org_id)

    assert [w.key for w in listed] == ["beta", "main", "zeta"]
    assert [w.is_default for w in listed] == [True, False, False]
    assert listed[0] == new_default
    assert (await store.get_workspace(org_id, "main")) is not None
    assert (await store.get_workspace(org_id, "nope")) is None
    assert (await store.get_workspace_by_id(ws_id)) is not None


async def test_runtime_lookup_is_per_workspace(store: IdentityStore) -> None:
    org_id, ws_id, _ = await _tenant(store)
    runtime = await store.create_runtime(ws_id, "local-vllm", "http://127.0.0.1:8001/v1")
    other = await store.create_workspace(org_id, "other", "Other")

    assert await store.get_runtime(ws_id, runtime.id) == runtime
    assert await store.get_runtime(other.id, runtime.id) is None
    assert (await store.create_runtime(ws_id, "default-endpoint")).base_url is None
    with pytest.raises(InvalidValue):
        await store.create_runtime(ws_id, "bad", "ftp://example.com")


async def test_duplicates_raise_already_exists(store: IdentityStore) -> None:
    org_id, ws_id, _ = await _tenant(store)
    await store.create_runtime(ws_id, "r", None)
    attempts: list[Callable[[], Awaitable[object]]] = [
        lambda: store.create_org("acme", "Another Acme"),
        lambda: store.create_workspace(org_id, "main", "Main again"),
        lambda: store.create_user("OWNER@example.com", "someone", "Same email, other case"),
        lambda: store.create_user("new@example.com", "owner", "Same username"),
        lambda: store.create_project(ws_id, "default", "Default again"),
        lambda: store.create_runtime(ws_id, "r", None),
    ]
    for attempt in attempts:
        with pytest.raises(AlreadyExists):
            await attempt()


async def test_missing_parents_raise_not_found(store: IdentityStore) -> None:
    missing = "00000000-0000-0000-0000-000000000000"
    with pytest.raises(NotFound):
        await store.create_workspace(missing, "main", "Main")
    with pytest.raises(NotFound):
        await store.create_project(missing, "p", "P")
    with pytest.raises(NotFound):
        await store.create_runtime(missing, "r", None)
    with pytest.raises(NotFound):
        await store.create_secret(missing, "S", "openai", "value-0123456789")


@pytest.mark.parametrize("key", ["Acme", "a_b", "", "-lead", "a" * 65, "acme org", "ümlaut"])
async def test_bad_slugs_are_refused(store: IdentityStore, key: str) -> None:
    with pytest.raises(InvalidValue):
        await store.create_org(key, "Name")


async def test_lookups_by_email_are_case_insensitive(store: IdentityStore) -> None:
    _, _, user_id = await _tenant(store)
    found = await store.get_user_by_email("  OWNER@EXAMPLE.COM ")
    assert found is not None and found.id == user_id
    assert await store.get_user_by_email("nobody@example.com") is None
    assert await store.get_org_by_key("nope") is None


# -- bootstrap ---------------------------------------------------------------------------


async def test_bootstrap_is_idempotent_but_issues_a_new_key(store: IdentityStore) -> None:
    first = await bootstrap(store, "acme", "main", "Alice@Example.com")
    second = await bootstrap(store, "acme", "main", "alice@example.com")

    assert first.created == ("org", "workspace", "user", "membership")
    assert second.created == ()
    assert (first.org, first.workspace, first.user) == (second.org, second.workspace, second.user)
    assert first.workspace.is_default and first.membership.role == "owner"
    assert first.user.username == "alice"
    assert first.raw_key != second.raw_key
    assert first.raw_key not in repr(first) and first.raw_key not in str(first)
    for result in (first, second):
        principal = await store.authenticate(result.raw_key)
        assert principal is not None
        assert principal.can_manage(first.org.id, first.workspace.id, created_by=None)
    assert len(await store.list_workspaces(first.org.id)) == 1
    assert len(await store.list_api_keys(first.user.id)) == 2


async def test_bootstrap_keeps_an_existing_role(store: IdentityStore) -> None:
    first = await bootstrap(store, "acme", "main", "alice@example.com")
    await store.add_membership(first.org.id, first.user.id, "viewer")

    again = await bootstrap(store, "acme", "lab", "alice@example.com")

    assert again.created == ("workspace",)
    assert again.membership.role == "viewer"
    assert not again.workspace.is_default


async def test_derived_usernames_take_the_first_free_suffix(store: IdentityStore) -> None:
    first = await store.create_user("owner@alpha.example.com")
    second = await store.create_user("Owner@beta.example.com")
    await store.create_user("x@y.z", "owner-3")
    third = await store.create_user("owner@gamma.example.com")
    odd = await store.create_user("o_%@a.example")
    odd_again = await store.create_user("o_%@b.example")

    assert [first.username, second.username, third.username] == ["owner", "owner-2", "owner-4"]
    assert first.full_name == "owner"
    # `_` and `%` are literal in the collision lookup, not LIKE wildcards.
    assert (odd.username, odd_again.username) == ("o_", "o_-2")
    with pytest.raises(AlreadyExists):
        await store.create_user("OWNER@alpha.example.com")


async def test_derived_username_retries_when_a_concurrent_insert_takes_it(
    store: IdentityStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    await store.create_user("owner@alpha.example.com")
    real_fetch_all = store._fetch_all
    stale_reads = [True]

    async def fetch_all(stmt: sa.Executable, **params: object) -> list[dict[str, object]]:
        # The first read misses `owner`, as if its insert committed just after the read.
        if stale_reads and "p_pattern" in params:
            stale_reads.pop()
            return []
        return await real_fetch_all(stmt, **params)

    monkeypatch.setattr(store, "_fetch_all", fetch_all)
    user = await store.create_user("owner@beta.example.com")

    assert user.username == "owner-2"
    assert not stale_reads


async def test_concurrent_users_with_one_local_part_all_get_created(
    store: IdentityStore,
) -> None:
    import asyncio

    users = await asyncio.gather(*(store.create_user(f"owner@org{i}.test") for i in range(4)))

    assert sorted(u.username for u in users) == ["owner", "owner-2", "owner-3", "owner-4"]


async def test_bootstrap_gives_each_orgs_owner_at_user_a_username_of_its_own(
    store: IdentityStore,
) -> None:
    alpha = await bootstrap(store, "alpha", "main", "owner@alpha.example.com")
    beta = await bootstrap(store, "beta", "main", "owner@beta.example.com")
    again = await bootstrap(store, "beta", "main", "owner@beta.example.com")

    assert (alpha.user.username, beta.user.username) == ("owner", "owner-2")
    assert beta.user.email == "owner@beta.example.com" and "user" in beta.created
    assert again.user.id == beta.user.id and "user" not in again.created
    assert beta.membership.role == "owner"
