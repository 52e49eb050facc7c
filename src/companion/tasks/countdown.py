"""Countdown: combine the given numbers with + - * / to reach a target.

A problem is ``{"numbers": [3, 5, 2], "target": 16}``. A solution uses every number exactly once,
with any parenthesisation, e.g. ``(3+5)*2``. This module generates problems, solves them exactly
and enumerates the single steps ("3+5=8") that a solver trace is made of.

Decisions, and why:

* **Arithmetic is exact and rational.** Every value is a :class:`fractions.Fraction`, so
  ``8/(3-8/3)`` counts as 24 and nothing depends on float rounding. The verifier
  (:func:`companion.verify.countdown_reward`) uses the same rule, so "solvable" here and
  "correct" there agree. :func:`solve` prefers solutions whose every intermediate value is a
  non-negative integer (easier to read, and what a tiny model's traces look like), and falls back
  to rational intermediates only when none exists.
* **Small by default.** 3 numbers drawn uniformly from 1..20 and an integer target in 1..100:
  a character-level model of a few million parameters can learn to solve some of these.
  The target is drawn uniformly from the integers in range that the numbers can reach, so every
  generated problem is solvable by construction (and the tests re-check with :func:`solve`).
  This space holds 16,292 distinct problems (1,661 of them in the test split); ask for more
  and :func:`generate` says so. Up to 5 numbers are supported.
* **Problems are multisets.** ``[3, 5, 2] -> 16`` and ``[2, 3, 5] -> 16`` are the same problem:
  :func:`generate` never returns both in one call, and both land in the same split.
* **Splits by hash.** :func:`split_of` hashes the sorted numbers and the target (SHA-256, so it is
  the same on every machine and Python version); a fixed :data:`TEST_FRACTION` of all possible
  problems is "test". ``generate(..., split="train")`` never emits a test problem, so held-out
  problems are never seen in pretraining, whatever the seed or the number of problems drawn.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import random
from fractions import Fraction
from functools import lru_cache
from typing import Iterator, NamedTuple

from tqdm.auto import tqdm

TEST_FRACTION = 0.1
"""Share of all possible problems that :func:`split_of` puts in the held-out "test" split."""

OPS = ("+", "-", "*", "/")

_PRECEDENCE = {"+": 1, "-": 1, "*": 2, "/": 2}
_ATOM = 3  # precedence of a bare number: never needs parentheses
_MAX_NUMBERS = 5  # exhaustive search: ~1.5 s for an unsolvable 5-number problem, minutes for 6


class Step(NamedTuple):
    """One arithmetic step ``a op b = result`` of a solution, with exact values.

    >>> Step(Fraction(3), "+", Fraction(5), Fraction(8)).text()
    '3+5=8'
    >>> Step(Fraction(8), "/", Fraction(1, 3), Fraction(24)).text()
    '8/(1/3)=24'
    """

    a: Fraction
    op: str
    b: Fraction
    result: Fraction

    def text(self) -> str:
        """The step as a trace line; operands that are not plain integers get parentheses."""
        a, b = (format_number(v) if _is_plain(Fraction(v)) else f"({format_number(v)})" for v in (self.a, self.b))
        return f"{a}{self.op}{b}={format_number(self.result)}"


class _Item(NamedTuple):
    """A value still in play during a search: its number, the expression that made it, and
    the precedence of that expression's outermost operator (for minimal parentheses)."""

    value: Fraction
    expr: str
    prec: int


def format_number(x: Fraction | int) -> str:
    """Write an exact value the way traces and expressions write it.

    >>> format_number(Fraction(8)), format_number(Fraction(-7, 3))
    ('8', '-7/3')
    """
    x = Fraction(x)
    return str(x.numerator) if x.denominator == 1 else f"{x.numerator}/{x.denominator}"


