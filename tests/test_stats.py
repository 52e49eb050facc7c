"""The verdict helpers against scipy and against their definitions: Welch's interval, TOST, the three verdicts."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from companion.stats import MARGIN, difference, equivalence, verdict

seeds = st.lists(st.floats(min_value=0.0, max_value=1.0, allow_nan=False), min_size=2, max_size=8)


@settings(max_examples=80, deadline=None)
@given(seeds, seeds)
def test_the_interval_is_welchs_and_its_half_width_is_t_times_the_standard_error(a, b):
    if min(np.var(a), np.var(b)) < 1e-9:  # an arm (nearly) without spread: scipy's own check warns
        return
    d = difference(a, b)
    test = stats.ttest_ind(a, b, equal_var=False)
    interval = test.confidence_interval(0.95)
    assert d.low == pytest.approx(interval.low) and d.high == pytest.approx(interval.high)
    assert d.estimate == pytest.approx(np.mean(a) - np.mean(b), abs=1e-12)
    t = stats.t.ppf(0.975, d.df)
    assert (d.high - d.low) / 2 == pytest.approx(t * d.se, rel=1e-9, abs=1e-12)
    assert d.excludes_zero == (test.pvalue < 0.05)


def test_five_seeds_need_a_wider_interval_than_two_standard_errors():
    a, b = [0.33, 0.34, 0.30, 0.32, 0.35], [0.31, 0.32, 0.33, 0.30, 0.31]
    d = difference(a, b)
    assert (d.high - d.low) / 2 > 2 * d.se  # t(~8 df) > 2: the old "2 x SE" rule was too narrow


@settings(max_examples=60, deadline=None)
@given(seeds, seeds, st.floats(min_value=0.005, max_value=0.2))
def test_tost_is_the_90_percent_interval_inside_the_margin(a, b, margin):
    if np.var(a) + np.var(b) < 1e-9:  # (nearly) no spread: scipy warns, its interval is nan or noise
        return
    inside = difference(a, b, confidence=0.90)
    expected = -margin < inside.low and inside.high < margin
    result = equivalence(a, b, margin=margin, alpha=0.05)
    if not math.isclose(abs(inside.low), margin, rel_tol=1e-6) and not math.isclose(abs(inside.high), margin, rel_tol=1e-6):
        assert result.equivalent == expected


def test_an_arm_whose_seeds_all_agree_uses_the_other_arms_spread_without_a_warning(recwarn):
    d = difference([0.0, 0.0, 0.0], [0.30, 0.33, 0.31])
    assert d.high < 0 and d.se == pytest.approx(np.std([0.30, 0.33, 0.31], ddof=1) / 3 ** 0.5)
    assert not [w for w in recwarn if "Precision loss" in str(w.message)]


def test_the_three_verdicts():
    apart = verdict([0.33, 0.34, 0.30, 0.33, 0.32], [0.27, 0.26, 0.27, 0.28, 0.27], names=("A", "B"))
    assert apart.startswith("A > B")
    close = verdict([0.300, 0.305, 0.301, 0.304, 0.302], [0.301, 0.303, 0.300, 0.304, 0.303], names=("A", "B"))
    assert close.startswith(f"A ≈ B (within ±{MARGIN:g})")
    wide = verdict([0.30, 0.36, 0.28], [0.31, 0.27, 0.35], names=("A", "B"))
    assert wide.startswith("cannot tell A from B")


@pytest.mark.parametrize("call, message", [
    (lambda: difference([0.3], [0.2, 0.1]), "at least two values"),
    (lambda: difference([0.3, 0.2], [0.2, 0.1], confidence=1.0), "confidence"),
    (lambda: equivalence([0.3, 0.2], [0.2, 0.1], margin=0), "margin"),
])
def test_bad_input_says_what_to_change(call, message):
    with pytest.raises(ValueError, match=message):
        call()
