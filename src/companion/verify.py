"""Verifiers: the reward functions, pure Python and safe on any string a model can write.

The reward is the only signal a trainer sees, so these functions are exact (rational arithmetic,
never floats), bounded (every input is capped before any parsing) and never raise on a completion
string: a wrong, malformed or hostile completion just earns 0.

Rules (the book's chapter 4 walks through them with the adversarial cases in
``data/verifier/adversarial_completions.jsonl``):

* **The answer is the last** ``<answer>...</answer>`` **pair** in the completion: the last
  ``</answer>`` and the last ``<answer>`` before it. ``<think>`` tags are not parsed, so an answer
  written inside the thinking counts like any other (the TinyZero rule); a later answer overrides
  an earlier one, and an unclosed ``<answer>`` is no answer.
* **Completions longer than** :data:`MAX_COMPLETION_CHARS` **earn 0** without being read. No
  real completion within a trainer's ``max_completion_length`` is that long, and refusing keeps
  the cost of a megabyte of junk to a length check.
* **ASCII only.** Digits in other scripts (Arabic-Indic ``٣``, fullwidth ``３``) are not numbers
  here: the prompts ask for ASCII and the tiny model's vocabulary has no other digits, so
  accepting them would reward output nobody asked for.
* **Countdown answers** are arithmetic over integer literals with ``+ - * /``, unary minus and
  parentheses, parsed with :mod:`ast` against a whitelist and evaluated with
  :class:`fractions.Fraction` (never ``eval``). The answer may be written ``expr = target``;
  the right-hand side must then be the target as a plain integer. Division by zero makes an
  answer wrong, not malformed.
* **GSM8K answers**: the last answer marker in the completion decides -- ``#### N``,
  ``\\boxed{N}`` or ``<answer>N</answer>``, whichever comes last; its last number is the answer.
  Only when there is no marker at all, and ``strict=False``, the last number in the completion
  is the answer. Numbers are compared exactly after dropping ``$``, thousands commas and a
  trailing ``.0``.
"""

from __future__ import annotations

import ast
import re
from decimal import Decimal
from fractions import Fraction
from functools import lru_cache
from typing import NamedTuple

CORRECT_REWARD = 1.0
"""The full reward of every verifier here. A completion is *correct* when it earns it: Countdown's format score
(0.1 for a well-formed wrong answer) is not a solve."""


def is_correct(reward: float) -> bool:
    """The one definition of a correct completion, used by every accuracy, pass@k and length split.

    >>> is_correct(1.0), is_correct(0.1), is_correct(0.0)
    (True, False, False)
    """
    return reward >= CORRECT_REWARD


MAX_COMPLETION_CHARS = 100_000
"""Completions longer than this earn 0 without being parsed."""

MAX_EXPRESSION_CHARS = 256
"""Longest Countdown answer parsed; an honest one with six 3-digit numbers is under 60 chars."""

MAX_DEPTH = 32
"""Deepest nesting accepted in a Countdown answer, counting parentheses and operators alike
(``1+1+...+1`` with 40 terms is 39 deep); an honest answer with six numbers is under 12."""

MAX_MAGNITUDE = 10**30
"""Intermediate values whose numerator or denominator exceed this make the answer wrong."""

MAX_NUMBER_CHARS = 40
"""Longer digit strings in a GSM8K answer never match a gold answer (and are not converted)."""

_OPEN, _CLOSE = "<answer>", "</answer>"
_EXPRESSION_CHARS = frozenset("0123456789+-*/() \t\n")
_BINOPS = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/"}

# ASCII digits only (no \d, which matches every script). A thousands group must be exactly three
# digits; a minus sign counts only where it cannot be a binary minus (not after a digit or letter).
_NUMBER = re.compile(
    r"(?<![0-9A-Za-z.)])(?P<sign>-)?\$?(?P<digits>[0-9]{1,3}(?:,[0-9]{3})+(?![0-9])|[0-9]+)(?P<frac>\.[0-9]+)?"
)
_BRACE = re.compile(r"[{}]")
_FULL_NUMBER = re.compile(r"\s*(-)?\$?\s*([0-9]{1,3}(?:,[0-9]{3})+|[0-9]+)(\.[0-9]+)?\s*")


