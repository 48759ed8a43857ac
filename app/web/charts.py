"""Geometry of the dashboard's charts, drawn as inline SVG by the templates (no script, no
asset): the pass rate with its 95% interval, and a histogram of item durations.

The numbers come from domain.analytics (the API's analytics); this module only places them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import datetime

import msgspec

from domain.analytics import Analytics
from domain.projections import ItemView

WIDTH = 600
PLOT_LEFT = 40
PLOT_RIGHT = 580


class PassRateChart(msgspec.Struct, frozen=True):
    rate: float
    low: float
    high: float
    decided: int
    # x positions in the SVG's 600-unit-wide box
    x_rate: float
    x_low: float
    x_high: float
    label: str


class Bar(msgspec.Struct, frozen=True):
    x: float
    y: float
    width: float
    height: float
    count: int
    label: str


class Histogram(msgspec.Struct, frozen=True):
    bars: list[Bar]
    max_count: int
    unit: str
    upper: float
    label: str


def _x(fraction: float) -> float:
    return round(PLOT_LEFT + fraction * (PLOT_RIGHT - PLOT_LEFT), 1)


def pass_rate_chart(result: Analytics) -> PassRateChart | None:
    """None until an item has a verdict (nothing to draw)."""
    if result.pass_rate is None or result.pass_rate_ci95 is None:
        return None
    rate, ci = result.pass_rate, result.pass_rate_ci95
    decided = result.passed_count + result.failed_count
    return PassRateChart(
        rate=rate,
        low=ci.low,
        high=ci.high,
        decided=decided,
        x_rate=_x(rate),
        x_low=_x(ci.low),
        x_high=_x(ci.high),
        label=(
            f"pass rate {rate:.0%} of {decided} decided items; "
            f"95% interval {ci.low:.0%} to {ci.high:.0%}"
        ),
    )


def durations_seconds(items: Sequence[ItemView]) -> list[float]:
    """Wall time of each finished item, start to completion (as analytics measures it)."""
    values = []
    for item in items:
        if item.started_at and item.completed_at:
            delta = datetime.fromisoformat(item.completed_at) - datetime.fromisoformat(
                item.started_at
            )
            values.append(max(0.0, delta.total_seconds()))
    return values


def _nice_width(span: float, bins: int) -> float:
    raw = span / bins if span > 0 else 1.0
    magnitude = 10 ** math.floor(math.log10(raw))
    for step in (1, 2, 5, 10):
        if raw <= step * magnitude:
            return float(step * magnitude)
    return float(10 * magnitude)


def histogram(values: Sequence[float], bins: int = 10, height: float = 120) -> Histogram | None:
    if not values:
        return None
    width = _nice_width(max(values), bins)
    count = max(1, min(bins, math.floor(max(values) / width) + 1))
    counts = [0] * count
    for value in values:
        counts[min(count - 1, int(value // width))] += 1
    top = max(counts)
    slot = (PLOT_RIGHT - PLOT_LEFT) / count
    bars = []
    for index, n in enumerate(counts):
        bar_height = round(height * n / top, 1)
        low, high = index * width, (index + 1) * width
        bars.append(
            Bar(
                x=round(PLOT_LEFT + index * slot + 1, 1),
                y=round(10 + height - bar_height, 1),
                width=round(slot - 2, 1),
                height=bar_height,
                count=n,
                label=f"{n} item{'s' if n != 1 else ''} took {low:g} to {high:g} s",
            )
        )
    return Histogram(
        bars=bars,
        max_count=top,
        unit="s",
        upper=count * width,
        label=f"histogram of {len(values)} item durations, 0 to {count * width:g} seconds",
    )
