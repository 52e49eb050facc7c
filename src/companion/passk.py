"""pass@k, coverage, the sampling-efficiency gap and perplexity: the evaluation maths of chapter 7.

Everything here is pure (numpy, no torch) and works on counts: for each problem, how many of its n
sampled completions the verifier accepted.

**pass@k** (Chen et al. 2021, used by Yue et al. 2025, arXiv 2504.13837). Draw n samples, c of them
correct. The probability that k samples drawn without replacement from those n contain a correct one is

    pass@k = 1 − C(n−c, k) / C(n, k) = 1 − Π_{i=n−c+1}^{n} (1 − k/i),

an unbiased estimate of the chance that k fresh samples solve the problem. The binomials leave the
float range just past n = 1024 (C(1024, 512) ≈ 4.5·10^306, C(1030, 515) > 1.8·10^308, the largest
float), so we use the product: every factor lies in [0, 1), nothing overflows, and the rounding error
is about c machine epsilons.

**Curves** average pass@k over problems for k = 1, 2, 4, …, n. Their uncertainty comes mostly from which
problems were drawn, so the confidence band is a percentile bootstrap over problems.

**Coverage** is the set of problems a model solves with at least one of its n samples: pass@n, as a set.
Comparing two models' sets asks Yue et al.'s question directly: does the trained model solve anything
the base model cannot?

>>> base = {"p1": 0, "p2": 3, "p3": 1}     # correct samples out of n = 4
>>> rl = {"p1": 0, "p2": 4, "p3": 0}
>>> [round(pass_at_k_curve(counts, 4, n_bootstrap=0)[1].estimate, 4) for counts in (base, rl)]   # same pass@1
[0.3333, 0.3333]
>>> sorted(compare_coverage(rl, base)["only_b"])   # but one problem only the base model ever solves
['p3']
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import NamedTuple, Union

import numpy as np

Counts = Union[Mapping[Hashable, int], Sequence[int], np.ndarray]
"""Correct samples per problem: a mapping problem id -> count, or a sequence (ids are the positions)."""


# --- pass@k for one problem -------------------------------------------------------------------------------


def _integer(name: str, value) -> int:
    """``value`` as an int, accepting integral floats (counts often come out of ``rewards.sum()``)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be an integer, got {value!r} of type {type(value).__name__}")
    if not float(value).is_integer():
        raise ValueError(f"{name} must be a whole number, got {value!r}")
    return int(value)


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k of one problem with ``c`` correct out of ``n`` samples: 1 − C(n−c, k)/C(n, k).

    Computed as 1 − Π_{i=n−c+1}^{n} (1 − k/i), which never overflows; 1.0 when n − c < k (every k-subset
    then holds a correct sample).

    >>> pass_at_k(10, 0, 5), pass_at_k(10, 10, 1)
    (0.0, 1.0)
    >>> pass_at_k(4, 1, 2)   # C(3, 2)/C(4, 2) = 3/6 of the pairs miss the correct sample
    0.5
    >>> round(pass_at_k(1024, 3, 256), 6)   # 3 lucky samples out of 1024, and a budget of 256 tries
    0.578538
    >>> pass_at_k(4, 5, 2)
    Traceback (most recent call last):
    ...
    ValueError: c (correct samples) must be between 0 and n = 4, got c = 5
    """
    n, c, k = _integer("n", n), _integer("c", c), _integer("k", k)
    if n < 1:
        raise ValueError(f"n (samples per problem) must be at least 1, got n = {n}")
    if not 0 <= c <= n:
        raise ValueError(f"c (correct samples) must be between 0 and n = {n}, got c = {c}")
    if not 1 <= k <= n:
        raise ValueError(f"k must be between 1 and n = {n} (pass@k needs k of the n samples), got k = {k}")
    if n - c < k:
        return 1.0
    # Multiply from i = n downwards: the same order as the cumulative product in _pass_at_k_table,
    # so the scalar and vectorised estimators agree to the last bit.
    miss = 1.0
    for i in range(n, n - c, -1):
        miss *= 1.0 - k / i
    return 1.0 - miss


def _pass_at_k_table(n: int, ks: Sequence[int]) -> np.ndarray:
    """pass@k for every c = 0..n at once: row j holds k = ks[j]. Shape (len(ks), n + 1)."""
    i = np.arange(n, 0, -1)  # (n,) the factors' i, in the order pass_at_k multiplies them
    table = np.empty((len(ks), n + 1))
    for row, k in enumerate(ks):
        # (n,) miss[c-1] = Π_{i=n-c+1}^{n} (1 - k/i). Once the product reaches the factor i = k, which is
        # exactly 0, it stays (±)0: pass@k = 1 for every c with n - c < k, with no special case.
        miss = np.cumprod(1.0 - k / i)
        table[row, 0] = 0.0
        table[row, 1:] = 1.0 - miss
    return table


# --- many problems: per-problem matrix and curves ---------------------------------------------------------


def _as_counts(correct_counts: Counts, name: str = "correct_counts") -> tuple[list, np.ndarray]:
    """Problem ids and a (P,) int array of counts; ids are the positions when no mapping is given."""
    if isinstance(correct_counts, Mapping):
        ids, array = list(correct_counts.keys()), np.asarray(list(correct_counts.values()))
    else:
        array = np.asarray(correct_counts)
        ids = list(range(len(array))) if array.ndim == 1 else []
    if array.ndim != 1:
        raise ValueError(f"{name} must be one count per problem (1-D), got shape {array.shape}")
    if array.size == 0:
        raise ValueError(f"{name} is empty: pass at least one problem's count of correct samples")
    if array.dtype.kind == "b":
        raise ValueError(f"{name} holds booleans; pass the number of correct samples per problem "
                         "(e.g. verdicts.sum(axis=1)), not whether each problem was solved")
    if array.dtype.kind not in "iuf" or not np.all(np.isfinite(array)) or np.any(array != np.round(array)):
        raise ValueError(f"{name} must be whole numbers of correct samples, got {array[:5].tolist()}...")
    if np.any(array < 0):
        bad = int(np.flatnonzero(array < 0)[0])
        raise ValueError(f"{name} must be non-negative; problem {ids[bad]!r} has {array[bad]}")
    return ids, array.astype(np.int64)


def _as_n(n, ids: list, counts: Mapping | Sequence | np.ndarray) -> np.ndarray:
    """Samples per problem as a (P,) int array; ``n`` is one int, a sequence, or a mapping keyed like the counts."""
    if isinstance(n, Mapping):
        if not isinstance(counts, Mapping) or set(n) != set(ids):
            raise ValueError("n as a mapping needs correct_counts to be a mapping with the same problem ids")
        n = [n[i] for i in ids]
    if np.ndim(n) == 0:
        return np.full(len(ids), _integer("n", n), dtype=np.int64)
    per_problem = np.array([_integer("n", value) for value in n], dtype=np.int64)
    if per_problem.shape != (len(ids),):
        raise ValueError(f"n must be one int or one per problem: got {per_problem.size} values for {len(ids)} problems")
    return per_problem


def default_ks(n: int) -> list[int]:
    """k = 1, 2, 4, … up to n, with n itself appended when it is not a power of two.

    >>> default_ks(16), default_ks(12), default_ks(1)
    ([1, 2, 4, 8, 16], [1, 2, 4, 8, 12], [1])
    """
    n = _integer("n", n)
    if n < 1:
        raise ValueError(f"n (samples per problem) must be at least 1, got n = {n}")
    ks = [2**j for j in range(n.bit_length()) if 2**j <= n]
    return ks if ks[-1] == n else ks + [n]


def pass_at_k_per_problem(correct_counts: Counts, n, ks: Sequence[int]) -> np.ndarray:
    """The (P, K) matrix of pass@k: row p is problem p (in the counts' order), column j is k = ks[j].

    ``n`` is the samples per problem: one int, or one per problem (a sequence, or a mapping keyed like
    ``correct_counts``). Every k must be at most the smallest n.

    >>> pass_at_k_per_problem([0, 1, 4], 4, [1, 2, 4])
    array([[0.  , 0.  , 0.  ],
           [0.25, 0.5 , 1.  ],
           [1.  , 1.  , 1.  ]])
    >>> pass_at_k_per_problem([1, 1], [2, 4], [1, 2])
    array([[0.5 , 1.  ],
           [0.25, 0.5 ]])
    """
    counts, samples, ks = _validated(correct_counts, n, ks)
    return _per_problem_matrix(counts, samples, ks)


def _validated(correct_counts: Counts, n, ks: Sequence[int] | None) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """Checked (P,) counts, (P,) samples per problem and ks (default: :func:`default_ks` of the smallest n)."""
    ids, counts = _as_counts(correct_counts)
    samples = _as_n(n, ids, correct_counts)
    _check_counts_fit(ids, counts, samples)
    n_min = int(samples.min())
    return counts, samples, _check_ks(default_ks(n_min) if ks is None else ks, n_min)


def _per_problem_matrix(counts: np.ndarray, samples: np.ndarray, ks: list[int]) -> np.ndarray:
    matrix = np.empty((counts.size, len(ks)))  # (P, K)
    for n_value in np.unique(samples):  # one table per distinct n, then a lookup by c
        rows = samples == n_value
        matrix[rows] = _pass_at_k_table(int(n_value), ks)[:, counts[rows]].T
    return matrix


def _check_counts_fit(ids: list, counts: np.ndarray, samples: np.ndarray) -> None:
    if np.any(samples < 1):
        bad = int(np.flatnonzero(samples < 1)[0])
        raise ValueError(f"n (samples per problem) must be at least 1; problem {ids[bad]!r} has n = {samples[bad]}")
    if np.any(counts > samples):
        bad = int(np.flatnonzero(counts > samples)[0])
        raise ValueError(f"problem {ids[bad]!r} has {counts[bad]} correct samples but only n = {samples[bad]} samples;"
                         " a count cannot exceed n")


def _check_ks(ks: Sequence[int], n_min: int) -> list[int]:
    if np.ndim(ks) != 1 or len(ks) == 0:
        raise ValueError(f"ks must be a non-empty list of k values, got {ks!r}")
    ks = [_integer("k", k) for k in ks]
    bad = [k for k in ks if not 1 <= k <= n_min]
    if bad:
        raise ValueError(f"every k must be between 1 and the smallest n = {n_min}; got {bad}")
    return ks


class PassAtK(NamedTuple):
    """One point of a pass@k curve: the mean over problems and its bootstrap confidence interval."""

    k: int
    estimate: float  # mean over problems of the unbiased per-problem pass@k
    low: float | None  # lower end of the percentile bootstrap interval (None when n_bootstrap = 0)
    high: float | None  # upper end


def pass_at_k_curve(correct_counts: Counts, n, ks: Sequence[int] | None = None, *, n_bootstrap: int = 1000,
                    confidence: float = 0.95, seed: int | None = 0) -> dict[int, PassAtK]:
    """Mean pass@k over problems for each k, with a percentile bootstrap interval over problems.

    Args:
        correct_counts: correct samples per problem (mapping id -> count, or a sequence).
        n: samples per problem: one int, or one per problem (sequence, or mapping keyed like the counts).
        ks: the k values; default :func:`default_ks` of the smallest n (1, 2, 4, …, n).
        n_bootstrap: bootstrap resamples of the problems; 0 skips the interval (``low = high = None``).
        confidence: coverage of the interval, in (0, 1).
        seed: seeds the resampling, so the same data and seed give the same interval (None: fresh entropy).

    Returns:
        ``{k: PassAtK(k, estimate, low, high)}`` in increasing k. ``PassAtK`` is a NamedTuple, so
        ``[p._asdict() for p in curve.values()]`` gives tidy records for a plot.

    The per-problem (P, K) matrix is computed once; each bootstrap replicate redraws P problems with
    replacement and averages their rows.

    >>> curve = pass_at_k_curve([0, 1, 4], 4, n_bootstrap=0)
    >>> [round(p.estimate, 4) for p in curve.values()]
    [0.4167, 0.5, 0.6667]
    >>> curve = pass_at_k_curve([0, 1, 2, 3, 4] * 10, 4, ks=[1, 4], seed=0)
    >>> point = curve[1]
    >>> point.k, point.estimate, point.low < point.estimate < point.high
    (1, 0.5, True)
    """
    n_bootstrap = _integer("n_bootstrap", n_bootstrap)
    if n_bootstrap < 0:
        raise ValueError(f"n_bootstrap must be 0 (no interval) or a positive number of resamples, got {n_bootstrap}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be strictly between 0 and 1 (e.g. 0.95), got {confidence}")
    counts, samples, ks = _validated(correct_counts, n, ks)
    ks = sorted(set(ks))
    matrix = _per_problem_matrix(counts, samples, ks)  # (P, K)
    estimates = matrix.mean(axis=0)  # (K,)
    if n_bootstrap == 0:
        return {k: PassAtK(k, float(e), None, None) for k, e in zip(ks, estimates)}
    means = _bootstrap_means(matrix, n_bootstrap, np.random.default_rng(seed))  # (B, K)
    tail = (1 - confidence) / 2
    lows, highs = np.quantile(means, [tail, 1 - tail], axis=0)  # (K,) each
    return {k: PassAtK(k, float(e), float(lo), float(hi)) for k, e, lo, hi in zip(ks, estimates, lows, highs)}


def _bootstrap_means(matrix: np.ndarray, n_bootstrap: int, rng: np.random.Generator) -> np.ndarray:
    """Column means of ``n_bootstrap`` resamples of the rows of ``matrix`` (P, K). Returns (B, K)."""
    num_problems = matrix.shape[0]
    # Resample indices, then count how often each problem was drawn: a (chunk, P) count matrix times the
    # (P, K) pass@k matrix gives the resampled sums in one BLAS call, without a (chunk, P, K) gather.
    chunk = max(1, 2**20 // num_problems)  # bounds the (chunk, P) draws to ~8 MB
    means = np.empty((n_bootstrap, matrix.shape[1]))
    for start in range(0, n_bootstrap, chunk):
        rows = min(chunk, n_bootstrap - start)
        draws = rng.integers(0, num_problems, size=(rows, num_problems))  # (rows, P)
        offsets = np.arange(rows)[:, None] * num_problems
        times_drawn = np.bincount((draws + offsets).ravel(), minlength=rows * num_problems).reshape(rows, num_problems)
        means[start:start + rows] = times_drawn @ matrix / num_problems
    return means


# --- where two curves cross ----------------------------------------------------------------------------------


TIE = 1e-9
"""Mean pass@k gaps no larger than this are a tie (float rounding of two curves that are level)."""


class Crossover(NamedTuple):
    """Where the base model's pass@k curve overtakes a trained model's: the smallest k (of the ks compared) with
    base pass@k > trained pass@k, strictly (two curves level at the ceiling of 1 are a tie, not an overtaking), and
    its bootstrap interval over problems. ``k`` is None when the base is not ahead at any k up to the largest;
    ``low``/``high`` are None when a bound lies past it (the interval is open there)."""

    k: int | None
    low: int | None
    high: int | None
    never: float  # share of bootstrap replicates in which the curves do not cross up to the largest k


def _paired(first: tuple[str, Mapping], second: tuple[str, Mapping], n: int,
            ks: Sequence[int] | None) -> tuple[list, list[int]]:
    """The problem ids two models share (in the second's order) and the sorted ks, after checking that both are mappings over the same
    problems (else a TypeError / ValueError that says what to change)."""
    for name, counts in (first, second):
        if not isinstance(counts, Mapping):
            raise TypeError(f"{name} must map problem ids to correct-sample counts, so that the problems can be "
                            f"matched; got {type(counts).__name__}")
    (_, a), (_, b) = first, second
    if set(a) != set(b):
        only = sorted(map(repr, set(a) ^ set(b)))[:5]
        raise ValueError(f"the two curves are over different problems ({len(a)} vs {len(b)}; in one "
                         f"only: {', '.join(only)}): evaluate both models on the same problems")
    return list(b), sorted(set(default_ks(n) if ks is None else _check_ks(ks, _integer("n", n))))


def crossover(trained: Mapping[Hashable, int], base: Mapping[Hashable, int], n: int, ks: Sequence[int] | None = None,
              *, n_bootstrap: int = 1000, confidence: float = 0.95, seed: int | None = 0) -> Crossover:
    """The k at which the base model's pass@k overtakes a trained model's (Yue et al., arXiv 2504.13837), with a
    paired percentile bootstrap: each replicate redraws the problems, the same for both models, and finds its own
    crossing.

    Both are correct-sample counts over the same problems (mappings with the same ids), with the same ``n``
    samples per problem: curves over other problems or another n do not compare, and are refused, saying what
    differs.

    >>> sharp = {p: c for p, c in enumerate([16] * 4 + [0] * 6)}      # all or nothing: pass@1 = 0.4
    >>> diffuse = {p: c for p, c in enumerate([4] * 8 + [0] * 2)}     # often a little: pass@1 = 0.2
    >>> crossover(sharp, diffuse, 16, n_bootstrap=0).k                # base ahead from k = 4 (0.58 vs 0.40)
    4
    >>> crossover(sharp, sharp, 16, n_bootstrap=0).k is None          # equal curves: a tie, never an overtaking
    True
    >>> crossover(sharp, {p: 0 for p in sharp}, 16, n_bootstrap=0)   # a base that solves nothing never catches up
    Crossover(k=None, low=None, high=None, never=1.0)
    """
    ids, ks = _paired(("trained", trained), ("base", base), n, ks)
    rows = [pass_at_k_per_problem([counts[i] for i in ids], n, ks) for counts in (trained, base)]
    gap = rows[1] - rows[0]  # (P, K) base minus trained, per problem

    def first_crossing(mean_gap: np.ndarray) -> np.ndarray:  # (..., K) -> (...,) index of the first k, K if none
        ahead = mean_gap > TIE  # strictly ahead: level curves (both at 1, say) do not count
        return np.where(ahead.any(axis=-1), ahead.argmax(axis=-1), len(ks))

    point = int(first_crossing(gap.mean(axis=0)))
    k = ks[point] if point < len(ks) else None
    if n_bootstrap == 0:
        return Crossover(k, None, None, float(point == len(ks)))
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be strictly between 0 and 1 (e.g. 0.95), got {confidence}")
    replicates = first_crossing(_bootstrap_means(gap, _integer("n_bootstrap", n_bootstrap),
                                                 np.random.default_rng(seed)))  # (B,)
    tail = (1 - confidence) / 2
    low, high = (int(q) for q in np.quantile(replicates, [tail, 1 - tail], method="nearest"))
    return Crossover(k, ks[low] if low < len(ks) else None, ks[high] if high < len(ks) else None,
                     float(np.mean(replicates == len(ks))))


class PairedDifference(NamedTuple):
    """Mean pass@k of model b minus model a over the same problems, with its paired bootstrap interval."""

    k: int
    difference: float
    low: float | None
    high: float | None


def paired_difference(a: Mapping[Hashable, int], b: Mapping[Hashable, int], n: int, ks: Sequence[int] | None = None,
                      *, n_bootstrap: int = 1000, confidence: float = 0.95,
                      seed: int | None = 0) -> dict[int, PairedDifference]:
    """pass@k of ``b`` minus pass@k of ``a`` for each k, with a paired percentile bootstrap: each replicate redraws
    the problems, the same for both. Two models' separate bands can overlap while the paired interval excludes 0,
    since most of a band's width is which problems were drawn, and that is shared.

    >>> early = {p: c for p, c in enumerate([2] * 50 + [0] * 50)}   # n = 4: half the problems, half the time
    >>> late = {p: c for p, c in enumerate([4] * 40 + [0] * 60)}    # fewer problems, always
    >>> d = paired_difference(early, late, 4, [1, 4], seed=0)
    >>> round(d[1].difference, 3), round(d[4].difference, 3)        # pass@1 up, pass@4 down
    (0.15, -0.1)
    >>> d[4].high < 0
    True
    """
    ids, ks = _paired(("b", b), ("a", a), n, ks)  # the ids in a's order
    gap = (pass_at_k_per_problem([b[i] for i in ids], n, ks)
           - pass_at_k_per_problem([a[i] for i in ids], n, ks))  # (P, K)
    estimates = gap.mean(axis=0)
    n_bootstrap = _integer("n_bootstrap", n_bootstrap)
    if n_bootstrap <= 0:
        return {k: PairedDifference(k, float(e), None, None) for k, e in zip(ks, estimates)}
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be strictly between 0 and 1 (e.g. 0.95), got {confidence}")
    means = _bootstrap_means(gap, n_bootstrap, np.random.default_rng(seed))
    tail = (1 - confidence) / 2
    lows, highs = np.quantile(means, [tail, 1 - tail], axis=0)
    return {k: PairedDifference(k, float(e), float(lo), float(hi))
            for k, e, lo, hi in zip(ks, estimates, lows, highs)}


# --- coverage ------------------------------------------------------------------------------------------------


def coverage(correct_counts: Counts) -> frozenset:
    """The problems solved by at least one sample (ids, or positions for a sequence).

    >>> sorted(coverage({"a": 0, "b": 2, "c": 1}))
    ['b', 'c']
    >>> sorted(coverage([0, 3, 0, 1]))
    [1, 3]
    """
    ids, counts = _as_counts(correct_counts)
    return frozenset(ids[p] for p in np.flatnonzero(counts > 0))


def compare_coverage(a: Counts, b: Counts) -> dict:
    """How two models' coverages overlap on the same problems.

    ``a`` and ``b`` are correct-sample counts over the same problems (mappings with the same ids, or
    sequences of the same length). Returns a dict with the ids in ``"both"``, ``"only_a"``, ``"only_b"``,
    ``"neither"`` (frozensets, which partition the problems) and their sizes in ``"n_both"``,
    ``"n_only_a"``, ``"n_only_b"``, ``"n_neither"``. Yue et al.'s finding "the RL model solves nothing the
    base model cannot" reads ``compare_coverage(rl, base)["n_only_a"] == 0``.

    >>> result = compare_coverage([3, 0, 1, 0], [2, 5, 0, 0])
    >>> sorted(result["both"]), sorted(result["only_a"]), sorted(result["only_b"]), sorted(result["neither"])
    ([0], [2], [1], [3])
    >>> result["n_both"], result["n_only_a"], result["n_only_b"], result["n_neither"]
    (1, 1, 1, 1)
    """
    ids_a, _ = _as_counts(a, "a")
    ids_b, _ = _as_counts(b, "b")
    if isinstance(a, Mapping) != isinstance(b, Mapping):
        raise ValueError("a and b must both be mappings (problem id -> count) or both sequences")
    if set(ids_a) != set(ids_b) or len(ids_a) != len(ids_b):
        missing = sorted(map(repr, set(ids_a) ^ set(ids_b)))[:5]
        raise ValueError(f"a and b must cover the same problems ({len(ids_a)} vs {len(ids_b)} problems;"
                         f" ids in one only: {missing or 'none'})")
    solved_a, solved_b, everything = coverage(a), coverage(b), frozenset(ids_a)
    result = {
        "both": solved_a & solved_b,
        "only_a": solved_a - solved_b,
        "only_b": solved_b - solved_a,
        "neither": everything - solved_a - solved_b,
    }
    return result | {f"n_{name}": len(ids) for name, ids in list(result.items())}


# --- the sampling-efficiency gap -----------------------------------------------------------------------------


def delta_se(trained_pass1: float, base_pass_n: float) -> float:
    """Yue et al.'s sampling-efficiency gap ΔSE = pass@n(base) − pass@1(trained), as fractions.

    The base model's pass@k at large k (they use k = 256) stands in for the best pass@1 that sampling
    from the base model could ever reach; ΔSE is how far the trained model's pass@1 falls short of it.
    Sign: their text says "the difference between the RL-trained model's pass@1 and the base model's
    pass@k", but they report ΔSE as positive numbers (GRPO 43.9, RLOO 42.6 points, "consistently above 40")
    and state "lower ΔSE is better", so it is base minus trained, as computed here: positive when the
    trained model's pass@1 is below the base model's ceiling, 0 when it reaches it, negative if it
    goes beyond. (DESIGN.md writes the difference the other way round; the values here match theirs.)

    Both arguments are fractions in [0, 1]; divide percentages by 100 (and multiply the result by 100
    to compare with their points).

    >>> round(delta_se(trained_pass1=0.744, base_pass_n=0.962), 3)   # Qwen2.5-7B, MATH500, GRPO vs base
    0.218
    """
    for name, value in (("trained_pass1", trained_pass1), ("base_pass_n", base_pass_n)):
        if not isinstance(value, (int, float, np.integer, np.floating)) or not 0 <= value <= 1:
            raise ValueError(f"{name} must be a pass rate between 0 and 1, got {value!r}"
                             " (divide a percentage by 100)")
    return float(base_pass_n) - float(trained_pass1)


def delta_se_from_curves(trained: Mapping[int, PassAtK | float], base: Mapping[int, PassAtK | float],
                         k: int | None = None) -> float:
    """ΔSE from two pass@k curves: base pass@k (default: its largest k, i.e. k = n) − trained pass@1.

    Curves are what :func:`pass_at_k_curve` returns, or plain ``{k: value}`` mappings.

    >>> trained = pass_at_k_curve([4, 4, 0, 0], 4, n_bootstrap=0)   # sharp: all or nothing
    >>> base = pass_at_k_curve([1, 2, 1, 1], 4, n_bootstrap=0)      # diffuse: solves all, rarely
    >>> trained[1].estimate, base[4].estimate, delta_se_from_curves(trained, base)
    (0.5, 1.0, 0.5)
    """
    def value(curve: Mapping, key: int, name: str) -> float:
        if key not in curve:
            raise ValueError(f"the {name} curve has no k = {key}; it has k in {sorted(curve)}")
        point = curve[key]
        return float(point.estimate if isinstance(point, PassAtK) else point)

    k = max(base) if k is None else _integer("k", k)
    return delta_se(value(trained, 1, "trained"), value(base, k, "base"))


# --- perplexity ---------------------------------------------------------------------------------------------


def _as_float_array(name: str, x) -> np.ndarray:
    if hasattr(x, "detach"):  # a torch tensor: leave the graph, the device and bf16 behind, without importing torch
        x = x.detach().cpu().double().numpy()
    try:
        return np.asarray(x, dtype=np.float64)
    except (ValueError, TypeError) as error:
        raise ValueError(f"{name} must be a rectangular (num_sequences, num_tokens) array; pad ragged rows and"
                         f" mask the padding out ({error})") from None


def perplexity(per_token_logps, mask=None) -> np.ndarray:
    """Per-sequence perplexity exp(−mean of the masked per-token log-probs). Returns shape (B,).

    This is Yue et al.'s PPL_m(Y | x) when ``per_token_logps[b, t] = log P_m(y_t | x, y_<t)`` scores one
    model's completions under another model m. Accepts nested lists, numpy arrays or torch tensors of
    shape (B, T); ``mask`` (B, T) marks the completion tokens (``completion_mask``), default all.
    Padding positions are ignored whatever they hold (even -inf or nan).

    >>> import math
    >>> ppl = perplexity([[math.log(0.5), math.log(0.5), 0.0], [math.log(0.25), -99.0, -99.0]],
    ...                  mask=[[1, 1, 1], [1, 0, 0]])
    >>> [round(p, 4) for p in ppl.tolist()]
    [1.5874, 4.0]
    """
    logps = _as_float_array("per_token_logps", per_token_logps)
    if logps.ndim != 2:
        raise ValueError(f"per_token_logps must have shape (num_sequences, num_tokens), got shape {logps.shape}")
    keep = np.ones_like(logps, dtype=bool) if mask is None else _as_float_array("mask", mask) != 0
    if keep.shape != logps.shape:
        raise ValueError(f"mask shape {keep.shape} must match per_token_logps shape {logps.shape}")
    lengths = keep.sum(axis=1)  # (B,)
    if np.any(lengths == 0):
        raise ValueError(f"sequence {int(np.flatnonzero(lengths == 0)[0])} has no tokens in the mask;"
                         " perplexity needs at least one token per sequence (drop empty completions)")
    kept = logps[keep]
    if not np.all(np.isfinite(kept)):
        raise ValueError("per_token_logps has a non-finite value on a masked token (a zero-probability token"
                         " gives -inf); check the mask or clamp the log-probs")
    if np.any(kept > 1e-6):
        raise ValueError(f"per_token_logps must be log-probabilities (<= 0); the largest is {kept.max():.3g}."
                         " Did you pass logits or probabilities?")
    total = np.where(keep, logps, 0.0).sum(axis=1)  # (B,)
    return np.exp(-total / lengths)


def mean_perplexity(per_token_logps, mask=None) -> float:
    """Mean over sequences of :func:`perplexity` (each sequence counts once, whatever its length).

    >>> import math
    >>> mean_perplexity([[math.log(0.5)], [math.log(0.25)]])
    3.0
    """
    return float(perplexity(per_token_logps, mask).mean())
