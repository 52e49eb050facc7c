"""Tasks: generators are deterministic, distinct, solvable and split cleanly; the solver is exact."""

import itertools
from fractions import Fraction

import pytest

from companion.tasks import countdown
from companion.verify import countdown_reward, evaluate_expression

# -- countdown ---------------------------------------------------------------------------------


def test_countdown_generate_is_deterministic_and_seed_dependent():
    assert countdown.generate(50, seed=7) == countdown.generate(50, seed=7)
    assert countdown.generate(50, seed=7) != countdown.generate(50, seed=8)


def test_countdown_problems_are_distinct_solvable_and_in_range():
    problems = countdown.generate(500, seed=3)
    keys = {(tuple(sorted(p["numbers"])), p["target"]) for p in problems}
    assert len(keys) == 500
    for p in problems:
        assert len(p["numbers"]) == 3 and all(1 <= v <= 20 for v in p["numbers"])
        assert 1 <= p["target"] <= 100 and isinstance(p["target"], int)
        expr = countdown.solve(p["numbers"], p["target"])
        # The solver's own answer must satisfy the verifier: the two agree on "correct".
        assert countdown_reward(f"<answer>{expr}</answer>", p["numbers"], p["target"]) == 1.0


def test_countdown_options_are_respected():
    problems = countdown.generate(100, n_numbers=4, low=5, high=9, min_target=10, max_target=30, seed=0)
    for p in problems:
        assert len(p["numbers"]) == 4 and all(5 <= v <= 9 for v in p["numbers"])
        assert 10 <= p["target"] <= 30
        assert countdown.solve(p["numbers"], p["target"]) is not None


def test_countdown_splits_are_disjoint_and_cover_the_test_fraction():
    train = countdown.generate(3000, seed=0, split="train")
    test = countdown.generate(300, seed=0, split="test")
    key = lambda p: (tuple(sorted(p["numbers"])), p["target"])  # noqa: E731
    assert not {key(p) for p in train} & {key(p) for p in test}
    assert all(countdown.split_of(p) == "train" for p in train)
    everything = countdown.generate(4000, seed=1)
    share = sum(countdown.split_of(p) == "test" for p in everything) / len(everything)
    assert 0.07 < share < 0.13  # TEST_FRACTION = 0.1


def test_countdown_split_ignores_number_order():
    for p in countdown.generate(200, seed=5):
        for perm in itertools.permutations(p["numbers"]):
            assert countdown.split_of({"numbers": list(perm), "target": p["target"]}) == countdown.split_of(p)


def test_countdown_generate_rejects_impossible_requests():
    with pytest.raises(ValueError, match="fewer problems or widen"):
        countdown.generate(50, low=1, high=2, seed=0)
    with pytest.raises(ValueError, match="split"):
        countdown.generate(5, split="validation")
    with pytest.raises(ValueError, match="low <= high"):
        countdown.generate(5, low=0)


def _brute_force_reachable(numbers):
    """Independent check of the search: evaluate every expression tree over every order."""

    def trees(vals):
        if len(vals) == 1:
            yield vals[0]
            return
        for split in range(1, len(vals)):
            for left in trees(vals[:split]):
                for right in trees(vals[split:]):
                    yield left + right
                    yield left - right
                    yield left * right
                    if right:
                        yield left / right

    out = set()
    for perm in itertools.permutations([Fraction(v) for v in numbers]):
        out |= set(trees(list(perm)))
    return out


@pytest.mark.parametrize("numbers", [[3, 5, 2], [1, 1, 1], [7, 7, 3], [3, 3, 8, 8], [2, 9, 4, 6]])
def test_countdown_solver_agrees_with_brute_force(numbers):
    reachable = _brute_force_reachable(numbers)
    for target in range(-5, 60):
        expr = countdown.solve(numbers, target)
        assert (expr is not None) == (Fraction(target) in reachable), (numbers, target)
        if expr is not None:
            evaluation = evaluate_expression(expr)
            assert evaluation.value == target and sorted(evaluation.numbers) == sorted(numbers)
    assert countdown.reachable_targets(numbers, min_target=-5, max_target=59) == sorted(
        int(v) for v in reachable if v.denominator == 1 and -5 <= v <= 59
    )


def test_countdown_solution_steps_rebuild_valid_expressions():
    for steps in countdown.solution_steps([4, 1, 2], 2):
        expr = countdown.steps_to_expression([4, 1, 2], steps)
        assert evaluate_expression(expr).value == 2


def test_countdown_integer_only_steps_stay_non_negative_integers():
    for step, rest in countdown.candidate_steps([7, 3, 2], integer_only=True):
        assert step.result.denominator == 1 and step.result >= 0
        assert len(rest) == 2 and step.result in rest


def test_countdown_steps_to_expression_rejects_bad_steps():
    with pytest.raises(ValueError, match="not among"):
        countdown.steps_to_expression([3, 5], [countdown.Step(3, "+", 7, 10)])
    with pytest.raises(ValueError, match="arithmetically wrong"):
        countdown.steps_to_expression([3, 5], [countdown.Step(3, "+", 5, 9)])
    with pytest.raises(ValueError, match="leave 2 values"):
        countdown.steps_to_expression([3, 5, 2], [countdown.Step(3, "+", 5, 8)])
