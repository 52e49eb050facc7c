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


class Comparison(NamedTuple):
    """What two arms' per-seed values say together: the difference with its interval, the equivalence test, and the
    outcome: ``"greater"`` or ``"less"`` (the interval excludes 0), ``"equivalent"`` (within ±margin by TOST at the
    matching level), or ``"cannot tell"``."""

    difference: Difference
    equivalence: Equivalence
    outcome: str


def compare(a: Sequence[float], b: Sequence[float], *, margin: float = MARGIN, confidence: float = 0.95) -> Comparison:
    """Compare ``a`` with ``b``: a difference when the ``confidence`` interval excludes 0, else an equivalence when
    TOST at ``1 - confidence`` shows it inside ±``margin``, else "cannot tell".

    >>> compare([0.33, 0.34, 0.30, 0.33, 0.32], [0.27, 0.26, 0.27, 0.28, 0.27]).outcome
    'greater'
    """
    d = difference(a, b, confidence)
    e = equivalence(a, b, margin, alpha=round(1 - confidence, 12))
    outcome = ("greater" if d.estimate > 0 else "less") if d.excludes_zero else "equivalent" if e.equivalent \
        else "cannot tell"
    return Comparison(d, e, outcome)


class Mean(NamedTuple):
    """A mean over seeds with its t-based interval (one sample)."""

    estimate: float
    low: float
    high: float
    n: int

    @property
    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0


def mean_interval(values: Sequence[float], confidence: float = 0.95) -> Mean:
    """The mean of ``values`` (at least two) with its Student t interval (scipy's ``ttest_1samp``).

    >>> m = mean_interval([1.0, 2.0, 3.0])
    >>> m.estimate, round(m.low, 3), round(m.high, 3)
    (2.0, -0.484, 4.484)
    """
    from scipy import stats

    if len(values) < 2:
        raise ValueError(f"a t interval needs at least two values, got {len(values)}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if statistics.pvariance(values) == 0:  # every seed the same: the interval is that value (scipy would say nan)
        return Mean(values[0], values[0], values[0], len(values))
    interval = stats.ttest_1samp(values, 0.0).confidence_interval(confidence)
    return Mean(statistics.fmean(values), float(interval.low), float(interval.high), len(values))


def interval_text(estimate: float, low: float, high: float, digits: int = 3, signed: bool = True) -> str:
    """``+0.054 [+0.035, +0.073]``: an estimate with its interval, as the book prints them."""
    f = f"{{:{'+' if signed else ''}.{digits}f}}"
    estimate, low, high = (round(x, digits) + 0.0 for x in (estimate, low, high))  # + 0.0: no "-0.000"
    return f"{f.format(estimate)} [{f.format(low)}, {f.format(high)}]"


def verdict(a: Sequence[float], b: Sequence[float], *, margin: float = MARGIN, names: tuple[str, str] = ("a", "b"),
            confidence: float = 0.95) -> str:
    """One sentence: whether ``a`` and ``b`` differ (the 95% interval excludes 0), are equivalent within ±``margin``
    (TOST at the matching level), or cannot be told apart; with the difference and its interval.

    >>> verdict([0.33, 0.34, 0.30, 0.33, 0.32], [0.27, 0.26, 0.27, 0.28, 0.27], names=("GRPO", "Dr. GRPO"))
    'GRPO > Dr. GRPO: +0.054 [+0.035, +0.073]'
    """
    c = compare(a, b, margin=margin, confidence=confidence)
    d = c.difference
    interval = interval_text(d.estimate, d.low, d.high)
    if c.outcome in ("greater", "less"):
        return f"{names[0]} {'>' if c.outcome == 'greater' else '<'} {names[1]}: {interval}"
    if c.outcome == "equivalent":
        return f"{names[0]} ≈ {names[1]} (within ±{margin:g}): {interval}"
    return f"cannot tell {names[0]} from {names[1]}: {interval}, which includes 0 and reaches past ±{margin:g}"


def problem_bootstrap(a: Sequence[Sequence[float]], b: Sequence[Sequence[float]], *, confidence: float = 0.95,
                      n_resamples: int = 10_000, seed: int = 0) -> Difference:
    """The difference of two arms' mean score when the *problems* are what varies: ``a`` and ``b`` hold one row per
    problem (the same problems, in the same order, for both), each row one score per seed; the statistic is the
    mean over problems of (mean over ``a``'s seeds − mean over ``b``'s), and its interval a percentile bootstrap
    over problems (scipy's ``bootstrap`` of the per-problem gaps: resampling a problem resamples both arms on it). It answers another question than
    :func:`difference`: how far another draw of held-out problems could move the gap of *these* trained policies,
    where :func:`difference` asks how far another draw of training runs could move it on *these* problems.
    ``se`` is the bootstrap's standard error, ``df`` infinite.

    >>> d = problem_bootstrap([[1, 1], [0, 1], [1, 1], [0, 0]], [[0, 0], [0, 0], [1, 1], [0, 0]])
    >>> d.estimate, d.low >= 0, d.high <= 0.75
    (0.375, True, True)
    """
    import numpy as np
    from scipy import stats

    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a.ndim != 2 or b.ndim != 2 or len(a) != len(b) or len(a) < 2:
        raise ValueError(f"need one row per problem (at least two, the same number for both arms) of per-seed scores, "
                         f"got shapes {a.shape} and {b.shape}")
    gaps = a.mean(axis=1) - b.mean(axis=1)  # (P,): per problem, the seeds' mean of a minus b's
    estimate = float(gaps.mean())
    if np.ptp(gaps) == 0:  # every problem the same gap: no spread to resample
        return Difference(estimate, estimate, estimate, 0.0, float("inf"), confidence)
    result = stats.bootstrap((gaps,), np.mean, confidence_level=confidence, n_resamples=n_resamples,
                             method="percentile", rng=np.random.default_rng(seed))
    return Difference(estimate, float(result.confidence_interval.low), float(result.confidence_interval.high),
                      float(result.standard_error), float("inf"), confidence)
