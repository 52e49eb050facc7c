"""Verifiers: exact on honest answers, bounded and crash-free on anything else.

``data/verifier/adversarial_completions.jsonl`` holds one case per line: ``task`` ("countdown" with
``numbers``/``target``, or "gsm8k" with ``gold``/``strict``), the ``completion`` as a list of
parts (a string, or ``[text, count]`` for ``text`` repeated ``count`` times, which keeps the
megabyte cases small on disk), the ``expected`` reward and ``why``.
"""

import itertools
import json
import random
import time
from fractions import Fraction
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from companion import verify
from companion.verify import countdown_reward, evaluate_expression, extract_final_answer, gsm8k_reward, parse_number
from companion.shipped import data_dir

CASES = [json.loads(line) for line in (data_dir() / "verifier" / "adversarial_completions.jsonl").read_text().splitlines()]
FORMAT = 0.1
BUDGET_S = 0.25  # per completion, generous for a loaded 2-core machine; typical cost is ~20 us


def _text(parts) -> str:
    return "".join(p if isinstance(p, str) else p[0] * p[1] for p in parts)


def _reward(case, completion=None) -> float:
    completion = _text(case["completion"]) if completion is None else completion
    if case["task"] == "countdown":
        return countdown_reward(completion, case["numbers"], case["target"], format_score=FORMAT)
    return gsm8k_reward(completion, case["gold"], strict=case["strict"])


@pytest.mark.parametrize("case", CASES, ids=[f"{c['task']}: {c['name']}" for c in CASES])
def test_adversarial_case(case):
    completion = _text(case["completion"])
    start = time.perf_counter()
    reward = _reward(case, completion)
    elapsed = time.perf_counter() - start
    assert reward == case["expected"], case["why"]
    assert elapsed < BUDGET_S, f"{elapsed:.3f}s"


def test_adversarial_file_covers_the_brief():
    names = {c["name"] for c in CASES}
    for required in ["several answers, last wrong", "answer inside think", "number reused", "number missing", "import",
                     "power tower", "arabic-indic digits", "fullwidth digits", "nested answer tags",
                     "megabyte completion", "very deep parentheses"]:  # fmt: skip
        assert required in names
    assert {c["expected"] for c in CASES if c["task"] == "countdown"} == {0.0, FORMAT, 1.0}


# -- exactness on honest answers --------------------------------------------------------------


def _tree(draw, numbers):
    """A random expression over ``numbers`` (each used once): (text, exact value or None)."""
    if len(numbers) == 1:
        return str(numbers[0]), Fraction(numbers[0])
    k = draw(st.integers(1, len(numbers) - 1))
    (lt, lv), (rt, rv) = _tree(draw, numbers[:k]), _tree(draw, numbers[k:])
    op = draw(st.sampled_from("+-*/"))
    if lv is None or rv is None or (op == "/" and rv == 0):
        value = None
    else:
        value = {"+": lv + rv, "-": lv - rv, "*": lv * rv, "/": lv / rv if rv else None}[op]
    spaces = draw(st.sampled_from(["", " "]))
    return f"({lt}{spaces}{op}{spaces}{rt})", value


@st.composite
def expressions(draw):
    numbers = draw(st.lists(st.integers(0, 100), min_size=1, max_size=6))
    order = draw(st.permutations(numbers))
    text, value = _tree(draw, list(order))
    return numbers, text, value


@given(expressions())
@settings(max_examples=300, deadline=None)
def test_evaluation_matches_an_independent_evaluator(case):
    numbers, text, value = case
    evaluation = evaluate_expression(text)
    assert evaluation is not None
    assert sorted(evaluation.numbers) == sorted(numbers)
    assert evaluation.value == value


@given(expressions(), st.integers(-50, 200))
@settings(max_examples=300, deadline=None)
def test_countdown_reward_is_exactly_the_rule(case, target):
    numbers, text, value = case
    reward = countdown_reward(f"<think>...</think><answer>{text}</answer>", numbers, target, format_score=FORMAT)
    assert reward == (1.0 if value == target else FORMAT)
    if value is not None and value.denominator == 1 and value >= 0:
        assert countdown_reward(f"<answer>{text}</answer>", numbers, int(value)) == 1.0
        assert countdown_reward(f"<answer>{text} = {int(value)}</answer>", numbers, int(value)) == 1.0
        # One literal too many or too few is never right.
        assert countdown_reward(f"<answer>{text}*1</answer>", numbers, int(value), format_score=0.0) == 0.0
        assert countdown_reward(f"<answer>{text}</answer>", numbers + [1], int(value), format_score=0.0) == 0.0


def test_format_score_is_validated():
    with pytest.raises(ValueError, match="format_score"):
        countdown_reward("<answer>1</answer>", [1], 1, format_score=1.0)
    with pytest.raises(TypeError, match="str"):
        countdown_reward(None, [1], 1)
    with pytest.raises(TypeError, match="str"):
        gsm8k_reward(b"#### 1", "1")


# -- gsm8k answers -----------------------------------------------------------------------------


@st.composite
def written_numbers(draw):
    """An exact value and one way a model might write it."""
    whole = draw(st.integers(0, 10**9))
    cents = draw(st.integers(0, 99))
    negative = draw(st.booleans())
    value = Fraction(whole * 100 + cents, 100) * (-1 if negative else 1)
    digits = f"{whole:,}" if draw(st.booleans()) else str(whole)
    if cents:
        text = f"{digits}.{cents:02d}"
    else:
        text = digits + draw(st.sampled_from(["", ".0", ".00"]))
    return value, ("-" if negative else "") + draw(st.sampled_from(["", "$"])) + text