def apply_op(a: Fraction, op: str, b: Fraction) -> Fraction | None:
    """``a op b`` exactly; ``None`` for division by zero.

    >>> apply_op(Fraction(7), "/", Fraction(2)), apply_op(Fraction(7), "/", Fraction(0))
    (Fraction(7, 2), None)
    """
    if op == "+":
        return a + b
    if op == "-":
        return a - b
    if op == "*":
        return a * b
    if op == "/":
        return None if b == 0 else a / b
    raise ValueError(f"unknown operator {op!r}; use one of {OPS}")


def _pairs(n: int) -> Iterator[tuple[int, int, str]]:
    """Index pairs and operators of all distinct single steps over ``n`` values: each unordered
    pair once for the commutative + and *, both orders for - and /."""
    for i in range(n):
        for j in range(n):
            if i == j:
                continue
            for op in OPS:
                if op in "+*" and i > j:
                    continue
                yield i, j, op


def _replace_pair(values, i: int, j: int, new) -> tuple:
    """``values`` with ``new`` in slot ``i`` and slot ``j`` removed: the result of a step takes
    the place of its first operand, so ``3+5`` then ``*2`` reads ``(3+5)*2``."""
    return tuple(new if k == i else v for k, v in enumerate(values) if k != j)


def _is_plain(x: Fraction) -> bool:
    return x.denominator == 1 and x >= 0


def candidate_steps(numbers, *, integer_only: bool = False) -> list[tuple[Step, tuple[Fraction, ...]]]:
    """Every single step that can be taken from ``numbers``, with the values left afterwards.

    Each entry is ``(step, remaining)``: ``step`` combines two of the numbers, ``remaining``
    holds the numbers left, with ``step.result`` in the place of the step's first operand. Commutative steps appear once
    (``3+5``, not also ``5+3``); division by zero is skipped. With ``integer_only=True``, steps
    whose result is negative or fractional are skipped too. A noisy solver can pick among these
    at random, and :func:`solution_steps` is the exact search built on them.

    >>> [(s.text(), [format_number(v) for v in rest]) for s, rest in candidate_steps([6, 2, 1])][:2]
    [('6+2=8', ['8', '1']), ('6-2=4', ['4', '1'])]
    >>> [s.text() for s, _ in candidate_steps([6, 2])]
    ['6+2=8', '6-2=4', '6*2=12', '6/2=3', '2-6=-4', '2/6=1/3']
    >>> [s.text() for s, _ in candidate_steps([6, 2], integer_only=True)]
    ['6+2=8', '6-2=4', '6*2=12', '6/2=3']
    """
    values = [Fraction(v) for v in numbers]
    out = []
    for i, j, op in _pairs(len(values)):
        result = apply_op(values[i], op, values[j])
        if result is None or (integer_only and not _is_plain(result)):
            continue
        out.append((Step(values[i], op, values[j], result), _replace_pair(values, i, j, result)))
    return out


def _combine(x: _Item, op: str, y: _Item, value: Fraction) -> _Item:
    """The item for ``x op y``, parenthesising an operand only where precedence requires it."""
    p = _PRECEDENCE[op]
    left = f"({x.expr})" if x.prec < p else x.expr
    # The right operand of - and / needs parentheses at equal precedence too: 8-(3-1), 8/(4/2).
    right = f"({y.expr})" if y.prec < p or (y.prec == p and op in "-/") else y.expr
    return _Item(value, f"{left}{op}{right}", p)


def _search(items: tuple[_Item, ...], target: Fraction, integer_only: bool, trail: tuple[Step, ...]):
    """Depth-first search over step sequences; yields ``(steps, expression)`` per solution."""
    if len(items) == 1:
        if items[0].value == target:
            yield list(trail), items[0].expr
        return
    for i, j, op in _pairs(len(items)):
        x, y = items[i], items[j]
        value = apply_op(x.value, op, y.value)
        if value is None or (integer_only and not _is_plain(value)):
            continue
        step = Step(x.value, op, y.value, value)
        rest = _replace_pair(items, i, j, _combine(x, op, y, value))
        yield from _search(rest, target, integer_only, trail + (step,))


