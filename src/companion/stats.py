"""Verdicts with their uncertainty: the difference of two algorithms' means over seeds, its t-based 95% interval,
and an equivalence test for every "≈".

A claim in the book compares per-seed results (each seed a whole training run, its final pass@1 on the same
held-out problems). With a handful of seeds the normal "2 × SE" rule is too narrow: at 5 seeds per arm Welch's
interval uses t ≈ 2.3–2.8 (2.78 at 4 degrees of freedom), at 3 seeds up to 4.3. So:

* :func:`difference` is Welch's unequal-variance t interval for mean(a) − mean(b) (scipy's ``ttest_ind``);
* :func:`equivalence` is the two one-sided tests (TOST) against a margin stated before the runs: "a ≈ b" holds
  when the difference is shown to lie inside ±margin, i.e. the 90% interval lies inside it;
* :func:`verdict` reads both: a difference (the 95% interval excludes 0), an equivalence, or "cannot tell".

Seeds are the unit: the problems' own noise (the pass@1 of one run over its 200 problems) is inside each seed's
number, and what varies between seeds (the run's sampling and its problem stream) is what a reader's rerun would
vary too. Tested against scipy in ``tests/test_stats.py``.
"""

from __future__ import annotations

import statistics
import warnings
from contextlib import contextmanager
from typing import NamedTuple, Sequence

MARGIN = 0.03
"""The equivalence margin of pass@1, stated before the five-seed runs (issue 37): two rules are "the same" here when
their mean pass@1 differ by less than 0.03, a tenth of what GRPO adds to the base on Countdown."""


@contextmanager
def _exact_ties_allowed():
    """A context in which scipy does not warn of "precision loss" when an arm's values are all equal (a rule whose
    every seed scores exactly 0, say): its variance is then exactly 0, which is what the interval should use."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Precision loss occurred in moment calculation", category=RuntimeWarning)
        yield


class Difference(NamedTuple):
    """mean(a) − mean(b) with its t-based interval (Welch)."""

    estimate: float
    low: float
    high: float
    se: float
    df: float
    confidence: float

    @property
    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0


def difference(a: Sequence[float], b: Sequence[float], confidence: float = 0.95) -> Difference:
    """Welch's t interval of mean(a) − mean(b) (each at least two values).

    >>> d = difference([0.33, 0.34, 0.30], [0.28, 0.26, 0.27])
    >>> round(d.estimate, 3), round(d.low, 3), round(d.high, 3), round(d.df, 1)
    (0.053, 0.01, 0.097, 2.9)
    """
    from scipy import stats

    if min(len(a), len(b)) < 2:
        raise ValueError(f"a t interval needs at least two values per arm, got {len(a)} and {len(b)}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    with _exact_ties_allowed():
        test = stats.ttest_ind(a, b, equal_var=False)
        interval = test.confidence_interval(confidence)
    se = (statistics.variance(a) / len(a) + statistics.variance(b) / len(b)) ** 0.5
    return Difference(statistics.fmean(a) - statistics.fmean(b), float(interval.low), float(interval.high), se,
                      float(test.df), confidence)


class Equivalence(NamedTuple):
    """The two one-sided tests of |mean(a) − mean(b)| < margin."""

    p_value: float  # the larger of the two one-sided p-values
    equivalent: bool  # p_value < alpha: the difference is shown to lie inside ±margin
    margin: float
    alpha: float


def equivalence(a: Sequence[float], b: Sequence[float], margin: float = MARGIN, alpha: float = 0.05) -> Equivalence:
    """TOST: H0 "mean(a) − mean(b) ≤ −margin" and H0 "≥ +margin", each rejected by a one-sided Welch t-test at
    ``alpha``; equivalent when both are (the same as the 1 − 2·alpha interval lying inside ±margin).

    >>> equivalence([0.30, 0.31, 0.30, 0.31, 0.30], [0.30, 0.30, 0.31, 0.31, 0.30], margin=0.03).equivalent
    True
    >>> equivalence([0.33, 0.34, 0.30], [0.30, 0.32, 0.33], margin=0.03).equivalent
    False
    """
    from scipy import stats

    if margin <= 0:
        raise ValueError(f"margin must be > 0, got {margin}")
    with _exact_ties_allowed():
        above = stats.ttest_ind([x + margin for x in a], b, equal_var=False, alternative="greater").pvalue
        below = stats.ttest_ind([x - margin for x in a], b, equal_var=False, alternative="less").pvalue
    p = float(max(above, below))
    return Equivalence(p, p < alpha, margin, alpha)


def verdict(a: Sequence[float], b: Sequence[float], *, margin: float = MARGIN, names: tuple[str, str] = ("a", "b"),
            confidence: float = 0.95) -> str:
    """One sentence: whether ``a`` and ``b`` differ (the 95% interval excludes 0), are equivalent within ±``margin``
    (TOST at the matching level), or cannot be told apart; with the difference and its interval.

    >>> verdict([0.33, 0.34, 0.30, 0.33, 0.32], [0.27, 0.26, 0.27, 0.28, 0.27], names=("GRPO", "Dr. GRPO"))
    'GRPO > Dr. GRPO: +0.054 [+0.035, +0.073]'
    """
    d = difference(a, b, confidence)
    interval = f"{d.estimate:+.3f} [{d.low:+.3f}, {d.high:+.3f}]"
    if d.excludes_zero:
        return f"{names[0]} {'>' if d.estimate > 0 else '<'} {names[1]}: {interval}"
    if equivalence(a, b, margin, alpha=1 - confidence).equivalent:
        return f"{names[0]} ≈ {names[1]} (within ±{margin:g}): {interval}"
    return f"cannot tell {names[0]} from {names[1]}: {interval}, which includes 0 and reaches past ±{margin:g}"