@given(written_numbers(), st.sampled_from(["#### {}", "\\boxed{{{}}}", "<answer>{}</answer>", "so it is {}."]))
@settings(max_examples=300, deadline=None)
def test_gsm8k_numbers_compare_exactly(written, template):
    value, text = written
    completion = "Some work: 3+4=7.\n" + template.format(text)
    assert extract_final_answer(completion) == value
    gold = str(value.numerator) if value.denominator == 1 else f"{float(value):.2f}"
    assert gsm8k_reward(completion, gold) == 1.0
    assert gsm8k_reward(completion, str(value.numerator + 1) if value.denominator == 1 else "0.001") == 0.0


def test_gold_must_be_a_number():
    with pytest.raises(ValueError, match="extract_gold"):
        gsm8k_reward("#### 5", "five")
    assert parse_number("1,234") == 1234 and parse_number("12,34") is None


# -- never raises, always bounded -------------------------------------------------------------

ALPHABET = st.sampled_from(
    list("0123456789+-*/()=., $#\\{}<>/abx\n\t\x00") + ["<answer>", "</answer>", "<think>", "</think>", "\\boxed{", "####",
                                                        "**", "\u0663", "\uff13", "\ud800", "9" * 50, "(" * 40]
)  # fmt: skip


@given(st.lists(ALPHABET, max_size=200).map("".join))
@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_any_tokenish_string_gets_a_valid_reward(text):
    assert countdown_reward(text, [3, 5, 2], 16, format_score=FORMAT) in (0.0, FORMAT, 1.0)
    assert gsm8k_reward(text, "72") in (0.0, 1.0)
    assert gsm8k_reward(text, "72", strict=True) in (0.0, 1.0)


@given(st.text(max_size=500))
@settings(max_examples=500, deadline=None)
def test_any_unicode_string_gets_a_valid_reward(text):
    for completion in (text, f"<answer>{text}</answer>", f"#### {text}"):
        assert countdown_reward(completion, [3, 5, 2], 16) in (0.0, 0.1, 1.0)
        assert gsm8k_reward(completion, "72") in (0.0, 1.0)


def test_worst_case_inputs_stay_fast():
    rng = random.Random(0)
    pieces = ["<answer>", "</answer>", "\\boxed{", "}", "####", "1", ",", "(", ")", "-", "$", "\n", "1,000"]
    worst = 0.0
    for _ in range(20):
        text = "".join(rng.choice(pieces) for _ in range(verify.MAX_COMPLETION_CHARS // 5))[: verify.MAX_COMPLETION_CHARS]
        start = time.perf_counter()
        countdown_reward(text, [3, 5, 2], 16)
        gsm8k_reward(text, "72")
        worst = max(worst, time.perf_counter() - start)
    assert worst < 0.5, f"{worst:.3f}s for a {verify.MAX_COMPLETION_CHARS}-char completion"


# -- the fast paths agree with the obvious slow ones -------------------------------------------


def _slow_last_number(text):
    last = None
    for last in verify._NUMBER.finditer(text):
        pass
    return verify._to_fraction(last["sign"], last["digits"], last["frac"]) if last else None


def _slow_boxed(text):
    for start in reversed([k for k in range(len(text)) if text.startswith("\\boxed{", k)]):
        depth = 0
        for k in range(start + len("\\boxed"), len(text)):
            depth += text[k] == "{"
            depth -= text[k] == "}"
            if depth == 0:
                return start, text[start + len("\\boxed{") : k]
    return None


NUMBERISH = st.lists(st.sampled_from(list("0123456789,.$- a)") + ["1" * 30, ",000", "\\boxed{", "{", "}"]), max_size=120)


@given(NUMBERISH.map("".join))
@example("0,." + "1" * 120)  # digits at the end that are no number: the last number comes before the window
@settings(max_examples=1000, deadline=None)
def test_fast_paths_match_full_scans(text):
    assert verify._last_number(text) == _slow_last_number(text)
    assert verify._boxed(text) == _slow_boxed(text)


# -- the process check of checked pass@k -------------------------------------------------------


@pytest.mark.parametrize("case", [c for c in CASES if c["task"] == "countdown"], ids=lambda c: c["name"])
def test_the_step_check_is_bounded_and_never_raises_on_adversarial_completions(case):
    start = time.perf_counter()
    assert verify.countdown_steps_right(_text(case["completion"])) in (True, False)
    assert time.perf_counter() - start < BUDGET_S


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="0123456789+-*/()= ,:\n<>answer", max_size=200))
def test_the_step_check_never_raises(text):
    assert verify.countdown_steps_right(text) in (True, False)


def test_the_solvers_traces_pass_the_step_check_and_a_slip_fails_it():
    from companion.tasks import countdown
    from companion.traces import Noise, countdown_clean_trace, countdown_trace

    rng = random.Random(0)
    problems = countdown.generate(300, seed=4)
    for problem in problems:  # the exact solver's every step, fractions and negatives included
        assert verify.countdown_steps_right(countdown_clean_trace(problem, rng))
        for steps in itertools.islice(countdown.solution_steps(problem["numbers"], problem["target"]), 3):
            assert verify.countdown_steps_right(", ".join(step.text() for step in steps))
    slipped = [countdown_trace(p, random.Random(i), Noise(slip=1.0, guided=1.0, max_attempts=1))
               for i, p in enumerate(problems[:100])]
    assert not any(verify.countdown_steps_right(t) for t in slipped)  # every step's result miscalculated
    honest = [countdown_trace(p, random.Random(i), Noise(slip=0.0)) for i, p in enumerate(problems[:100])]
    assert all(verify.countdown_steps_right(t) for t in honest)