def _check_numbers(numbers) -> list[int]:
    numbers = list(numbers)
    if not 1 <= len(numbers) <= _MAX_NUMBERS:
        raise ValueError(f"need 1 to {_MAX_NUMBERS} numbers, got {len(numbers)}")
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in numbers):
        raise ValueError(f"numbers must be integers, got {numbers!r}")
    return numbers


def solution_steps(numbers, target, *, integer_only: bool = False) -> Iterator[list[Step]]:
    """Yield every solution as its list of steps, in search order (may repeat equivalent ones).

    >>> [" ".join(s.text() for s in steps) for steps in solution_steps([3, 5, 2], 16)]
    ['3+5=8 8*2=16']
    >>> [" ".join(s.text() for s in steps) for steps in solution_steps([4, 1, 2], 2)][:3]
    ['4*1=4 4-2=2', '4*1=4 4/2=2', '4/1=4 4-2=2']
    """
    numbers = _check_numbers(numbers)
    items = tuple(_Item(Fraction(v), str(v), _ATOM) for v in numbers)
    for steps, _ in _search(items, Fraction(target), integer_only, ()):
        yield steps


def solve(numbers, target) -> str | None:
    """One expression that uses each number exactly once and equals ``target``, or ``None``.

    Exact rational arithmetic; solutions with non-negative integer intermediates are preferred.

    >>> solve([3, 5, 2], 16)
    '(3+5)*2'
    >>> solve([3, 3, 8, 8], 24)  # only a fractional intermediate works
    '8/(3-8/3)'
    >>> solve([1, 1, 1], 100) is None
    True
    """
    numbers = _check_numbers(numbers)
    items = tuple(_Item(Fraction(v), str(v), _ATOM) for v in numbers)
    for integer_only in (True, False):
        for _, expr in _search(items, Fraction(target), integer_only, ()):
            return expr
    return None


def steps_to_expression(numbers, steps) -> str:
    """The expression that a list of steps builds from ``numbers``.

    Raises ``ValueError`` when a step uses a value that is not available at that point, or when
    the steps leave more than one value.

    >>> steps_to_expression([3, 5, 2], [Step(3, "+", 5, 8), Step(8, "*", 2, 16)])
    '(3+5)*2'
    """
    items = [_Item(Fraction(v), str(v), _ATOM) for v in _check_numbers(numbers)]
    for step in steps:
        i = next((k for k, it in enumerate(items) if it.value == step.a), None)
        j = next((k for k, it in enumerate(items) if it.value == step.b and k != i), None)
        if i is None or j is None:
            raise ValueError(f"step {step} uses a value not among {[format_number(it.value) for it in items]}")
        value = apply_op(items[i].value, step.op, items[j].value)
        if value is None or value != Fraction(step.result):
            raise ValueError(f"step {step} is arithmetically wrong")
        items = list(_replace_pair(items, i, j, _combine(items[i], step.op, items[j], value)))
    if len(items) != 1:
        raise ValueError(f"steps leave {len(items)} values; a solution combines all numbers into one")
    return items[0].expr


def _reachable(values: tuple[Fraction, ...], memo: dict) -> frozenset[Fraction]:
    """All values reachable using every one of ``values`` (a sorted tuple) exactly once."""
    if len(values) == 1:
        return frozenset(values)
    if values in memo:
        return memo[values]
    out = set()
    for i in range(len(values)):
        for j in range(i + 1, len(values)):
            rest = values[:i] + values[i + 1 : j] + values[j + 1 :]
            a, b = values[i], values[j]
            results = {a + b, a - b, b - a, a * b}
            if b:
                results.add(a / b)
            if a:
                results.add(b / a)
            for r in results:
                out |= _reachable(tuple(sorted(rest + (r,))), memo)
    memo[values] = frozenset(out)
    return memo[values]


