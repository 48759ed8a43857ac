"""Analytics of one evaluation, computed from its items' read models (a pure function)."""

from __future__ import annotations

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


class Analytics(msgspec.Struct, frozen=True, kw_only=True):
    status: str
    total_samples: int
    passed_count: int
    failed_count: int
    error_count: int
    pass_rate: float | None
    degraded_runtime_count: int
    analytics_snapshot: Snapshot


def _rate(passed: int, decided: int) -> float | None:
    return passed / decided if decided else None


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
        degraded_runtime_count=0,
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
