"""What a test does when this host lacks something it needs: skip with the reason printed, or,
under CI (CI=true), fail, since there everything must run and nothing may skip."""

from __future__ import annotations

import os
import sys
from typing import NoReturn

import pytest

UNDER_CI = os.environ.get("CI", "").lower() == "true"


def unavailable(what: str, reason: str) -> NoReturn:
    print(f"{what} unavailable: {reason}", file=sys.stderr)
    if UNDER_CI:
        pytest.fail(f"CI=true requires {what}: {reason}")
    pytest.skip(f"{what} unavailable: {reason}")