def extract_answer(completion: str) -> str | None:
    """The text inside the last complete ``<answer>...</answer>`` pair, or ``None``.

    >>> extract_answer("<think>3+5=8</think><answer>(3+5)*2</answer>")
    '(3+5)*2'
    >>> extract_answer("<answer>1</answer> then <answer>2</answer>")
    '2'
    >>> extract_answer("<answer>unclosed") is None
    True
    """
    end = completion.rfind(_CLOSE)
    if end < 0:
        return None
    start = completion.rfind(_OPEN, 0, end)
    if start < 0:
        return None
    return completion[start + len(_OPEN) : end]


class Evaluation(NamedTuple):
    """A well-formed Countdown expression: its exact value (``None`` when undefined, e.g. a
    division by zero or a value beyond :data:`MAX_MAGNITUDE`) and its integer literals in order."""

    value: Fraction | None
    numbers: tuple[int, ...]


def _paren_depth(text: str) -> int | None:
    """Maximum parenthesis depth, or ``None`` when the parentheses do not balance."""
    depth = deepest = 0
    for ch in text:
        if ch == "(":
            depth += 1
            deepest = max(deepest, depth)
        elif ch == ")":
            depth -= 1
            if depth < 0:
                return None
    return deepest if depth == 0 else None


def _evaluate(node: ast.AST, numbers: list[int], depth: int) -> Fraction | None:
    """Evaluate a whitelisted node, collecting its literals into ``numbers``; ``None`` when the
    value is undefined (division by zero, beyond :data:`MAX_MAGNITUDE`), which still visits
    every literal; ``ValueError`` for anything off the whitelist."""
    if depth > MAX_DEPTH:
        raise ValueError("too deep")
    if isinstance(node, ast.Constant) and type(node.value) is int:
        numbers.append(node.value)
        return Fraction(node.value)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        value = _evaluate(node.operand, numbers, depth + 1)
        return None if value is None else -value
    if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
        a = _evaluate(node.left, numbers, depth + 1)
        b = _evaluate(node.right, numbers, depth + 1)
        op = _BINOPS[type(node.op)]
        if a is None or b is None or (op == "/" and b == 0):
            return None
        value = a + b if op == "+" else a - b if op == "-" else a * b if op == "*" else a / b
        if abs(value.numerator) > MAX_MAGNITUDE or value.denominator > MAX_MAGNITUDE:
            return None
        return value
    raise ValueError(f"not allowed: {type(node).__name__}")


def evaluate_expression(text: str) -> Evaluation | None:
    """Parse and evaluate a Countdown expression exactly; ``None`` when it is malformed.

    Malformed means: empty, too long or too deep, a character other than ASCII digits,
    ``+ - * / ( )`` and whitespace, a syntax error, or anything the whitelist does not allow
    (``**``, calls, names, floats, unary plus, leading zeros). Never raises on a string.

    >>> evaluate_expression("(3+5)*2")
    Evaluation(value=Fraction(16, 1), numbers=(3, 5, 2))
    >>> evaluate_expression("8/(3-8/3)").value
    Fraction(24, 1)
    >>> evaluate_expression("4/(2-2)+1")
    Evaluation(value=None, numbers=(4, 2, 2, 1))
    >>> evaluate_expression("2**10") is None, evaluate_expression("__import__('os')") is None
    (True, True)
    """
    if not isinstance(text, str) or len(text) > MAX_EXPRESSION_CHARS or not _EXPRESSION_CHARS.issuperset(text):
        return None
    depth = _paren_depth(text)
    if depth is None or depth > MAX_DEPTH:
        return None
    try:
        tree = ast.parse(text, mode="eval")
    except (SyntaxError, ValueError, MemoryError, RecursionError):
        return None
    numbers: list[int] = []
    try:
        value = _evaluate(tree.body, numbers, 0)
    except (ValueError, RecursionError):
        return None
    return Evaluation(value, tuple(numbers))


