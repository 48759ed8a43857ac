"""The one wall clock of the service. Everything that needs the time takes a `Clock` (tests
pass a fake one); `system_clock` is the real one, `utc_now` its text as tables store it."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

from domain.timestamps import iso

Clock = Callable[[], datetime]


def system_clock() -> datetime:
    return datetime.now(UTC)


def utc_now() -> str:
    return iso(system_clock())


__all__ = ["Clock", "iso", "system_clock", "utc_now"]
