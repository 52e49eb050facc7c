"""pass@k, curves, coverage, ΔSE and perplexity against brute force, exact rationals and hand-built data."""

import ast
import itertools
import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from companion.passk import (
    PassAtK,
    compare_coverage,
    coverage,
    default_ks,
    delta_se,
    delta_se_from_curves,
    mean_perplexity,
    pass_at_k,
    pass_at_k_curve,
    paired_difference,
    pass_at_k_per_problem,
    perplexity,
)

# --- the estimator ------------------------------------------------------------------------------------------


def brute_force_pass_at_k(n: int, c: int, k: int) -> Fraction:
    """The share of all k-subsets of the n samples that hold at least one of the c correct ones."""
    samples = [True] * c + [False] * (n - c)
    subsets = list(itertools.combinations(samples, k))
    return Fraction(sum(any(subset) for subset in subsets), len(subsets))


def test_estimator_equals_enumeration_of_all_k_subsets():
    checked = 0
    for n in range(1, 11):
        for c in range(n + 1):
            for k in range(1, n + 1):
                assert pass_at_k(n, c, k) == pytest.approx(float(brute_force_pass_at_k(n, c, k)), abs=1e-14), (n, c, k)
                checked += 1
    assert checked == sum(n * (n + 1) for n in range(1, 11))


@pytest.mark.parametrize("n", [1, 2, 7, 16, 100, 256, 1000, 1024, 4096])
def test_estimator_matches_the_exact_rational_formula(n):
    cs = sorted({0, 1, 2, n // 3, n // 2, n - 1, n} & set(range(n + 1)))
    ks = sorted({1, 2, n // 4, n // 2, n - 1, n} & set(range(1, n + 1)))
    for c in cs:
        for k in ks:
            miss = Fraction(math.comb(n - c, k), math.comb(n, k))  # exact, arbitrary precision
            assert pass_at_k(n, c, k) == pytest.approx(float(1 - miss), abs=1e-12), (n, c, k)


def test_large_n_does_not_overflow_where_the_naive_ratio_does():
    with pytest.raises(OverflowError):
        float(math.comb(4096, 2048))  # the binomials of the textbook formula do not fit in a float
    value = pass_at_k(4096, 1, 2048)
    assert value == pytest.approx(0.5, abs=1e-12)  # one correct sample: pass@k = k/n


def test_in_unit_interval_and_monotone_in_k_for_n_1024():
    n = 1024
    ks = np.arange(1, n + 1)
    matrix = pass_at_k_per_problem(np.arange(n + 1), n, ks)  # every c, every k
    assert matrix.shape == (n + 1, n)
    assert np.all((matrix >= 0) & (matrix <= 1))
    assert np.all(np.diff(matrix, axis=1) >= 0), "pass@k must not decrease with k"
    assert np.all(np.diff(matrix, axis=0) >= 0), "pass@k must not decrease with c"
    np.testing.assert_allclose(matrix[:, 0], np.arange(n + 1) / n, atol=1e-12)  # pass@1 = c/n
    np.testing.assert_array_equal(matrix[:, -1], (np.arange(n + 1) > 0).astype(float))  # pass@n: solved at all


def test_vectorised_matrix_equals_scalar_estimator_bit_for_bit():
    rng = np.random.default_rng(0)
    n = rng.integers(3, 300, size=50)
    counts = rng.integers(0, n + 1)
    ks = [1, 3, int(n.min())]
    matrix = pass_at_k_per_problem(counts, n, ks)
    expected = [[pass_at_k(int(n_p), int(c_p), k) for k in ks] for n_p, c_p in zip(n, counts)]
    np.testing.assert_array_equal(matrix, np.array(expected))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((4, 1, 5), "k must be between 1 and n = 4"),
        ((4, 1, 0), "k must be between 1 and n = 4"),
        ((4, 5, 1), "c (correct samples) must be between 0 and n = 4, got c = 5"),
        ((4, -1, 1), "c (correct samples) must be between 0 and n = 4, got c = -1"),
        ((0, 0, 1), "n (samples per problem) must be at least 1"),
        ((-3, 0, 1), "n (samples per problem) must be at least 1"),
        ((4.5, 1, 1), "n must be a whole number"),
    ],
)
def test_bad_input_says_what_is_wrong_and_what_is_allowed(args, message):
    with pytest.raises(ValueError) as error:
        pass_at_k(*args)
    assert message in str(error.value)


def test_non_numbers_are_a_type_error():
    with pytest.raises(TypeError, match="k must be an integer"):
        pass_at_k(4, 1, "2")


def test_integral_floats_are_accepted_as_counts():
    assert pass_at_k(4.0, 1.0, 2.0) == pass_at_k(4, 1, 2)
    assert pass_at_k(np.int64(4), np.int32(1), np.uint8(2)) == 0.5


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 2000).flatmap(lambda n: st.tuples(st.just(n), st.integers(0, n), st.integers(1, n))))
def test_properties_of_the_estimator(nck):
    n, c, k = nck
    value = pass_at_k(n, c, k)
    assert 0.0 <= value <= 1.0
    if c == 0:
        assert value == 0.0
    if n - c < k:
        assert value == 1.0
    if k < n:
        assert pass_at_k(n, c, k + 1) >= value
    if c < n:
        assert pass_at_k(n, c + 1, k) >= value
    assert pass_at_k(n, c, 1) == pytest.approx(c / n, abs=1e-12)
    assert value == pytest.approx(float(1 - Fraction(math.comb(n - c, k), math.comb(n, k))), abs=1e-12)