# Cache the small answer (a tuple of ints), not the reachable sets: with 4-5 numbers those hold
# thousands of Fractions each, and generate() asks about the same multisets again and again.
@lru_cache(maxsize=1 << 16)
def _targets(numbers: tuple[int, ...], min_target: int, max_target: int) -> tuple[int, ...]:
    found = _reachable(tuple(Fraction(v) for v in numbers), {})
    return tuple(sorted(int(v) for v in found if v.denominator == 1 and min_target <= v <= max_target))


def reachable_targets(numbers, *, min_target: int = 1, max_target: int = 100) -> list[int]:
    """The integers in ``[min_target, max_target]`` that ``numbers`` can make, sorted.

    >>> reachable_targets([3, 5, 2], max_target=12)
    [1, 4, 5, 6, 7, 9, 10, 11]
    """
    return list(_targets(tuple(sorted(_check_numbers(numbers))), min_target, max_target))


def split_of(problem: dict, *, test_fraction: float = TEST_FRACTION) -> str:
    """``"test"`` or ``"train"``, decided by a hash of the problem (order of numbers ignored).

    >>> split_of({"numbers": [3, 5, 2], "target": 16}) == split_of({"numbers": [2, 5, 3], "target": 16})
    True
    """
    key = f"countdown|{','.join(map(str, sorted(problem['numbers'])))}|{problem['target']}"
    h = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") / 2**64
    return "test" if h < test_fraction else "train"


def _check_space(n_numbers, low, high, min_target, max_target, split, test_fraction) -> None:
    if not 2 <= n_numbers <= _MAX_NUMBERS:
        raise ValueError(f"n_numbers must be in 2..{_MAX_NUMBERS}, got {n_numbers}")
    if not 1 <= low <= high:
        raise ValueError(f"need 1 <= low <= high, got low={low}, high={high}")
    if not min_target <= max_target:
        raise ValueError(f"need min_target <= max_target, got {min_target} > {max_target}")
    if split not in (None, "train", "test"):
        raise ValueError(f'split must be "train", "test" or None, got {split!r}')
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")


_ENUMERATION_BUDGET = 25_000
"""Largest space :func:`enumerate_problems` walks, in 3-number multisets (a 4-number one costs ~10)."""


def enumerate_problems(
    *,
    n_numbers: int = 3,
    low: int = 1,
    high: int = 20,
    min_target: int = 1,
    max_target: int = 100,
    split: str | None = None,
    test_fraction: float = TEST_FRACTION,
) -> list[dict]:
    """Every distinct problem of a small space, numbers ascending, in sorted order.

    For evaluating on a whole split (e.g. all 1,661 default test problems). Raises
    ``ValueError`` when the space is too large to walk in seconds; use :func:`generate` then.

    >>> len(enumerate_problems(split="test")), enumerate_problems(low=1, high=2, n_numbers=2)
    (1661, [{'numbers': [1, 1], 'target': 1}, {'numbers': [1, 1], 'target': 2}, {'numbers': [1, 2], 'target': 1}, {'numbers': [1, 2], 'target': 2}, {'numbers': [1, 2], 'target': 3}, {'numbers': [2, 2], 'target': 1}, {'numbers': [2, 2], 'target': 4}])
    """
    _check_space(n_numbers, low, high, min_target, max_target, split, test_fraction)
    multisets = math.comb(high - low + n_numbers, n_numbers)
    if multisets * 10 ** (n_numbers - 3) > _ENUMERATION_BUDGET:
        raise ValueError(
            f"{multisets:,} multisets of {n_numbers} numbers in {low}..{high} are too many to enumerate; "
            "sample with generate() instead"
        )
    problems = []
    for numbers in itertools.combinations_with_replacement(range(low, high + 1), n_numbers):
        for target in _targets(numbers, min_target, max_target):
            problem = {"numbers": list(numbers), "target": target}
            if split is None or split_of(problem, test_fraction=test_fraction) == split:
                problems.append(problem)
    return problems


