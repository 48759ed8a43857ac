"""Jinja filters of the dashboard: how numbers, times and durations read."""

from __future__ import annotations

from datetime import datetime

from litestar.plugins.jinja import JinjaTemplateEngine


def percent(value: float | None) -> str:
    return "—" if value is None else f"{value:.0%}"


def when(value: str | None) -> str:
    """An ISO timestamp as `YYYY-MM-DD HH:MM:SS` (UTC, as stored)."""
    if not value:
        return "—"
    return value.replace("T", " ")[:19]


def duration(start: str | None, end: str | None) -> str:
    if not start or not end:
        return "—"
    seconds = (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(int(seconds), 60)
    return f"{minutes} min {rest} s"


def short(value: str | None, length: int = 8) -> str:
    return (value or "")[:length]


def register(engine: JinjaTemplateEngine) -> None:
    for name, function in (
        ("percent", percent),
        ("when", when),
        ("duration", duration),
        ("short", short),
    ):
        engine.engine.filters[name] = function
