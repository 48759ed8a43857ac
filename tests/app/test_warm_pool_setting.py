"""ASSAY_SANDBOX_WARM through the worker a user starts: how many strict sandboxes its pool
pre-starts (the pool itself is tested in tests/infrastructure/test_warm_pool.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.fernet import Fernet

from app.composition import build_container
from infrastructure.sandbox.local import LocalSandboxProvider
from infrastructure.sandbox.local.warm_pool import WarmPool
from infrastructure.settings import Settings


@pytest.mark.parametrize(("setting", "size"), [(None, 4), ("0", None), ("2", 2)])
async def test_a_worker_pre_starts_as_many_as_its_slots_unless_told_otherwise(
    tmp_path: Path, setting: str | None, size: int | None
) -> None:
    """ASSAY_SANDBOX_WARM, read as `assay worker` reads it: -1 (default) sizes the pool by
    the worker's slots, 0 turns it off, N caps it."""
    env = {
        "ASSAY_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'a.db'}",
        "ASSAY_SECRET_KEY": Fernet.generate_key().decode(),
        "ASSAY_SANDBOX_ROOT": str(tmp_path / "sandboxes"),
    } | ({"ASSAY_SANDBOX_WARM": setting} if setting is not None else {})
    container = build_container(Settings.from_env(env))
    try:
        local = container.worker_pool(4).providers.get("local")
        if size is None:
            assert isinstance(local, LocalSandboxProvider)
        else:
            assert isinstance(local, WarmPool) and local.size == size
    finally:
        await container.close()