def _check_format_score(format_score: float) -> None:
    if not 0.0 <= format_score < 1.0:
        raise ValueError(f"format_score must be in [0, 1) so a wrong answer earns less than a right one, got {format_score}")


GRADED_MAX = 0.9
"""The most a wrong Countdown answer can earn under the graded reward (:func:`countdown_reward` with ``graded``):
well below a solve's 1.0, so the best wrong answer of a group still ranks under every right one."""


_OPERAND = r"\(-?\d{1,40}/\d{1,40}\)|-?\d{1,40}"
_STEP = re.compile(rf"(?<![\d/)])({_OPERAND})\s*([-+*/])\s*({_OPERAND})\s*=\s*(-?\d{{1,40}}(?:/\d{{1,40}})?)(?![\d/])")


_STEP_OPS = {"+": lambda x, y: x + y, "-": lambda x, y: x - y, "*": lambda x, y: x * y, "/": lambda x, y: x / y}


def _step_value(text: str) -> Fraction | None:
    """A step's number (``13``, ``-1``, ``7/2``, ``(1/3)``) exactly; None for a zero denominator."""
    numerator, slash, denominator = text.strip("()").partition("/")
    return None if slash and int(denominator) == 0 else Fraction(int(numerator), int(denominator) if slash else 1)


def countdown_steps_right(completion: str) -> bool:
    """Whether every arithmetic step the completion writes before its answer, ``a op b = c`` (a trace's
    ``13+1=14``, ``8/(1/3)=24``), is exact: the process check of chapter 7's checked pass@k, under which a right
    answer counts as solved only when the work written for it holds. A completion that writes no step passes (there
    is nothing wrong in it); only the text before the last ``<answer>`` is read.

    >>> countdown_steps_right("13 2 1: 2*13=26, 26*1=26, 26 vs 28, no\\n13 1 2: 13+1=14, 14*2=28, yes\\n"
    ...                       "<answer>(13+1)*2</answer>")
    True
    >>> countdown_steps_right("13 1 2: 13+1=15, 15*2=28, 28 vs 28, yes\\n<answer>(13+1)*2</answer>")  # a slip
    False
    >>> countdown_steps_right("13-14=-1, 8/(1/3)=24, 7/2=7/2"), countdown_steps_right("<answer>3+5</answer>")
    (True, True)
    >>> countdown_steps_right("4/0=4"), countdown_steps_right("(1/0)*2=2")  # never a ZeroDivisionError
    (False, False)
    """
    if len(completion) > MAX_COMPLETION_CHARS:
        return False
    end = completion.rfind("<answer>")
    work = completion if end < 0 else completion[:end]
    for a, op, b, result in _STEP.findall(work):
        x, y, claimed = _step_value(a), _step_value(b), _step_value(result)
        if None in (x, y, claimed) or (op == "/" and y == 0) or _STEP_OPS[op](x, y) != claimed:
            return False
    return True


