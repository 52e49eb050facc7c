"""Tasks: generators are deterministic, distinct, solvable and split cleanly; the solver is exact."""

import itertools
import json
import time
from fractions import Fraction
from pathlib import Path

import pytest

from companion.tasks import countdown, get_task, gsm8k, prompts, tinygsm
from companion.verify import countdown_reward, evaluate_expression
from companion.shipped import data_dir

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


def test_countdown_hard_tier_draws_larger_numbers_from_its_own_held_out_split():
    from companion.tasks import TIERS, tier_options

    hard = get_task("countdown", **tier_options("countdown", "hard"))
    test, train = hard.generate(300, seed=0, split="test"), hard.generate(2000, seed=0, split="train")
    assert max(max(p["numbers"]) for p in test) == TIERS["countdown"]["hard"]["high"] == 35
    assert all(1 <= p["target"] <= 100 and countdown.split_of(p) == "test" for p in test)
    assert all(countdown.split_of(p) == "train" for p in train)
    assert hard.generate(5, seed=0, split="test", high=30) != hard.generate(5, seed=0, split="test")  # options win
    assert get_task("countdown").generate(50, seed=0) == countdown.generate(50, seed=0)  # the default tier as it was
    with pytest.raises(ValueError, match="its tiers: default, hard"):
        tier_options("countdown", "extreme")
    with pytest.raises(ValueError, match="drop --tier"):
        tier_options("tinygsm", "hard")


def test_countdown_split_ignores_number_order():
    for p in countdown.generate(200, seed=5):
        for perm in itertools.permutations(p["numbers"]):
            assert countdown.split_of({"numbers": list(perm), "target": p["target"]}) == countdown.split_of(p)


def test_countdown_generate_rejects_impossible_requests():
    with pytest.raises(ValueError, match="fewer problems or widen"):
        countdown.generate(50, low=1, high=2, seed=0)
    with pytest.raises(ValueError, match="too many to enumerate"):
        countdown.enumerate_problems(n_numbers=4, high=100)
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


# -- tinygsm -----------------------------------------------------------------------------------


def _replay(steps):
    """Check each step's arithmetic and the chaining of steps, independently of the generator."""
    ops = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b, "/": lambda a, b: a / b}
    for a, op, b, r in steps:
        assert ops[op](a, b) == r and r >= 0 and r == int(r)
    return steps[-1][3]


def test_tinygsm_problems_are_consistent():
    problems = tinygsm.generate(2000, seed=0)
    assert len({p["question"] for p in problems}) == 2000
    assert {p["template"] for p in problems} == set(tinygsm.TEMPLATES)
    for p in problems:
        final = _replay(p["steps"])
        assert gsm8k.extract_gold(p["answer"]) == str(final)
        assert len(p["steps"]) == tinygsm.TEMPLATES[p["template"]][0]
        assert str(final) in p["answer"].splitlines()[-2]  # the worked solution ends on the answer
        # Every number the question states is a number in the solution: nothing is hidden.
        assert all(str(n) in p["question"] for n in p["numbers"])
        assert len(p["question"]) <= 120 and max(abs(s[3]) for s in p["steps"]) <= 500


def test_tinygsm_is_deterministic_and_respects_step_bounds():
    assert tinygsm.generate(100, seed=4) == tinygsm.generate(100, seed=4)
    assert tinygsm.generate(100, seed=4) != tinygsm.generate(100, seed=5)
    assert all(len(p["steps"]) == 1 for p in tinygsm.generate(200, seed=0, max_steps=1))
    assert all(len(p["steps"]) >= 2 for p in tinygsm.generate(200, seed=0, min_steps=2))
    with pytest.raises(ValueError, match="no template"):
        tinygsm.generate(1, min_steps=4, max_steps=5)
    with pytest.raises(ValueError, match="fewer problems"):
        tinygsm.generate(10, seed=0, split="test", test_fraction=1e-9)  # a test split with ~no problems


def test_tinygsm_splits_are_disjoint_by_structure():
    train = tinygsm.generate(3000, seed=0, split="train")
    test = tinygsm.generate(300, seed=0, split="test")
    structure = lambda p: (p["template"], tuple(p["numbers"]))  # noqa: E731
    assert not {structure(p) for p in train} & {structure(p) for p in test}
    share = sum(tinygsm.split_of(p) == "test" for p in tinygsm.generate(4000, seed=1)) / 4000
    assert 0.07 < share < 0.13


# -- gsm8k -------------------------------------------------------------------------------------

SAMPLE = data_dir() / "verifier" / "gsm8k_sample.jsonl"


def test_extract_gold():
    assert gsm8k.extract_gold("a\n#### 72") == "72"
    assert gsm8k.extract_gold("x #### 3 #### 1,000 ") == "1000"
    for bad in ["no marker", "ends with ####  "]:
        with pytest.raises(ValueError, match="####"):
            gsm8k.extract_gold(bad)


