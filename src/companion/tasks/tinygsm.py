"""TinyGSM: templated grade-school word problems, small enough for a tiny character-level model.

Each problem is a dict in GSM8K's format plus machine-readable steps::

    {"question": "Ann has 12 shells. Ann finds 5 more. How many shells does Ann have now?",
     "answer": "12+5=17\\n#### 17",
     "steps": [(12, "+", 5, 17)],
     "template": "add"}

* ``answer`` is a short worked solution, one ``a op b = result`` line per step, then ``#### N``
  (so :func:`companion.tasks.gsm8k.extract_gold` and :func:`companion.verify.gsm8k_reward`
  work on it unchanged).
* ``steps`` is the same solution as tuples ``(a, op, b, result)`` of Python ints and an operator
  in ``"+-*/"``, in order; the last result is the answer. A noisy solver can replay them, slip on
  one, or skip one.
* Every number, intermediate and answer is a non-negative integer, at most a few hundred; the
  templates take 1 to 3 steps (:data:`TEMPLATES` lists them with their step counts).
* **Distinct** means distinct question text: one call may hold the same arithmetic under two
  names ("Ann has 3 cards..." and "Ben has 3 eggs..."), which varies the wording a tiny model
  sees. The split is structural, so both are on the same side of it.
* **Splits** work like Countdown's: :func:`split_of` hashes the template name and its numbers
  (not the names or items, so a renamed copy of a held-out problem is held out too) and puts
  :data:`TEST_FRACTION` of them in "test".
"""

from __future__ import annotations

import hashlib
import random
from typing import Callable, NamedTuple

from tqdm.auto import tqdm

TEST_FRACTION = 0.1
"""Share of (template, numbers) combinations that :func:`split_of` puts in "test"."""

NAMES = ("Ann", "Ben", "Cal", "Dan", "Eve", "Fay", "Gus", "Ivy", "Jo", "Kim", "Leo", "Max", "Nia", "Sam", "Tom", "Zoe")
ITEMS = (
    ("apple", "apples"), ("pencil", "pencils"), ("card", "cards"), ("marble", "marbles"), ("book", "books"),
    ("cookie", "cookies"), ("sticker", "stickers"), ("shell", "shells"), ("ball", "balls"), ("egg", "eggs"),
)  # fmt: skip


class _Draw(NamedTuple):
    numbers: tuple[int, ...]  # the template's free numbers: the split key
    question: str
    steps: list[tuple[int, str, int, int]]


def _add(rng, n, m, s, p):
    a, b = rng.randint(2, 30), rng.randint(2, 30)
    return _Draw((a, b), f"{n} has {a} {p}. {n} finds {b} more. How many {p} does {n} have now?", [(a, "+", b, a + b)])


def _sub(rng, n, m, s, p):
    a = rng.randint(5, 40)
    b = rng.randint(1, a - 1)
    return _Draw((a, b), f"{n} has {a} {p} and gives {b} to {m}. How many {p} does {n} have left?", [(a, "-", b, a - b)])


def _mul(rng, n, m, s, p):
    a, b = rng.randint(2, 9), rng.randint(2, 12)
    return _Draw((a, b), f"{n} buys {a} bags with {b} {p} in each. How many {p} does {n} buy?", [(a, "*", b, a * b)])


def _div(rng, n, m, s, p):
    q, b = rng.randint(2, 12), rng.randint(2, 9)
    a = q * b
    return _Draw((a, b), f"{n} shares {a} {p} equally among {b} friends. How many {p} does each friend get?", [(a, "/", b, q)])


def _add_mul(rng, n, m, s, p):
    a, b, c = rng.randint(2, 20), rng.randint(2, 6), rng.randint(2, 10)
    q = f"{n} has {a} {p} and buys {b} packs of {c}. How many {p} does {n} have now?"
    return _Draw((a, b, c), q, [(b, "*", c, b * c), (a, "+", b * c, a + b * c)])


def _change(rng, n, m, s, p):
    a, b = rng.randint(2, 9), rng.randint(2, 6)
    c = a * b + rng.randint(0, 20)
    q = f"A {s} costs {a} dollars. {n} buys {b} and pays with {c} dollars. How much change does {n} get?"
    return _Draw((a, b, c), q, [(a, "*", b, a * b), (c, "-", a * b, c - a * b)])


def _sub_div(rng, n, m, s, p):
    c, q, b = rng.randint(2, 6), rng.randint(2, 10), rng.randint(1, 15)
    a = c * q + b
    text = f"{n} has {a} {p}, gives {b} to {m}, and packs the rest equally into {c} boxes. How many {p} are in each box?"
    return _Draw((a, b, c), text, [(a, "-", b, a - b), (a - b, "/", c, q)])


def _times_as_many(rng, n, m, s, p):
    a, b = rng.randint(2, 12), rng.randint(2, 5)
    c = rng.randint(1, a + a * b - 1)
    text = f"{n} has {a} {p}. {m} has {b} times as many. They give away {c}. How many {p} do they have left?"
    return _Draw((a, b, c), text, [(a, "*", b, a * b), (a, "+", a * b, a + a * b), (a + a * b, "-", c, a + a * b - c)])


