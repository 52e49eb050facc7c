"""The verdict helpers against scipy and against their definitions: Welch's interval, TOST, the three verdicts."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from companion.stats import MARGIN, compare, difference, equivalence, mean_interval, problem_bootstrap, verdict

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


@settings(max_examples=60, deadline=None)
@given(seeds)
def test_the_mean_interval_is_students(values):
    if np.var(values) < 1e-9:
        return
    m = mean_interval(values)
    low, high = stats.t.interval(0.95, len(values) - 1, loc=np.mean(values), scale=stats.sem(values))
    assert (m.low, m.high) == (pytest.approx(low), pytest.approx(high))
    assert m.estimate == pytest.approx(np.mean(values)) and m.n == len(values)


def test_a_mean_whose_seeds_all_agree_is_that_value():
    assert mean_interval([0.5, 0.5, 0.5])[:3] == (0.5, 0.5, 0.5)


def test_compare_names_the_outcome_the_verdict_states():
    cases = {"greater": ([0.33, 0.34, 0.30, 0.33, 0.32], [0.27, 0.26, 0.27, 0.28, 0.27]),
             "less": ([0.27, 0.26, 0.27, 0.28, 0.27], [0.33, 0.34, 0.30, 0.33, 0.32]),
             "equivalent": ([0.300, 0.305, 0.301, 0.304, 0.302], [0.301, 0.303, 0.300, 0.304, 0.303]),
             "cannot tell": ([0.30, 0.36, 0.28], [0.31, 0.27, 0.35])}
    for outcome, (a, b) in cases.items():
        c = compare(a, b)
        assert c.outcome == outcome
        assert c.difference == difference(a, b) and c.equivalence == equivalence(a, b, alpha=0.05)
        sentence = verdict(a, b, names=("A", "B"))
        assert sentence.startswith({"greater": "A > B", "less": "A < B", "equivalent": "A ≈ B",
                                    "cannot tell": "cannot tell"}[outcome])


def test_the_problem_bootstrap_is_the_mean_gap_with_the_normal_approximations_width():
    rng = np.random.default_rng(1)
    a = rng.binomial(1, 0.4, size=(400, 5)).astype(float)  # 400 problems, 5 seeds, scores 0/1
    b = rng.binomial(1, 0.3, size=(400, 5)).astype(float)
    d = problem_bootstrap(a, b, n_resamples=4000)
    gaps = a.mean(axis=1) - b.mean(axis=1)
    assert d.estimate == pytest.approx(gaps.mean())
    half = 1.96 * gaps.std(ddof=1) / len(gaps) ** 0.5
    assert (d.low, d.high) == (pytest.approx(gaps.mean() - half, abs=0.1 * half),
                               pytest.approx(gaps.mean() + half, abs=0.1 * half))
    assert d == problem_bootstrap(a, b, n_resamples=4000)  # seeded
    assert problem_bootstrap([[1.0], [1.0]], [[0.0], [0.0]])[:3] == (1.0, 1.0, 1.0)  # no spread: the gap itself


@pytest.mark.parametrize("call, message", [
    (lambda: problem_bootstrap([[1.0, 0.0]], [[0.0, 1.0]]), "one row per problem"),
    (lambda: problem_bootstrap([[1.0], [0.0]], [[0.0], [1.0], [1.0]]), "one row per problem"),
    (lambda: mean_interval([0.3]), "at least two values"),
    (lambda: difference([0.3], [0.2, 0.1]), "at least two values"),
    (lambda: difference([0.3, 0.2], [0.2, 0.1], confidence=1.0), "confidence"),
    (lambda: equivalence([0.3, 0.2], [0.2, 0.1], margin=0), "margin"),
])
def test_bad_input_says_what_to_change(call, message):
    with pytest.raises(ValueError, match=message):
        call()