# --- curves ---------------------------------------------------------------------------------------------------


def test_default_ks_are_powers_of_two_ending_at_n():
    assert default_ks(1024) == [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024]
    assert default_ks(100) == [1, 2, 4, 8, 16, 32, 64, 100]
    assert default_ks(3) == [1, 2, 3]
    assert list(pass_at_k_curve([1, 2], 6, n_bootstrap=0)) == [1, 2, 4, 6]


@pytest.mark.parametrize("n", [1, 5, 64])
def test_curve_of_all_wrong_and_all_right(n):
    for counts, expected in (([0] * 7, 0.0), ([n] * 7, 1.0)):
        for point in pass_at_k_curve(counts, n, seed=3).values():
            assert (point.estimate, point.low, point.high) == (expected, expected, expected)


def test_curve_with_one_solved_problem_among_four():
    n = 8
    curve = pass_at_k_curve([0, 0, 2, 0], n, n_bootstrap=2000)
    for k, point in curve.items():
        assert isinstance(point, PassAtK) and point.k == k
        assert point.estimate == pytest.approx((1 - math.comb(n - 2, k) / math.comb(n, k)) / 4, abs=1e-15)
        # The solved problem is drawn Binomial(4, 1/4) times: 0 times in 32% of resamples (the 2.5% point),
        # at most twice in 95%, so the 97.5% point is a resample holding it three times.
        assert point.low == 0.0
        assert point.high == pytest.approx(3 * point.estimate, abs=1e-15)
    assert curve[n].estimate == 0.25


def test_curve_is_the_mean_of_per_problem_rows_and_accepts_mappings():
    counts = {"a": 3, "b": 0, "c": 16, "d": 9}
    matrix = pass_at_k_per_problem(counts, 16, [1, 4, 16])
    curve = pass_at_k_curve(counts, 16, ks=[16, 4, 1, 4], n_bootstrap=0)
    assert list(curve) == [1, 4, 16]  # sorted, duplicates merged
    assert [p.estimate for p in curve.values()] == pytest.approx(matrix.mean(axis=0).tolist(), abs=1e-15)
    assert all(p.low is None and p.high is None for p in curve.values())