def countdown_reward(completion: str, numbers: list[int], target: int, *, format_score: float = 0.1,
                     graded: bool = False) -> float:
    """1.0 for a correct Countdown answer, ``format_score`` for a well-formed wrong one, else 0.0.

    ``graded`` adds credit for closeness (chapter 9's non-binary reward): a wrong answer that uses exactly
    ``numbers`` and has a value v earns ``format_score + (GRADED_MAX - format_score) * max(0, 1 - |v - target| /
    target)``, so from ``format_score`` (far off, or other numbers than the given ones) up to just under
    :data:`GRADED_MAX`; a right answer still earns 1.0 and a malformed one 0.0.

    Correct: the last ``<answer>`` holds an expression (optionally ``expr = target``) whose
    integer literals are exactly ``numbers`` (as a multiset, any order) and whose exact value is
    ``target``. Raises ``TypeError`` only for a non-string completion (a caller's bug).

    >>> countdown_reward("<think>3+5=8, 8*2=16</think>\\n<answer>(3+5)*2</answer>", [3, 5, 2], 16)
    1.0
    >>> countdown_reward("<answer>(3+5)*2 = 16</answer>", [3, 5, 2], 16)
    1.0
    >>> countdown_reward("<answer>3*5+2</answer>", [3, 5, 2], 16)  # well-formed, equals 17
    0.1
    >>> countdown_reward("<answer>8*2</answer>", [3, 5, 2], 16)  # 16, but not from these numbers
    0.1
    >>> countdown_reward("<answer>2**4</answer>", [3, 5, 2], 16), countdown_reward("16", [3, 5, 2], 16)
    (0.0, 0.0)
    >>> round(countdown_reward("<answer>3*5+2</answer>", [3, 5, 2], 16, graded=True), 4)  # 17: off by 1/16
    0.85
    >>> countdown_reward("<answer>8*2</answer>", [3, 5, 2], 16, graded=True)  # other numbers: the format score
    0.1
    """
    if not isinstance(completion, str):
        raise TypeError(f"completion must be a str, got {type(completion).__name__}")
    _check_format_score(format_score)
    if graded and format_score > GRADED_MAX:
        raise ValueError(f"the graded reward runs from format_score up to {GRADED_MAX}: format_score must be <= "
                         f"{GRADED_MAX}, got {format_score}")
    if len(completion) > MAX_COMPLETION_CHARS:
        return 0.0
    answer = extract_answer(completion)
    if answer is None or len(answer) > MAX_EXPRESSION_CHARS:
        return 0.0
    expression, eq, claimed = answer.partition("=")
    if eq:
        claimed = claimed.strip()
        if not (claimed.isascii() and claimed.isdigit() and len(claimed) <= MAX_NUMBER_CHARS):
            return 0.0
    evaluation = evaluate_expression(expression.strip())
    if evaluation is None:
        return 0.0
    correct = (
        evaluation.value is not None
        and evaluation.value == target
        and sorted(evaluation.numbers) == sorted(numbers)
        and (not eq or int(claimed) == target)
    )
    if correct:
        return 1.0
    if not graded or evaluation.value is None or sorted(evaluation.numbers) != sorted(numbers):
        return format_score
    closeness = max(0.0, 1.0 - float(abs(evaluation.value - target) / max(abs(target), 1)))
    return format_score + (GRADED_MAX - format_score) * closeness


def _to_fraction(sign: str | None, digits: str, frac: str | None) -> Fraction | None:
    if len(digits) + len(frac or "") > MAX_NUMBER_CHARS:
        return None
    value = Fraction(Decimal(digits.replace(",", "") + (frac or "")))
    return -value if sign else value


def parse_number(text: str) -> Fraction | None:
    """The exact value of a text that is one number (``"$1,234.50"``, ``"-7"``, ``"72.0"``), else ``None``.

    >>> parse_number("$1,234.50"), parse_number(" 72.0 "), parse_number("seven")
    (Fraction(2469, 2), Fraction(72, 1), None)
    """
    m = _FULL_NUMBER.fullmatch(text) if isinstance(text, str) and len(text) <= 2 * MAX_NUMBER_CHARS else None
    return _to_fraction(*m.groups()) if m else None


def _last_number(text: str) -> Fraction | None:
    # Only the last number matters: find the last digit with C-speed rfinds, then match in a
    # window ending there. The window is wider than any number that can still be converted
    # (MAX_NUMBER_CHARS digits plus sign, "$", commas and a point), so the result is the same
    # as scanning the whole text: a number cut by the window's start is too long either way. When the window
    # holds digits but no number (".111..." after a point is the tail of a decimal), the last number lies
    # before it, and the whole text is scanned.
    end = max(text.rfind(d) for d in "0123456789")
    if end < 0:
        return None
    last = None
    for last in _NUMBER.finditer(text, max(0, end - 3 * MAX_NUMBER_CHARS), end + 1):
        pass
    if last is None:
        for last in _NUMBER.finditer(text):
            pass
    return _to_fraction(last["sign"], last["digits"], last["frac"]) if last else None


