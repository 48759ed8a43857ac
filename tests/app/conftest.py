"""An API client per backend: a migrated database, a bootstrapped tenant, Litestar's TestClient."""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from cryptography.fernet import Fernet
from litestar.testing import TestClient

from app.main import create_app
from infrastructure.db.engine import create_engine
from infrastructure.identity.bootstrap import bootstrap
from infrastructure.identity.store import IdentityStore
from infrastructure.settings import Settings


@dataclass
class Api:
    client: TestClient[Any]
    settings: Settings
    org: str
    workspace: str
    key: str
    user_id: str
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def base(self) -> str:
        return f"/api/v1/org/{self.org}/ws/{self.workspace}"

    def create(self, **body: Any) -> Any:
        body.setdefault("name", "eval")
        body.setdefault("model", "test-model")
        body.setdefault("task_names", ["find-the-flag"])
        return self.client.post(f"{self.base}/evaluation", json=body, headers=self.headers)

    def get(self, path: str, **kwargs: Any) -> Any:
        return self.client.get(f"{self.base}{path}", headers=self.headers, **kwargs)

    def post(self, path: str, **kwargs: Any) -> Any:
        return self.client.post(f"{self.base}{path}", headers=self.headers, **kwargs)


def identity_of(settings: Settings) -> IdentityStore:
    from infrastructure.identity.crypto import load_cipher

    return IdentityStore(create_engine(settings.database_url), load_cipher(settings))


def run_identity(settings: Settings, action: Any) -> Any:
    """Run `action(identity_store)` on its own loop, outside the test client's."""

    async def main() -> Any:
        store = identity_of(settings)
        try:
            return await action(store)
        finally:
            await store._engine.dispose()

    return asyncio.run(main())


def make_settings(database_url: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "database_url": database_url,
        "rate_limit": 0,
        "secret_key": Fernet.generate_key().decode(),
        "log_json": True,
        "auth_cache_seconds": 0.0,
        # The API suites check the API alone; the engine's suites start workers themselves.
        "workers": 0,
        # Never contacted (no worker runs); lets a bare `model` choose the openai agent.
        "openai_base_url": "http://127.0.0.1:9/v1",
        # Unpacked task bundles: never in the working directory.
        "bundle_cache": tempfile.mkdtemp(prefix="assay-bundles-"),
    }
    values.update(overrides)
    return Settings(**values)


@pytest.fixture
def settings(database_url: str) -> Settings:
    return make_settings(database_url)


@pytest.fixture
def api(settings: Settings) -> Iterator[Api]:
    result = run_identity(
        settings,
        lambda store: bootstrap(
            store, org_key="acme", workspace_key="main", email="owner@acme.test"
        ),
    )
    with TestClient(create_app(settings)) as client:
        yield Api(
            client=client,
            settings=settings,
            org="acme",
            workspace="main",
            key=result.raw_key,
            user_id=result.user.id,
            headers={"X-API-Key": result.raw_key},
        )


@pytest.fixture
def bundles(tmp_path: Path) -> Path:
    """A folder for the test's own task bundles, passed to the service as a task path."""
    folder = tmp_path / "bundles"
    folder.mkdir()
    return folder


@pytest.fixture
def service(database_url: str, tmp_path: Path, bundles: Path) -> Iterator[Any]:
    """`service(**settings)` starts the API with a worker (an Engine, see execution_fixtures);
    stopped at the end of the test."""
    from tests.app.execution_fixtures import running_service

    with contextlib.ExitStack() as stack:

        def start(**overrides: Any) -> Any:
            overrides.setdefault("task_paths", (str(bundles),))
            return stack.enter_context(running_service(database_url, tmp_path, **overrides))

        yield start