def _half(rng, n, m, s, p):
    a, b = rng.randint(2, 10), rng.randint(2, 7)
    c = rng.randrange(a * b % 2, 21, 2)  # parity matching a*b, so the total halves evenly
    total = a * b + c
    text = f"{n} reads {a} pages a day for {b} days, then {c} more. {m} reads half as many. How many pages does {m} read?"
    return _Draw((a, b, c), text, [(a, "*", b, a * b), (a * b, "+", c, total), (total, "/", 2, total // 2)])


TEMPLATES: dict[str, tuple[int, Callable]] = {
    "add": (1, _add),
    "sub": (1, _sub),
    "mul": (1, _mul),
    "div": (1, _div),
    "add_mul": (2, _add_mul),
    "change": (2, _change),
    "sub_div": (2, _sub_div),
    "times_as_many": (3, _times_as_many),
    "half": (3, _half),
}
"""Template name -> (number of steps, drawing function)."""


def solution_text(steps) -> str:
    """The worked solution in GSM8K's answer format: one line per step, then ``#### N``.

    >>> print(solution_text([(3, "*", 4, 12), (12, "+", 5, 17)]))
    3*4=12
    12+5=17
    #### 17
    """
    lines = [f"{a}{op}{b}={r}" for a, op, b, r in steps]
    return "\n".join(lines + [f"#### {steps[-1][3]}"])


def split_of(problem: dict, *, test_fraction: float = TEST_FRACTION) -> str:
    """``"test"`` or ``"train"``, by a hash of the template and its numbers.

    >>> p = generate(1, seed=0)[0]
    >>> split_of(p) == split_of({**p, "question": p["question"].replace("Ann", "Zoe")})
    True
    """
    key = f"tinygsm|{problem['template']}|{','.join(map(str, problem['numbers']))}"
    h = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") / 2**64
    return "test" if h < test_fraction else "train"


def _draw(rng: random.Random, templates: list[str]) -> dict:
    """One problem of a template drawn from ``templates``, with its people, items and numbers drawn by ``rng``."""
    template = rng.choice(templates)
    name, other = rng.sample(NAMES, 2)
    singular, plural = rng.choice(ITEMS)
    draw = TEMPLATES[template][1](rng, name, other, singular, plural)
    return {"question": draw.question, "answer": solution_text(draw.steps), "steps": draw.steps, "template": template,
            "numbers": list(draw.numbers)}


def generate(
    n_problems: int,
    *,
    seed: int = 0,
    split: str | None = None,
    min_steps: int = 1,
    max_steps: int = 3,
    test_fraction: float = TEST_FRACTION,
    progress: bool | None = None,
) -> list[dict]:
    """``n_problems`` distinct word problems with worked answers, deterministic for a seed.

    Templates with ``min_steps..max_steps`` steps are drawn uniformly. Each dict has
    ``question``, ``answer`` (GSM8K format), ``steps``, ``template`` and ``numbers`` (the
    template's free numbers, which :func:`split_of` hashes). ``split`` is ``"train"``,
    ``"test"`` or ``None`` (all).

    >>> p = generate(1, seed=0)[0]
    >>> print(p["question"]); print(p["answer"])
    Sam has 61 books, gives 7 to Ann, and packs the rest equally into 6 boxes. How many books are in each box?
    61-7=54
    54/6=9
    #### 9
    >>> p["steps"]
    [(61, '-', 7, 54), (54, '/', 6, 9)]
    """
    if n_problems < 0:
        raise ValueError(f"n_problems must be >= 0, got {n_problems}")
    names = [k for k, (n_steps, _) in TEMPLATES.items() if min_steps <= n_steps <= max_steps]
    if not names:
        raise ValueError(f"no template has {min_steps}..{max_steps} steps; templates have 1 to 3")
    if split not in (None, "train", "test"):
        raise ValueError(f'split must be "train", "test" or None, got {split!r}')
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")

    rng = random.Random(seed)
    seen: set[str] = set()
    problems: list[dict] = []
    failures, patience = 0, 20_000
    bar = tqdm(total=n_problems, desc="tinygsm problems", disable=not (progress or (progress is None and n_problems >= 50_000)))
    while len(problems) < n_problems:
        problem = _draw(rng, names)
        if problem["question"] in seen or (split is not None and split_of(problem, test_fraction=test_fraction) != split):
            failures += 1
            if failures > patience:
                bar.close()
                raise ValueError(
                    f"found only {len(problems)} distinct {split or 'any'}-split problems of {n_problems} requested "
                    f"with {min_steps}..{max_steps} steps; ask for fewer problems or allow more steps"
                )
            continue
        failures = 0
        seen.add(problem["question"])
        problems.append(problem)
        bar.update(1)
    bar.close()
    return problems