def generate(
    n_problems: int,
    *,
    n_numbers: int = 3,
    low: int = 1,
    high: int = 20,
    min_target: int = 1,
    max_target: int = 100,
    seed: int = 0,
    split: str | None = None,
    test_fraction: float = TEST_FRACTION,
    progress: bool | None = None,
) -> list[dict]:
    """``n_problems`` distinct solvable problems ``{"numbers": [...], "target": int}``.

    Numbers are drawn uniformly from ``low..high`` (repeats allowed), then the target uniformly
    from the integers in ``min_target..max_target`` they can reach. ``split="train"`` or
    ``"test"`` keeps only problems of that split (see :func:`split_of`); ``None`` keeps all.
    Deterministic for a seed. When random draws stop finding new problems (the space is nearly
    used up), the rest are taken from :func:`enumerate_problems` in a seeded random order, so
    any request up to the size of a small space succeeds; a larger request raises
    ``ValueError``. ``progress=None`` shows a bar only for large requests.

    >>> generate(2, seed=0)
    [{'numbers': [13, 14, 2], 'target': 12}, {'numbers': [17, 16, 13], 'target': 20}]
    >>> all(solve(p["numbers"], p["target"]) for p in generate(50, seed=1, split="test"))
    True
    """
    if n_problems < 0:
        raise ValueError(f"n_problems must be >= 0, got {n_problems}")
    _check_space(n_numbers, low, high, min_target, max_target, split, test_fraction)
    space = f"{split or 'any'}-split problems (n_numbers={n_numbers}, numbers {low}..{high}, targets {min_target}..{max_target})"

    rng = random.Random(seed)
    seen: set[tuple] = set()
    problems: list[dict] = []
    patience, failures = 20_000, 0  # consecutive failed draws before switching to enumeration
    # Each draw costs about 10x more per extra number (the reachable-value search), so "large" scales too.
    large = n_problems * 10 ** (n_numbers - 3) >= 50_000
    bar = tqdm(total=n_problems, desc="countdown problems", disable=not (progress or (progress is None and large)))
    while len(problems) < n_problems and failures <= patience:
        numbers = [rng.randint(low, high) for _ in range(n_numbers)]
        targets = _targets(tuple(sorted(numbers)), min_target, max_target)
        problem = {"numbers": numbers, "target": rng.choice(targets)} if targets else None
        key = (tuple(sorted(numbers)), problem["target"]) if problem else None
        if problem is None or key in seen or (split is not None and split_of(problem, test_fraction=test_fraction) != split):
            failures += 1
            continue
        failures = 0
        seen.add(key)
        problems.append(problem)
        bar.update(1)
    try:
        if len(problems) < n_problems:
            _fill_by_enumeration(problems, n_problems, seen, rng, space, bar, dict(
                n_numbers=n_numbers, low=low, high=high, min_target=min_target, max_target=max_target, split=split,
                test_fraction=test_fraction))
    finally:
        bar.close()
    return problems


def _fill_by_enumeration(problems: list[dict], n_problems: int, seen: set, rng: random.Random, space: str, bar,
                         ranges: dict) -> None:
    """Complete ``problems`` to ``n_problems`` with problems not ``seen`` yet, from :func:`enumerate_problems` (with
    ``ranges``) in ``rng``'s order, each with its numbers shuffled; ``space`` names the problems for an error."""
    try:
        everything = enumerate_problems(**ranges)
    except ValueError:
        raise ValueError(f"found only {len(problems)} distinct {space} of {n_problems} requested; ask for fewer") from None
    rest = [p for p in everything if (tuple(p["numbers"]), p["target"]) not in seen]
    if len(problems) + len(rest) < n_problems:
        raise ValueError(
            f"there are only {len(problems) + len(rest)} distinct {space}, {n_problems} requested; "
            "ask for fewer problems or widen the ranges"
        )
    rng.shuffle(rest)
    for problem in rest[: n_problems - len(problems)]:
        rng.shuffle(problem["numbers"])
        problems.append(problem)
        bar.update(1)
