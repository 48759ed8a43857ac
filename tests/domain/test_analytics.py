"""Analytics are a pure function of an evaluation's item views."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from domain.analytics import wilson_interval


def test_wilson_interval_matches_a_published_value() -> None:
    # 8 successes of 10 at 95%: (0.4902, 0.9433), as tabulated by Newcombe (1998).
    interval = wilson_interval(8, 10)
    assert interval is not None
    assert interval.low == pytest.approx(0.4902, abs=1e-4)
    assert interval.high == pytest.approx(0.9433, abs=1e-4)


def test_wilson_interval_is_absent_without_trials() -> None:
    assert wilson_interval(0, 0) is None


@given(st.integers(0, 500).flatmap(lambda n: st.tuples(st.integers(0, n), st.just(n))))
def test_wilson_interval_contains_the_observed_rate_and_stays_in_unit_range(
    case: tuple[int, int],
) -> None:
    successes, trials = case
    interval = wilson_interval(successes, trials)
    if trials == 0:
        assert interval is None
        return
    assert interval is not None
    rate = successes / trials
    assert 0.0 <= interval.low <= rate + 1e-12
    assert rate - 1e-12 <= interval.high <= 1.0
    assert not math.isnan(interval.low)