def _boxed(completion: str) -> tuple[int, str] | None:
    """Position and content of the last complete ``\\boxed{...}`` (braces matched), or ``None``.

    Linear time: when a ``\\boxed{`` never closes, an earlier one can only close before it
    (after it, the earlier one's braces are nested deeper still), so each scan stops where the
    previous one started; and a ``\\boxed{`` after the last ``}`` is skipped without a scan.
    """
    limit = len(completion)
    while True:
        close = completion.rfind("}", 0, limit)
        start = completion.rfind("\\boxed{", 0, close) if close >= 0 else -1
        if start < 0:
            return None
        depth = 0
        for brace in _BRACE.finditer(completion, start + len("\\boxed"), limit):
            depth += 1 if brace[0] == "{" else -1
            if depth == 0:
                return start, completion[start + len("\\boxed{") : brace.start()]
        limit = start


def extract_final_answer(completion: str, *, strict: bool = False) -> Fraction | None:
    """The final numeric answer of a GSM8K-style completion, exactly, or ``None``.

    The last marker (``#### N``, ``\\boxed{N}``, ``<answer>N</answer>``) decides and its last
    number is the answer; a marker with no number means no answer. Without any marker, the last
    number in the completion, unless ``strict``.

    >>> extract_final_answer("18 + 54 = 72 clips.\\n#### 72")
    Fraction(72, 1)
    >>> extract_final_answer("So she pays $1,250.00 in total.")
    Fraction(1250, 1)
    >>> extract_final_answer("So she pays $1,250.00 in total.", strict=True) is None
    True
    >>> extract_final_answer("#### 5 then \\\\boxed{\\\\frac{1}{2}} then <answer>7</answer>")
    Fraction(7, 1)
    """
    if not isinstance(completion, str) or len(completion) > MAX_COMPLETION_CHARS:
        return None
    markers = []  # (position, content)
    hashes = completion.rfind("####")
    if hashes >= 0:
        line_end = completion.find("\n", hashes)
        markers.append((hashes, completion[hashes + 4 : line_end if line_end >= 0 else len(completion)]))
    boxed = _boxed(completion)
    if boxed:
        markers.append(boxed)
    end = completion.rfind(_CLOSE)
    start = completion.rfind(_OPEN, 0, end) if end >= 0 else -1
    if start >= 0:
        markers.append((start, completion[start + len(_OPEN) : end]))
    if markers:
        return _last_number(max(markers)[1])
    return None if strict else _last_number(completion)


@lru_cache(maxsize=4096)
def _gold_value(gold: str) -> Fraction:
    value = parse_number(gold)
    if value is None:
        raise ValueError(f"gold answer {gold!r} is not a number; pass the text after '####' (see companion.tasks.gsm8k.extract_gold)")
    return value


def gsm8k_reward(completion: str, gold: str, *, strict: bool = False) -> float:
    """1.0 when the completion's final answer equals the gold number exactly, else 0.0.

    ``gold`` is the text after ``####`` in a GSM8K answer (see
    :func:`companion.tasks.gsm8k.extract_gold`); a gold that is not a number raises
    ``ValueError``. ``strict=True`` turns off the last-number fallback, so only an explicit
    answer marker can score.

    >>> gsm8k_reward("She has 3*24 = 72 clips.\\n#### 72", "72")
    1.0
    >>> gsm8k_reward("The answer is \\\\boxed{1,000}.", "1000"), gsm8k_reward("<answer>72.0</answer>", "72")
    (1.0, 1.0)
    >>> gsm8k_reward("so 72 clips", "72"), gsm8k_reward("so 72 clips", "72", strict=True)
    (1.0, 0.0)
    >>> gsm8k_reward("#### 71", "72")
    0.0
    """
    if not isinstance(completion, str):
        raise TypeError(f"completion must be a str, got {type(completion).__name__}")
    gold_value = _gold_value(gold)
    answer = extract_final_answer(completion, strict=strict)
    return 1.0 if answer is not None and answer == gold_value else 0.0
