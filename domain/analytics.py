"""Analytics of one evaluation, computed from its items' read models (a pure function)."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from datetime import datetime

import msgspec

from domain.evaluation import TERMINAL_STATUSES
from domain.item import TERMINAL, VERDICTS
from domain.projections import EvaluationView, ItemView


class TaskBreakdown(msgspec.Struct, frozen=True):
    task_name: str
    passed_count: int
    total_samples: int
    pass_rate: float | None


class Durations(msgspec.Struct, frozen=True):
    p50_ms: float | None
    p95_ms: float | None
    max_ms: float | None


class ErrorCount(msgspec.Struct, frozen=True):
    error: str
    count: int


class Snapshot(msgspec.Struct, frozen=True):
    task_breakdown: list[TaskBreakdown]
    runtime_durations_ms: Durations
    error_summary: list[ErrorCount]


class Interval(msgspec.Struct, frozen=True):
    low: float
    high: float


class Analytics(msgspec.Struct, frozen=True, kw_only=True):
    status: str
    total_samples: int
    passed_count: int
    failed_count: int
    error_count: int
    pass_rate: float | None
    # 95% Wilson score interval of pass_rate: honest at small n and near 0 or 1.
    pass_rate_ci95: Interval | None
    # Items without a verdict (timed out, infra error, cancelled, errored) counted as failures.
    pass_rate_errors_as_failures: float | None
    degraded_runtime_count: int
    # Items by the isolation their sandbox ran under: strict, or weak (opted into).
    sandbox_isolation: dict[str, int]
    analytics_snapshot: Snapshot


def _rate(passed: int, decided: int) -> float | None:
    return passed / decided if decided else None


Z_95 = 1.959963984540054


def wilson_interval(successes: int, trials: int, z: float = Z_95) -> Interval | None:
    """The Wilson score interval for a binomial proportion (None without trials)."""
    if trials == 0:
        return None
    p = successes / trials
    denominator = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denominator
    margin = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denominator
    return Interval(low=max(0.0, centre - margin), high=min(1.0, centre + margin))


def _percentile(sorted_values: Sequence[float], fraction: float) -> float | None:
    if not sorted_values:
        return None
    index = min(len(sorted_values) - 1, max(0, round(fraction * (len(sorted_values) - 1))))
    return sorted_values[index]


def _duration_ms(item: ItemView) -> float | None:
    if item.started_at is None or item.completed_at is None:
        return None
    delta = datetime.fromisoformat(item.completed_at) - datetime.fromisoformat(item.started_at)
    return delta.total_seconds() * 1000


def compute(evaluation: EvaluationView, items: Sequence[ItemView]) -> Analytics:
    passed = sum(1 for i in items if i.status == "passed")
    failed = sum(1 for i in items if i.status == "failed")
    errors = sum(1 for i in items if i.status in TERMINAL - VERDICTS)
    per_task: dict[str, list[ItemView]] = {}
    for item in items:
        per_task.setdefault(item.task_name_snapshot, []).append(item)
    breakdown = [
        TaskBreakdown(
            task_name=name,
            passed_count=sum(1 for i in group if i.status == "passed"),
            total_samples=len(group),
            pass_rate=_rate(
                sum(1 for i in group if i.status == "passed"),
                sum(1 for i in group if i.status in VERDICTS),
            ),
        )
        for name, group in sorted(per_task.items())
    ]
    durations = sorted(d for i in items if (d := _duration_ms(i)) is not None)
    grouped = Counter(i.error for i in items if i.error and i.status in TERMINAL - VERDICTS)
    return Analytics(
        status="ready" if evaluation.status in TERMINAL_STATUSES else "pending",
        total_samples=len(items),
        passed_count=passed,
        failed_count=failed,
        error_count=errors,
        pass_rate=_rate(passed, passed + failed),
        pass_rate_ci95=wilson_interval(passed, passed + failed),
        pass_rate_errors_as_failures=_rate(passed, passed + failed + errors),
        degraded_runtime_count=0,
        sandbox_isolation=dict(evaluation.isolation_counts),
        analytics_snapshot=Snapshot(
            task_breakdown=breakdown,
            runtime_durations_ms=Durations(
                p50_ms=_percentile(durations, 0.5),
                p95_ms=_percentile(durations, 0.95),
                max_ms=durations[-1] if durations else None,
            ),
            error_summary=[ErrorCount(e, n) for e, n in grouped.most_common()],
        ),
    )