def test_gsm8k_sample_golds_match_their_worked_solutions():
    records = [json.loads(line) for line in SAMPLE.read_text().splitlines()]
    assert len(records) >= 10
    for r in records:
        gold = gsm8k.extract_gold(r["answer"])
        # The last calculator annotation <<expr=value>> carries the gold value.
        assert r["answer"].rsplit("=", 1)[1].split(">>")[0] == gold


def test_gsm8k_load_from_file_and_errors(tmp_path):
    ds = gsm8k.load("train", data_file=SAMPLE)
    assert len(ds) == len(SAMPLE.read_text().splitlines())
    assert gsm8k.generate(4, seed=1, data_file=SAMPLE) == gsm8k.generate(4, seed=1, data_file=SAMPLE)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        gsm8k.load("train", data_file=tmp_path / "missing.jsonl")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "q", "solution": "#### 1"}\n')
    with pytest.raises(ValueError, match="answer"):
        gsm8k.load("train", data_file=bad)
    with pytest.raises(ValueError, match="asked for 99"):
        gsm8k.generate(99, data_file=SAMPLE)


def test_gsm8k_load_without_hub_fails_fast_with_both_options(monkeypatch):
    # Here the hub is unreachable for real; the env var makes the test mean the same thing on a
    # machine that is online.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.monotonic()
    with pytest.raises(RuntimeError) as err:
        gsm8k.load("train")
    assert time.monotonic() - start < gsm8k.PROBE_TIMEOUT_S + 2
    assert "data_file=" in str(err.value) and "openai/gsm8k" in str(err.value)
    with pytest.raises(ValueError, match="splits"):
        gsm8k.load("validation")


def test_hub_probe_is_bounded_even_when_unreachable(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "https://hub.invalid")  # .invalid never resolves (RFC 2606)
    start = time.monotonic()
    from companion.runs import hub_reachable

    assert hub_reachable(timeout=1.0) is False
    assert time.monotonic() - start < 1.5


# -- prompts and the registry ------------------------------------------------------------------


def test_base_prompts_are_short_and_open_thinking():
    for name in ("countdown", "tinygsm"):
        task = get_task(name)
        for p in task.generate(300, seed=0):
            text = task.prompt(p)
            assert text.endswith("\n<think>") and "<answer></answer>" in text
            # The tiny model's context is a few hundred characters; leave most for the completion.
            assert len(text) <= (110 if name == "countdown" else 200), text


def test_chat_prompt_uses_the_tokenizer_template():
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel({"[UNK]": 0}, unk_token="[UNK]")))
    tok.chat_template = (
        "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    problem = {"numbers": [3, 5, 2], "target": 16}
    text = prompts.format_prompt("countdown", problem, style="chat", tokenizer=tok)
    assert text == f"<|im_start|>user\n{prompts.instruction('countdown', problem)}<|im_end|>\n<|im_start|>assistant\n<think>"
    tok.chat_template = None
    with pytest.raises(ValueError, match="chat template"):
        prompts.format_prompt("countdown", problem, style="chat", tokenizer=tok)
    with pytest.raises(ValueError, match="style"):
        prompts.format_prompt("countdown", problem, style="instruct")
    with pytest.raises(ValueError, match="known tasks"):
        prompts.format_prompt("math", problem)


def test_registry_round_trip():
    for name in ("countdown", "tinygsm"):
        task = get_task(name)
        problems = task.generate(50, seed=2, split="test")
        for p in problems:
            assert task.reward(f"<think>...</think><answer>{task.reference(p)}</answer>", p) == 1.0
            assert task.reward("<think>no idea</think>", p) == 0.0
    gsm = get_task("gsm8k")
    for p in gsm.generate(data_file=SAMPLE):
        assert gsm.reward(f"#### {gsm.reference(p)}", p) == 1.0
    assert get_task("gsm8k", strict=True).reward("it is 17", {"answer": "#### 17"}) == 0.0
    with pytest.raises(ValueError, match="countdown, tinygsm, gsm8k"):
        get_task("aime")


def test_countdown_default_space_size_is_as_documented():
    # The module docstring quotes these numbers; count them independently of generate().
    total = test = 0
    for numbers in itertools.combinations_with_replacement(range(1, 21), 3):
        for target in countdown.reachable_targets(list(numbers)):
            total += 1
            test += countdown.split_of({"numbers": list(numbers), "target": target}) == "test"
    assert (total, test) == (16_292, 1_661)
    assert len(countdown.enumerate_problems(split="test")) == 1_661
    # generate() can use up the whole split: rare problems come from the enumeration fallback.
    everything = countdown.generate(1_661, seed=0, split="test")
    assert {(tuple(sorted(p["numbers"])), p["target"]) for p in everything} == {
        (tuple(p["numbers"]), p["target"]) for p in countdown.enumerate_problems(split="test")
    }
    small = len(countdown.enumerate_problems(low=1, high=4))
    assert len(countdown.generate(small, low=1, high=4, seed=0)) == small
    with pytest.raises(ValueError, match=f"only {small} distinct"):
        countdown.generate(small + 1, low=1, high=4, seed=0)