def test_per_problem_n_as_sequence_or_mapping():
    counts = {"easy": 9, "hard": 1}
    by_mapping = pass_at_k_curve(counts, {"hard": 4, "easy": 10}, n_bootstrap=0)
    by_sequence = pass_at_k_curve([9, 1], [10, 4], n_bootstrap=0)
    assert list(by_sequence) == [1, 2, 4]  # ks stop at the smallest n
    for k in by_sequence:
        expected = (pass_at_k(10, 9, k) + pass_at_k(4, 1, k)) / 2
        assert by_sequence[k].estimate == by_mapping[k].estimate == pytest.approx(expected, abs=1e-15)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(correct_counts=[], n=4), "empty"),
        (dict(correct_counts=[1, 5], n=4), "problem 1 has 5 correct samples but only n = 4"),
        (dict(correct_counts={"x": -1}, n=4), "problem 'x' has -1"),
        (dict(correct_counts=[1.5], n=4), "whole numbers"),
        (dict(correct_counts=[True, False], n=4), "booleans"),
        (dict(correct_counts=[[1, 2]], n=4), "1-D"),
        (dict(correct_counts=[1, 2], n=[4, 4, 4]), "got 3 values for 2 problems"),
        (dict(correct_counts=[1, 2], n={"a": 4, "b": 4}), "same problem ids"),
        (dict(correct_counts=[1, 2], n=[4, 8], ks=[8]), "smallest n = 4; got [8]"),
        (dict(correct_counts=[1, 2], n=4, ks=[]), "non-empty"),
        (dict(correct_counts=[1, 2], n=4, n_bootstrap=-1), "n_bootstrap"),
        (dict(correct_counts=[1, 2], n=4, confidence=95), "confidence must be strictly between 0 and 1"),
    ],
)
def test_curve_bad_input(kwargs, message):
    with pytest.raises(ValueError) as error:
        pass_at_k_curve(**kwargs)
    assert message in str(error.value)


def _mixed_problems(num_problems: int, n: int, seed: int) -> np.ndarray:
    """Counts for problems of spread-out difficulty, a fifth of them never solved."""
    rng = np.random.default_rng(seed)
    p = rng.beta(0.5, 1.0, size=num_problems) * (rng.random(num_problems) > 0.2)
    return rng.binomial(n, p)


def test_bootstrap_is_seeded_contains_the_estimate_and_shrinks_with_more_problems():
    n = 64
    counts = _mixed_problems(50, n, seed=1)
    first = pass_at_k_curve(counts, n, seed=7)
    assert first == pass_at_k_curve(counts, n, seed=7)  # same seed, same intervals
    assert first != pass_at_k_curve(counts, n, seed=8)
    for point in first.values():
        assert point.low <= point.estimate <= point.high
        assert point.low < point.high
    many = pass_at_k_curve(_mixed_problems(800, n, seed=2), n, seed=7)
    for k in first:
        narrow, wide = many[k].high - many[k].low, first[k].high - first[k].low
        assert narrow < 0.5 * wide, (k, narrow, wide)  # 16x the problems: about a quarter the width


def test_wider_confidence_gives_a_wider_interval():
    counts = _mixed_problems(100, 16, seed=4)
    narrow = pass_at_k_curve(counts, 16, confidence=0.5)
    wide = pass_at_k_curve(counts, 16, confidence=0.99)
    for k in narrow:
        assert wide[k].low < narrow[k].low <= narrow[k].high < wide[k].high


@pytest.mark.parametrize("confidence", [0.95, 0.8])
def test_bootstrap_interval_has_the_binomial_quantiles_for_half_solved_problems(confidence):
    """100 problems, half solved: a resampled mean is Binomial(100, 1/2)/100, whose quantiles are exact."""
    num_problems = 100
    pmf = [math.comb(num_problems, j) / 2**num_problems for j in range(num_problems + 1)]
    cdf = np.cumsum(pmf)
    tail = (1 - confidence) / 2
    expected_low = int(np.searchsorted(cdf, tail)) / num_problems  # smallest j with P(X <= j) >= tail
    expected_high = int(np.searchsorted(cdf, 1 - tail)) / num_problems
    point = pass_at_k_curve([0, 1] * 50, 1, n_bootstrap=20_000, confidence=confidence, seed=0)[1]
    assert (point.low, point.high) == pytest.approx((expected_low, expected_high), abs=1e-12)


