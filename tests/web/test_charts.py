"""The chart geometry: where the pass rate, its interval and the duration bars land."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from app.web import charts
from domain.analytics import Analytics, Durations, Interval, Snapshot


def _result(passed: int, failed: int) -> Analytics:
    from domain.analytics import wilson_interval

    decided = passed + failed
    return Analytics(
        status="ready",
        total_samples=decided,
        passed_count=passed,
        failed_count=failed,
        error_count=0,
        pass_rate=passed / decided if decided else None,
        pass_rate_ci95=wilson_interval(passed, decided),
        pass_rate_errors_as_failures=None,
        degraded_runtime_count=0,
        sandbox_isolation={},
        analytics_snapshot=Snapshot([], Durations(None, None, None), []),
    )


def test_no_verdict_draws_no_pass_rate() -> None:
    assert charts.pass_rate_chart(_result(0, 0)) is None


def test_the_interval_brackets_the_rate_on_the_axis() -> None:
    chart = charts.pass_rate_chart(_result(3, 1))
    assert chart is not None
    assert chart.x_low < chart.x_rate < chart.x_high
    assert chart.x_rate == charts.PLOT_LEFT + 0.75 * (charts.PLOT_RIGHT - charts.PLOT_LEFT)
    assert "75%" in chart.label and "95% interval" in chart.label


def test_all_passed_still_shows_uncertainty() -> None:
    chart = charts.pass_rate_chart(_result(5, 0))
    assert chart is not None and chart.high == 1.0 and chart.low < 0.6


@given(st.lists(st.floats(min_value=0, max_value=5000), min_size=1, max_size=200))
def test_every_duration_lands_in_exactly_one_bar(values: list[float]) -> None:
    histogram = charts.histogram(values)
    assert histogram is not None
    assert sum(bar.count for bar in histogram.bars) == len(values)
    assert max(values) <= histogram.upper
    assert max(bar.count for bar in histogram.bars) == histogram.max_count
    assert all(charts.PLOT_LEFT <= bar.x <= charts.PLOT_RIGHT for bar in histogram.bars)


def test_no_duration_draws_no_histogram() -> None:
    assert charts.histogram([]) is None


def test_interval_type_is_the_domains() -> None:
    assert isinstance(_result(1, 1).pass_rate_ci95, Interval)
