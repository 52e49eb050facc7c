"""Reasoning traces for pretraining: a *noisy* solver (the base model's teacher) and the exact one.

A trace is the completion that follows a base prompt (:func:`companion.tasks.prompts.format_prompt`,
which ends with ``<think>``): the thinking, ``</think>``, then ``<answer>...</answer>``. The tiny base
model is pretrained on noisy traces, so at temperature 1 it behaves like the noisy solver it imitates: right
sometimes, wrong often, with a varied number of attempts. The exact solver's clean traces, in the same
format, are the "stronger teacher" a later chapter distils from.

**Countdown.** Each line is one attempt. It writes the order it takes the numbers in, then steps that combine
the value so far with the next number, until one value remains, then that value beside the target and ``yes`` or
``no``. A step whose result would be negative, fractional or above :data:`LIMIT` is abandoned (``drop``). An attempt
follows a known solution with probability ``guided`` (the solver's "intuition"). Otherwise it picks its order and its
operations at random, except that with probability ``aim`` it aims its last step: of the ways to combine the two
values left, it takes the one whose result is closest to the target, as a person checks ``26+1`` and ``26*1`` against
28 before writing either. Any step may slip (a wrong result, believed). The solver stops at its first ``yes`` or
after a budget of attempts drawn uniformly from ``1..max_attempts``, then answers with the attempt it believes hit,
or else its closest one::

    <think>
    13 2 1: 13*2=26, 26+1=27, 27 vs 28, no
    13 1 2: 13+1=14, 14*2=28, 28 vs 28, yes
    </think>
    <answer>(13+1)*2</answer>

Each written piece keeps what the next one needs a few characters back, for a model of a few hundred thousand
parameters that learns from these traces: the order holds the number the last step uses (measured on a model
trained without it, only 27% of its second steps used the number left), and the target beside the value makes the
verdict a comparison of two nearby numbers.

**Word problems** (:mod:`companion.tasks.tinygsm`). One line per step of the worked solution; each step
picks a wrong operation with probability ``wrong_op``; a wrong step is noticed and abandoned
(``, no``) with probability ``notice`` (always when its result is not a whole number up to :data:`LIMIT`) and the solver tries
again, otherwise it is kept and carried into the next steps. Any step may slip.

>>> import random
>>> problem = {"numbers": [13, 2, 1], "target": 28}
>>> print(countdown_clean_trace(problem, random.Random(0)))
<BLANKLINE>
13 1 2: 13+1=14, 14*2=28, 28 vs 28, yes
</think>
<answer>(13+1)*2</answer>
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from fractions import Fraction
from functools import lru_cache
from typing import NamedTuple

from companion.tasks import countdown, prompts

TASKS = ("countdown", "tinygsm")
"""The tasks with a noisy and an exact solver here (GSM8K has no solver: it is the GPU world's task)."""

_OPS = ("+", "-", "*", "/")

LIMIT = 100
"""Largest intermediate value the noisy solver computes. A step that would give a negative, fractional or
larger value is dropped without computing it (``17*19, drop``), as a person would: targets are at most 100,
and 99% of held-out Countdown problems have a solution whose every intermediate value is at most 100.
It also spares a tiny model from learning products like 17*19 that no solution needs."""


@dataclass(frozen=True)
class Noise:
    """The noisy solver's knobs: how often it is right, and how long its traces are."""

    max_attempts: int = field(default=5, metadata={"help": "countdown: attempt budget drawn uniformly from 1..max_attempts"})
    guided: float = field(default=0.3, metadata={"help": "countdown: chance an attempt follows a known solution"})
    aim: float = field(default=0.0, metadata={"help": "countdown: chance an unguided attempt aims its last step at "
                                                    "the target (the step closest to it) instead of picking at random"})
    slip: float = field(default=0.03, metadata={"help": "chance a step's result is miscalculated (and believed)"})
    wrong_op: float = field(default=0.4, metadata={"help": "word problems: chance a step picks a wrong operation"})
    notice: float = field(default=0.5, metadata={"help": "word problems: chance a wrong operation is noticed and retried"})

    def __post_init__(self):
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1, got {self.max_attempts}")
        for name in ("guided", "aim", "slip", "wrong_op", "notice"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} is a probability and must be in [0, 1], got {value}")
        if self.wrong_op == 1.0 and self.notice == 1.0:
            raise ValueError("wrong_op=1 with notice=1 never accepts a step: lower one of them")


def _fmt(x) -> str:
    return countdown.format_number(Fraction(x))


def _plain(x: Fraction) -> bool:
    return x.denominator == 1 and x >= 0


def _usable(x: Fraction | None) -> bool:
    return x is not None and _plain(x) and x <= LIMIT


def _slip(value: Fraction, rng: random.Random, p: float) -> Fraction:
    """``value``, or with probability ``p`` a nearby wrong one (off by 1, 2 or 10), never negative."""
    if rng.random() >= p:
        return value
    wrong = value + rng.choice((-10, -2, -1, 1, 2, 10))
    return wrong if wrong >= 0 else value + 1


def _operand(expr: str, compound: bool) -> str:
    return f"({expr})" if compound else expr


def _ending(answer: str) -> str:
    return f"</think>\n<answer>{answer}</answer>"


# --- Countdown --------------------------------------------------------------------------------------------


def _aimed_step(values: list[Fraction], target: int, rng: random.Random):
    """``(i, j, op)`` of the step over ``values`` whose result is closest to ``target``, among the distinct steps
    (:func:`companion.tasks.countdown.candidate_steps`' enumeration) whose result the solver computes
    (:data:`LIMIT`); ties are broken at random, ``None`` if no result is usable."""
    best, ties = None, []
    for i, j, op in countdown._pairs(len(values)):
        value = countdown.apply_op(values[i], op, values[j])
        if not _usable(value):
            continue
        distance = abs(value - target)
        if best is None or distance < best:
            best, ties = distance, [(i, j, op)]
        elif distance == best:
            ties.append((i, j, op))
    return rng.choice(ties) if ties else None


def _attempt(numbers, path, rng: random.Random, noise: Noise, target: int | None = None):
    """One attempt: ``(line, value, expression)``; ``value`` is ``None`` when the attempt was dropped.

    ``path`` is a known solution's steps to replay, or ``None`` to pick steps at random; a random attempt
    aims its last step at ``target`` with probability ``noise.aim``. Values are
    ``(value, expression, compound)`` triples; a step's result takes its first operand's place.
    """
    aim = path is None and noise.aim > 0 and target is not None and rng.random() < noise.aim
    # The attempt first writes the order it takes the numbers in: a replayed solution's first two operands,
    # else a random order. Its steps then combine the value so far with the next number (a replayed solution
    # of four or more numbers may instead combine two of the later ones, as in (a+b)*(c+d)).
    if path is not None:
        rest = [Fraction(v) for v in numbers]
        rest.remove(path[0].a)
        rest.remove(path[0].b)
        numbers = [path[0].a, path[0].b] + rest
    else:
        numbers = rng.sample(list(numbers), len(numbers))
    order = " ".join(_fmt(v) for v in numbers) + ": "
    items = [(Fraction(v), _fmt(v), False) for v in numbers]
    exact = [Fraction(v) for v in numbers]  # the values without slips, to find a replayed step's operands
    texts = []
    for k in range(len(numbers) - 1):
        if path is not None:
            step = path[k]
            i = exact.index(step.a)
            j = next(n for n, v in enumerate(exact) if v == step.b and n != i)
            op = step.op
            exact = [step.result if n == i else v for n, v in enumerate(exact) if n != j]
        elif aim and len(items) == 2 and (chosen := _aimed_step([v for v, _, _ in items], target, rng)):
            i, j, op = chosen
        else:  # the value so far (or the first number) and the next number, either way round
            i, j = rng.choice(((0, 1), (1, 0)))
            op = rng.choice(_OPS)
        (a, ea, ca), (b, eb, cb) = items[i], items[j]
        value = countdown.apply_op(a, op, b)
        # A replayed solution may pass LIMIT; it still drops a step that a slip made impossible.
        if not _usable(value) and (path is None or value is None or not _plain(value)):
            texts.append(f"{_fmt(a)}{op}{_fmt(b)}, drop")
            return order + ", ".join(texts), None, None
        value = _slip(value, rng, noise.slip)
        texts.append(f"{_fmt(a)}{op}{_fmt(b)}={_fmt(value)}")
        merged = (value, f"{_operand(ea, ca)}{op}{_operand(eb, cb)}", True)
        items = [merged if n == i else it for n, it in enumerate(items) if n != j]
    value, expr, _ = items[0]
    return order + ", ".join(texts), value, expr


def _verdict(value, target) -> str:
    """How an attempt ends: its value next to the target, then ``yes`` or ``no``.

    Writing the target beside the value makes the check local: the model copies the target (from the prompt,
    or from the line above), then compares two numbers a few characters apart. With a bare ``yes``/``no``, a
    tiny model learned only how often attempts hit (about half of the completed ones, since guided attempts
    always do), not whether this one did: measured, it said ``yes`` to 71% of its attempts while 2% hit.

    >>> _verdict(Fraction(27), 28), _verdict(Fraction(28), 28)
    ('27 vs 28, no', '28 vs 28, yes')
    """
    return f"{_fmt(value)} vs {target}, {'yes' if value == target else 'no'}"


def _solution_paths(numbers, target) -> list:
    return _solution_paths_of(tuple(numbers), target)


@lru_cache(maxsize=1 << 15)
def _solution_paths_of(numbers: tuple[int, ...], target: int) -> list:
    """The solutions whose intermediate values are all at most :data:`LIMIT`, else the integer ones, else
    all. Cached: a corpus meets the same problem many times."""
    paths = list(countdown.solution_steps(numbers, target, integer_only=True))
    small = [path for path in paths if all(step.result <= LIMIT for step in path)]
    return small or paths or list(countdown.solution_steps(numbers, target))


def countdown_trace(problem: dict, rng: random.Random, noise: Noise = Noise()) -> str:
    """A noisy solver's trace for one Countdown problem (the text after the prompt's ``<think>``).

    >>> print(countdown_trace({"numbers": [13, 2, 1], "target": 28}, random.Random(9)))
    <BLANKLINE>
    2 13 1: 2*13=26, 26*1=26, 26 vs 28, no
    13 2 1: 2/13, drop
    13 1 2: 13+1=14, 14*2=28, 28 vs 28, yes
    </think>
    <answer>(13+1)*2</answer>
    """
    numbers, target = problem["numbers"], problem["target"]
    paths = _solution_paths(numbers, target) if noise.guided > 0 else []
    lines, best = [], None  # best: (distance to target, expression) over completed attempts
    for _ in range(rng.randint(1, noise.max_attempts)):
        path = rng.choice(paths) if paths and rng.random() < noise.guided else None
        text, value, expr = _attempt(numbers, path, rng, noise, target)
        if value is None:
            lines.append(text)
            continue
        hit = value == target
        lines.append(f"{text}, {_verdict(value, target)}")
        if hit:
            return "\n" + "\n".join(lines) + "\n" + _ending(expr)
        if best is None or abs(value - target) < best[0]:
            best = (abs(value - target), expr)
    # No attempt believed a hit: answer the closest one (a guess), or every number added up.
    answer = best[1] if best else "+".join(map(str, numbers))
    return "\n" + "\n".join(lines) + "\n" + _ending(answer)


def countdown_clean_trace(problem: dict, rng: random.Random | None = None) -> str:
    """The exact solver's trace: one attempt along a solution (a random one when ``rng`` is given).

    Raises ``ValueError`` for an unsolvable problem.
    """
    paths = _solution_paths(problem["numbers"], problem["target"])
    if not paths:
        raise ValueError(f"{problem} has no solution; the exact solver needs a solvable problem")
    path = rng.choice(paths) if rng is not None else paths[0]
    text, _, expr = _attempt(problem["numbers"], path, random.Random(0), Noise(slip=0.0))
    return f"\n{text}, {_verdict(Fraction(problem['target']), problem['target'])}\n" + _ending(expr)


# --- word problems ----------------------------------------------------------------------------------------


def _chain(problem: dict):
    """The worked solution's steps with, for each step after the first, which operand (0 or 1) is the
    previous step's result (``None`` when neither is): a wrong result must flow into the next step."""
    steps, numbers = problem["steps"], set(problem["numbers"])
    out = []
    for k, (a, op, b, r) in enumerate(steps):
        carried = None
        if k > 0:
            prev = steps[k - 1][3]
            # Prefer the operand that is not also one of the question's own numbers.
            candidates = [n for n, x in enumerate((a, b)) if x == prev]
            carried = next((n for n in candidates if (a, b)[n] not in numbers), candidates[-1] if candidates else None)
        out.append((a, op, b, carried))
    return out


def tinygsm_trace(problem: dict, rng: random.Random, noise: Noise = Noise()) -> str:
    """A noisy solver's trace for one templated word problem.

    >>> p = {"question": "...", "steps": [(3, "*", 4, 12), (12, "+", 5, 17)], "numbers": [3, 4, 5]}
    >>> print(tinygsm_trace(p, random.Random(1)))
    <BLANKLINE>
    3+4=7, no
    3*4=12
    12+5=17
    </think>
    <answer>17</answer>
    """
    lines, previous = [], None
    for a, op, b, carried in _chain(problem):
        operands = [Fraction(a), Fraction(b)]
        if carried is not None:
            operands[carried] = previous
        x, y = operands
        while True:
            chosen = rng.choice([o for o in _OPS if o != op]) if rng.random() < noise.wrong_op else op
            value = countdown.apply_op(x, chosen, y)
            if chosen != op and not _usable(value):
                lines.append(f"{_fmt(x)}{chosen}{_fmt(y)}, no")
                continue
            if chosen != op and rng.random() < noise.notice:
                lines.append(f"{_fmt(x)}{chosen}{_fmt(y)}={_fmt(value)}, no")
                continue
            break
        previous = _slip(value, rng, noise.slip) if _plain(value) else value
        lines.append(f"{_fmt(x)}{chosen}{_fmt(y)}={_fmt(previous)}")
    return "\n" + "\n".join(lines) + "\n" + _ending(_fmt(previous))


def tinygsm_clean_trace(problem: dict, rng: random.Random | None = None) -> str:
    """The exact solver's trace: the worked solution's steps, then the answer."""
    lines = [f"{a}{op}{b}={r}" for a, op, b, r in problem["steps"]]
    return "\n" + "\n".join(lines) + "\n" + _ending(str(problem["steps"][-1][3]))


# --- reading a Countdown trace back ---------------------------------------------------------------------------

_STEP = re.compile(r"^(\d+)([-+*/])(\d+)(?:=(-?\d+))?$")


class Attempt(NamedTuple):
    """What one line of a Countdown trace did, read back by :func:`read_countdown_attempts`."""

    steps: int
    """Steps written (``a op b=c``, or ``a op b`` before ``drop``)."""
    copied: int
    """Steps whose two operands were among the values left at that point (the prompt's numbers and the results
    of the line's earlier steps)."""
    results: int
    """Steps that wrote a result."""
    computed: int
    """Steps whose written result is the true value of their written operands."""
    value: int | None
    """The last result written, the value the attempt believes it reached (``None`` if it wrote none)."""
    verdict: str | None
    """``"yes"``, ``"no"``, or ``None`` for a dropped or unreadable line."""


def read_countdown_attempts(completion: str, problem: dict) -> list[Attempt]:
    """The attempts of a Countdown completion, one per line of its thinking, checked against ``problem``.

    The order a line writes first (up to a colon) is skipped. Only steps that copied their operands correctly
    update the values left; a line that ends in neither ``yes`` nor ``no`` has no verdict. Any text is accepted:
    a sampled completion need not follow the format.

    >>> trace = ("\\n13 2 1: 13*2=26, 26+1=27, 27 vs 28, no\\n2 13 1: 2-13, drop\\n"
    ...          "13 1 2: 13+1=14, 14*3=28, 28 vs 28, yes\\n</think>")
    >>> [tuple(a) for a in read_countdown_attempts(trace, {"numbers": [13, 2, 1], "target": 28})]
    [(2, 2, 2, 2, 27, 'no'), (1, 1, 0, 0, None, None), (2, 1, 2, 1, 28, 'yes')]
    """
    thinking = completion.split("</think>")[0]
    attempts = []
    for line in thinking.strip().split("\n"):
        line = line.split(":", 1)[-1]  # after the order an attempt writes first
        left = [Fraction(v) for v in problem["numbers"]]
        steps = copied = results = computed = 0
        value = None
        parts = [part.strip() for part in line.split(",")]
        for part in parts:
            match = _STEP.match(part)
            if not match:
                continue
            a, op, b = Fraction(int(match[1])), match[2], Fraction(int(match[3]))
            steps += 1
            ok = a in left and b in [v for k, v in enumerate(left) if k != left.index(a)]
            copied += ok
            if match[4] is None:
                continue
            written = Fraction(int(match[4]))
            results += 1
            computed += countdown.apply_op(a, op, b) == written
            value = int(written)
            if ok:
                left.remove(a)
                left.remove(b)
                left.append(written)
        verdict = parts[-1] if parts and parts[-1] in ("yes", "no") and value is not None else None
        if steps:
            attempts.append(Attempt(steps, copied, results, computed, value, verdict))
    return attempts


def audit_countdown(completions, problems) -> dict:
    """How faithfully Countdown completions carry out the noisy solver's search, as rates over all their steps
    and attempts: ``copy`` (operands among the values left), ``arithmetic`` (written results right),
    ``verdict`` (``yes`` exactly when the value is the target), ``said_yes`` and ``hit`` (shares of verdicts),
    and ``attempts`` per completion. The noisy solver's own traces score 1 on copy and verdict and
    ``1 - slip`` on arithmetic; a model that imitates it scores what it has learned of each skill.
    """
    attempts = [(a, p) for c, p in zip(completions, problems) for a in read_countdown_attempts(c, p)]
    judged = [(a, p) for a, p in attempts if a.verdict is not None]

    def rate(num, den):
        return round(num / den, 4) if den else None

    return {
        "completions": len(completions),
        "attempts": rate(len(attempts), len(completions)),
        "copy": rate(sum(a.copied for a, _ in attempts), sum(a.steps for a, _ in attempts)),
        "arithmetic": rate(sum(a.computed for a, _ in attempts), sum(a.results for a, _ in attempts)),
        "verdict": rate(sum((a.verdict == "yes") == (a.value == p["target"]) for a, p in judged), len(judged)),
        "said_yes": rate(sum(a.verdict == "yes" for a, _ in judged), len(judged)),
        "hit": rate(sum(a.value == p["target"] for a, p in judged), len(judged)),
    }


# --- by task name ----------------------------------------------------------------------------------------

_NOISY = {"countdown": countdown_trace, "tinygsm": tinygsm_trace}
_CLEAN = {"countdown": countdown_clean_trace, "tinygsm": tinygsm_clean_trace}


def _check_task(task: str) -> None:
    if task not in _NOISY:
        raise ValueError(f"no solver traces for task {task!r}; use one of {', '.join(TASKS)}")


def noisy_trace(task: str, problem: dict, rng: random.Random, noise: Noise = Noise()) -> str:
    """The noisy solver's trace for ``problem`` of ``task`` ("countdown" or "tinygsm")."""
    _check_task(task)
    return _NOISY[task](problem, rng, noise)


def clean_trace(task: str, problem: dict, rng: random.Random | None = None) -> str:
    """The exact solver's trace for ``problem`` of ``task``: the stronger teacher."""
    _check_task(task)
    return _CLEAN[task](problem, rng)


def examples(task: str, problems: list[dict], *, seed: int = 0, noise: Noise | None = Noise()) -> list[tuple[str, str]]:
    """``(prompt, completion)`` pairs in the base template: noisy traces, or clean ones with ``noise=None``.

    >>> pairs = examples("tinygsm", [{"question": "Ann has 3 cards and gets 4 more. How many cards?",
    ...                               "steps": [(3, "+", 4, 7)], "numbers": [3, 4]}], noise=None)
    >>> print(pairs[0][0] + pairs[0][1])
    Ann has 3 cards and gets 4 more. How many cards?
    Answer with a number in <answer></answer>.
    <think>
    3+4=7
    </think>
    <answer>7</answer>
    """
    _check_task(task)
    rng = random.Random(seed)
    pairs = []
    for problem in problems:
        prompt = prompts.format_prompt(task, problem, style="base")
        completion = clean_trace(task, problem, rng) if noise is None else noisy_trace(task, problem, rng, noise)
        pairs.append((prompt, completion))
    return pairs


# --- arithmetic drills -----------------------------------------------------------------------------------

DRILL_PROMPT = "Arithmetic:\n"
"""The header of a drill: a short document of worked sums, the arithmetic a real base model picks up from
the web before it ever sees a puzzle."""


def _drill_operand(rng: random.Random) -> int:
    # Mostly the puzzles' own small numbers, sometimes an intermediate value up to LIMIT.
    return rng.randint(1, 20) if rng.random() < 0.6 else rng.randint(1, LIMIT)


def arithmetic_fact(rng: random.Random) -> str:
    """One line ``a op b=c`` of the arithmetic the solvers do: whole numbers, results 0..LIMIT, exact division.

    >>> [arithmetic_fact(random.Random(s)) for s in range(4)]
    ['14/14=1', '61-27=34', '40+7=47', '19-1=18']
    """
    op = rng.choice(_OPS)
    while True:
        if op == "/":
            b, q = rng.randint(1, 20), rng.randint(0, 20)
            a = b * q
            if a > LIMIT:
                continue
        else:
            a, b = _drill_operand(rng), _drill_operand(rng)
        value = countdown.apply_op(Fraction(a), op, Fraction(b))
        if _usable(value):
            return f"{a}{op}{b}={_fmt(value)}"


def arithmetic_drill(rng: random.Random, n_facts: int = 24) -> str:
    """A drill: ``n_facts`` lines of :func:`arithmetic_fact`, to follow :data:`DRILL_PROMPT`."""
    return "\n".join(arithmetic_fact(rng) for _ in range(n_facts))