def test_bootstrap_interval_matches_a_direct_resampling_in_distribution():
    """Our counts-times-matrix bootstrap against a slow per-replicate loop: same spread, different draws."""
    counts = _mixed_problems(60, 32, seed=5)
    rows = pass_at_k_per_problem(counts, 32, [1, 32])
    rng = np.random.default_rng(123)
    slow = np.array([rows[rng.integers(0, len(rows), len(rows))].mean(axis=0) for _ in range(4000)])
    fast = pass_at_k_curve(counts, 32, ks=[1, 32], n_bootstrap=4000, seed=0)
    for j, k in enumerate([1, 32]):
        low, high = np.quantile(slow[:, j], [0.025, 0.975])
        assert fast[k].low == pytest.approx(low, abs=0.02)
        assert fast[k].high == pytest.approx(high, abs=0.02)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(0, 12), min_size=1, max_size=40), st.integers(0, 2**32 - 1))
def test_bootstrap_properties(counts, seed):
    curve = pass_at_k_curve(counts, 12, n_bootstrap=200, seed=seed)
    previous = None
    for point in curve.values():
        assert 0.0 <= point.low <= point.estimate + 1e-12 and point.estimate <= point.high + 1e-12
        assert point.high <= 1.0
        if previous is not None:
            assert point.estimate >= previous.estimate
        previous = point


# --- coverage ---------------------------------------------------------------------------------------------------


def test_coverage_of_sequences_and_mappings():
    assert coverage([0, 0, 0]) == frozenset()
    assert coverage([4, 4]) == frozenset({0, 1})
    assert coverage(np.array([0, 1, 0, 7])) == frozenset({1, 3})
    assert coverage({"q1": 0, "q2": 1}) == frozenset({"q2"})


def test_compare_coverage_hand_built():
    base = {"a": 5, "b": 1, "c": 0, "d": 0, "e": 2}
    rl = {"a": 8, "b": 0, "c": 0, "d": 3, "e": 1}
    result = compare_coverage(rl, base)
    assert result == {
        "both": frozenset({"a", "e"}), "only_a": frozenset({"d"}), "only_b": frozenset({"b"}),
        "neither": frozenset({"c"}), "n_both": 2, "n_only_a": 1, "n_only_b": 1, "n_neither": 1,
    }


def test_compare_coverage_needs_the_same_problems():
    with pytest.raises(ValueError, match="same problems"):
        compare_coverage({"a": 1}, {"b": 1})
    with pytest.raises(ValueError, match="same problems"):
        compare_coverage([1, 2], [1, 2, 3])
    with pytest.raises(ValueError, match="both be mappings"):
        compare_coverage({0: 1}, [1])


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 3)), min_size=1, max_size=30))
def test_compare_coverage_partitions_the_problems(pairs):
    a, b = [x for x, _ in pairs], [y for _, y in pairs]
    result = compare_coverage(a, b)
    parts = [result[name] for name in ("both", "only_a", "only_b", "neither")]
    assert frozenset().union(*parts) == frozenset(range(len(pairs)))
    assert sum(len(part) for part in parts) == len(pairs)  # disjoint
    assert result["both"] | result["only_a"] == coverage(a)
    assert all(result[f"n_{name}"] == len(result[name]) for name in ("both", "only_a", "only_b", "neither"))


# --- ΔSE ----------------------------------------------------------------------------------------------------------


def test_delta_se_sign_follows_yue_et_al():
    # their reported values are positive and "lower is better": base pass@256 minus RL pass@1
    assert delta_se(trained_pass1=0.744, base_pass_n=0.962) == pytest.approx(0.218)
    assert delta_se(0.5, 0.5) == 0.0
    assert delta_se(0.9, 0.6) == pytest.approx(-0.3)  # a trained model beyond the base ceiling


