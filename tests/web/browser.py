"""Chromium for the browser suite: Debian's `chromium` driven by Playwright for Python (never a
browser Playwright downloads). Absent: the tests skip with the reason, or fail under CI=true."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from tests.ci import unavailable

CHROMIUM = os.environ.get("ASSAY_CHROMIUM", "/usr/bin/chromium")


def chromium_or_skip() -> str:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError as exc:
        unavailable("Playwright", f"{exc} (pip install -e '.[dev]')")
    path = CHROMIUM if Path(CHROMIUM).exists() else shutil.which("chromium")
    if not path:
        unavailable("Chromium", f"{CHROMIUM} not found (scripts/browser_setup.sh installs it)")
    return path


def launch(playwright: Any, executable: str) -> Any:
    # --no-sandbox: CI runs as root, where Chromium's own sandbox refuses to start.
    return playwright.chromium.launch(
        executable_path=executable, headless=True, args=["--no-sandbox", "--disable-gpu"]
    )


def artifacts_dir() -> Path:
    """Where screenshots of failed tests go (ASSAY_WEB_ARTIFACTS, else a temp folder)."""
    folder = Path(os.environ.get("ASSAY_WEB_ARTIFACTS", "/tmp/assay-web-artifacts"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder
