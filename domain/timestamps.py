"""How the service writes a moment: fixed-width ISO-8601 UTC text, as every table stores it.

Pure (no clock): the time itself always comes in as an argument.
"""

from __future__ import annotations

from datetime import UTC, datetime


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="microseconds")