def test_delta_se_rejects_percentages():
    with pytest.raises(ValueError, match="divide a percentage by 100"):
        delta_se(74.4, 96.2)


def test_delta_se_from_curves():
    trained = pass_at_k_curve([8, 8, 0, 0], 8, n_bootstrap=0)
    base = pass_at_k_curve([1, 2, 1, 3], 8, n_bootstrap=0)
    assert delta_se_from_curves(trained, base) == pytest.approx(1.0 - 0.5)
    assert delta_se_from_curves(trained, base, k=1) == pytest.approx(7 / 32 - 0.5)
    assert delta_se_from_curves({1: 0.4}, {1: 0.1, 256: 0.9}) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="no k = 3"):
        delta_se_from_curves(trained, base, k=3)
    with pytest.raises(ValueError, match="trained curve has no k = 1"):
        delta_se_from_curves({2: 0.5}, base)


# --- perplexity ---------------------------------------------------------------------------------------------------


def test_perplexity_known_values_and_padding_is_ignored():
    logps = [[math.log(0.5)] * 4, [math.log(0.1), math.log(0.1), -np.inf, np.nan]]
    mask = [[1, 1, 1, 1], [1, 1, 0, 0]]
    np.testing.assert_allclose(perplexity(logps, mask), [2.0, 10.0])
    assert mean_perplexity(logps, mask) == pytest.approx(6.0)
    np.testing.assert_allclose(perplexity(np.array(logps[:1])), [2.0])  # no mask: every token


def test_perplexity_is_the_geometric_mean_of_inverse_probabilities():
    rng = np.random.default_rng(0)
    probs = rng.uniform(0.05, 1.0, size=(5, 9))
    mask = rng.random((5, 9)) < 0.7
    mask[:, 0] = True
    expected = [np.prod(1 / probs[b][mask[b]]) ** (1 / mask[b].sum()) for b in range(5)]
    np.testing.assert_allclose(perplexity(np.log(probs), mask), expected, rtol=1e-12)


def test_perplexity_accepts_torch_tensors_without_the_module_importing_torch():
    torch = pytest.importorskip("torch")
    logps = torch.log(torch.tensor([[0.5, 0.25]], requires_grad=True))
    mask = torch.tensor([[1, 1]])
    assert perplexity(logps, mask).tolist() == pytest.approx([math.sqrt(8)])
    assert perplexity(logps.to(torch.bfloat16), mask)[0] == pytest.approx(math.sqrt(8), rel=1e-2)
    tree = ast.parse(open(perplexity.__code__.co_filename).read())
    nodes = list(ast.walk(tree))
    imported = {alias.name.split(".")[0] for node in nodes if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module.split(".")[0] for node in nodes if isinstance(node, ast.ImportFrom) and node.module}
    assert "torch" not in imported


@pytest.mark.parametrize(
    ("logps", "mask", "message"),
    [
        ([[-1.0, 2.0]], None, "Did you pass logits"),
        ([[-1.0, -np.inf]], None, "non-finite value on a masked token"),
        ([[-1.0, -1.0]], [[0, 0]], "sequence 0 has no tokens"),
        ([[-1.0, -1.0]], [[1, 1, 1]], "must match"),
        ([-1.0, -1.0], None, "(num_sequences, num_tokens)"),
        ([[-1.0], [-1.0, -2.0]], None, "pad ragged rows"),
    ],
)
def test_perplexity_bad_input(logps, mask, message):
    with pytest.raises(ValueError) as error:
        perplexity(logps, mask)
    assert message in str(error.value)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.floats(-20.0, 0.0), min_size=1, max_size=20))
def test_perplexity_is_at_least_one_and_at_most_the_worst_token(logps):
    value = perplexity([logps])[0]
    assert 1.0 - 1e-12 <= value <= math.exp(-min(logps)) * (1 + 1e-12)


# --- crossover ------------------------------------------------------------------------------------------------


def _counts(values):
    return {f"p{i}": c for i, c in enumerate(values)}


def test_crossover_finds_the_first_k_where_the_base_catches_up_and_brackets_it():
    from companion.passk import crossover

    rng = np.random.default_rng(3)
    # The trained model: sharp (solves 40% of problems always); the base: diffuse (solves 80% sometimes).
    trained = _counts(rng.binomial(256, np.repeat([0.95, 0.0], [160, 240])))
    base = _counts(rng.binomial(256, np.repeat([0.05, 0.0], [320, 80])))
    ks = [1, 2, 4, 8, 16, 32, 64, 128, 256]
    curves = [pass_at_k_curve(c, 256, ks, n_bootstrap=0) for c in (trained, base)]
    expected = next(k for k in ks if curves[1][k].estimate > curves[0][k].estimate)
    result = crossover(trained, base, 256, ks, n_bootstrap=300, seed=1)
    assert result.k == expected and 1 < expected < 256
    assert result.low <= result.k <= result.high and result.never == 0.0
    assert crossover(trained, base, 256, ks, n_bootstrap=300, seed=1) == result  # seeded
    # Curves that never meet: the bound past the largest k is open, and so is the point.
    stronger = _counts(np.full(400, 256))
    assert crossover(stronger, base, 256, ks, n_bootstrap=100) == (None, None, None, 1.0)
    # Curves level at the ceiling are a tie: the base does not overtake a model it only matches.
    everything = _counts(np.full(400, 256))
    assert crossover(everything, everything, 256, ks, n_bootstrap=100) == (None, None, None, 1.0)
    level_at_top = _counts(np.full(400, 200))  # solves every problem, at pass@1 0.78 instead of 1
    assert crossover(stronger, level_at_top, 256, ks, n_bootstrap=0).k is None


@pytest.mark.parametrize("trained, base, n, ks, message", [
    (_counts([1, 2]), _counts([1, 2, 3]), 4, None, "different problems"),
    ({"a": 1, "b": 2}, {"a": 1, "c": 2}, 4, None, "in one only: 'b', 'c'"),
    ([1, 2], [1, 2], 4, None, "must map problem ids"),
    (_counts([1, 2]), _counts([1, 2]), 4, [1, 8], "every k must be between 1 and the smallest n = 4"),
    (_counts([1, 5]), _counts([1, 2]), 4, None, "cannot exceed n"),
])
def test_crossover_refuses_curves_that_do_not_compare(trained, base, n, ks, message):
    from companion.passk import crossover

    with pytest.raises((ValueError, TypeError), match=message):
        crossover(trained, base, n, ks, n_bootstrap=0)


def test_paired_difference_is_the_difference_of_the_curves_with_a_tighter_paired_interval():
    rng = np.random.default_rng(3)
    rates = rng.uniform(0, 1, 300)
    a = {i: int(rng.binomial(32, p)) for i, p in enumerate(rates)}
    b = {i: min(32, c + int(rng.integers(0, 3))) for i, c in a.items()}  # b a little better on every problem
    diff = paired_difference(a, b, 32, [1, 8, 32], n_bootstrap=500)
    curves = [pass_at_k_curve(x, 32, [1, 8, 32], n_bootstrap=500) for x in (a, b)]
    for k, d in diff.items():
        assert d.difference == pytest.approx(curves[1][k].estimate - curves[0][k].estimate)
        assert d.low <= d.difference <= d.high
    # the separate bands overlap at k = 1, the paired interval excludes 0
    assert curves[1][1].low < curves[0][1].high and diff[1].low > 0
    assert paired_difference(a, b, 32, [1], n_bootstrap=0)[1].low is None
    with pytest.raises(ValueError, match="different problems"):
        paired_difference(a, {0: 1}, 32)
    with pytest.raises(TypeError, match="map problem ids"):
        paired_difference([1, 2], [1, 2], 32)
