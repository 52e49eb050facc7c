"""The tiny base model: tokenizer, config, pretraining pipeline, shipped checkpoint."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from companion.tiny import ALPHABET, build_tokenizer, model_config


def test_tokenizer_is_one_token_per_character_and_round_trips(tmp_path):
    tok = build_tokenizer()
    text = "Numbers: 13 2 1\nTarget: 28\n<think>\n13*2=26 26+1=27 no\n</think>\n<answer>13*2+1</answer>"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert len(ids) == len(text) and tok.decode(ids) == text
    tok.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    assert loaded(text)["input_ids"] == ids
    assert (loaded.pad_token, loaded.eos_token, loaded.padding_side) == ("<|pad|>", "<|endoftext|>", "left")
    assert loaded.pad_token_id != loaded.eos_token_id


def test_tokenizer_reloads_token_for_token_next_to_a_qwen2_config(tmp_path):
    # Next to a Qwen2 config.json, AutoTokenizer builds a Qwen2Tokenizer from the saved vocabulary whatever
    # tokenizer_config.json says; a character tokenizer without the ByteLevel step came back without its
    # spaces and newlines, and a model trained with one was evaluated with the other.
    import random

    tok = build_tokenizer()
    tok.save_pretrained(tmp_path)
    model_config(tok, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                 intermediate_size=64).save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    rng = random.Random(0)
    texts = [ALPHABET, "\n4*9=36, no\n</think>\n<answer>(4*9)-17</answer>", "  two spaces\t tab\r\n", "é ∑ 日本"]
    texts += ["".join(chr(rng.randint(0, 0x2FFF)) for _ in range(40)) for _ in range(100)]
    for text in texts:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert loaded(text, add_special_tokens=False)["input_ids"] == ids, repr(text)
        assert loaded.decode(ids) == tok.decode(ids)
    assert (len(loaded), loaded.pad_token_id, loaded.eos_token_id) == (len(tok), tok.pad_token_id, tok.eos_token_id)


def test_tokenizer_covers_every_byte_pads_left_and_skips_specials():
    tok = build_tokenizer()
    assert len(tok) == 258 and len(tok(ALPHABET)["input_ids"]) == len(ALPHABET)
    assert tok.decode(tok("é日")["input_ids"]) == "é日" and len(tok("é")["input_ids"]) == 2  # UTF-8 bytes
    batch = tok(["ab", "abcd"], padding=True)
    assert batch["input_ids"][0][:2] == [tok.pad_token_id] * 2 and batch["attention_mask"][0] == [0, 0, 1, 1]
    assert tok.decode([tok.convert_tokens_to_ids("a"), tok.eos_token_id, tok.pad_token_id], skip_special_tokens=True) == "a"


def test_model_config_rejects_shapes_that_cannot_work():
    tok = build_tokenizer()
    with pytest.raises(ValueError, match="multiple of num_attention_heads"):
        model_config(tok, hidden_size=30, num_attention_heads=4)
    with pytest.raises(ValueError, match="multiple of num_key_value_heads"):
        model_config(tok, num_attention_heads=4, num_key_value_heads=3)


def test_random_tiny_policy_fixture_generates_with_left_padding(tiny_policy):
    from companion.rollout import generate

    model, tok = tiny_policy
    assert 50_000 < sum(p.numel() for p in model.parameters()) < 200_000
    rollout = generate(model, tok, ["3+5=", "12*13="], num_generations=2, max_completion_length=8, seed=0)
    assert rollout.completion_ids.shape == (4, 8) and len(rollout.texts) == 4
    again = generate(model, tok, ["3+5=", "12*13="], num_generations=2, max_completion_length=8, seed=0)
    assert torch.equal(rollout.completion_ids, again.completion_ids)


def test_fixture_directory_loads_with_auto_classes(tiny_policy_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_policy_dir)
    assert model.config.model_type == "qwen2" and model.config.eos_token_id == AutoTokenizer.from_pretrained(tiny_policy_dir).eos_token_id


# --- traces ----------------------------------------------------------------------------------------------

import random  # noqa: E402

from companion import traces  # noqa: E402
from companion.tasks import get_task  # noqa: E402
from companion.traces import Noise  # noqa: E402


@pytest.fixture(scope="module")
def train_problems():
    return {task: get_task(task).generate(150, seed=3, split="train") for task in traces.TASKS}


def _accuracy(task, problems, noise, seed=0):
    spec = get_task(task)
    pairs = traces.examples(task, problems, seed=seed, noise=noise)
    return sum(spec.reward(c, p) == 1.0 for (_, c), p in zip(pairs, problems)) / len(problems)


@pytest.mark.parametrize("task", traces.TASKS)
def test_clean_traces_are_always_right_and_in_the_alphabet(task, train_problems):
    assert _accuracy(task, train_problems[task], noise=None) == 1.0
    tok = build_tokenizer()
    for prompt, completion in traces.examples(task, train_problems[task], noise=None):
        assert prompt.endswith("<think>") and completion.count("</think>") == 1 and completion.endswith("</answer>")
        assert tok.unk_token_id not in tok(prompt + completion)["input_ids"]


@pytest.mark.parametrize("task", traces.TASKS)
def test_noisy_traces_are_right_sometimes_and_reproducible(task, train_problems):
    problems = train_problems[task]
    accuracy = _accuracy(task, problems, Noise())
    assert 0.3 < accuracy < 0.9
    assert traces.examples(task, problems, seed=5) == traces.examples(task, problems, seed=5)
    assert traces.examples(task, problems, seed=5) != traces.examples(task, problems, seed=6)
    tok = build_tokenizer()
    for prompt, completion in traces.examples(task, problems):
        assert completion.count("</think>") == 1 and completion.endswith("</answer>")
        assert tok.unk_token_id not in tok(completion)["input_ids"]


def test_noise_knobs_move_accuracy_and_length(train_problems):
    cd, words = train_problems["countdown"], train_problems["tinygsm"]
    # A solver that always follows a solution and never slips is the exact solver.
    assert _accuracy("countdown", cd, Noise(guided=1.0, slip=0.0)) == 1.0
    assert _accuracy("tinygsm", words, Noise(wrong_op=0.0, slip=0.0)) == 1.0
    # Without intuition, one blind attempt rarely hits.
    assert _accuracy("countdown", cd * 4, Noise(guided=0.0, max_attempts=1)) < 0.2
    # A slip on every step makes every one-step word problem wrong ...
    one_step = [p for p in words if len(p["steps"]) == 1]
    assert one_step and _accuracy("tinygsm", one_step, Noise(slip=1.0)) == 0.0
    # ... and a wrong result is carried into the next step, whichever operand it is.
    for steps in ([(3, "*", 4, 12), (12, "+", 5, 17)], [(3, "*", 4, 12), (20, "-", 12, 8)]):
        problem = {"question": "", "steps": steps, "numbers": [3, 4, steps[1][0] if steps[1][0] != 12 else 5]}
        first, second = traces.tinygsm_trace(problem, random.Random(0), Noise(slip=1.0, wrong_op=0.0)).split("\n")[1:3]
        slipped = first.split("=")[1]
        assert slipped != "12" and slipped in second.split("=")[0].replace("+", " ").replace("-", " ").split()
    short = traces.examples("countdown", cd, noise=Noise(max_attempts=1, guided=0.0))
    long = traces.examples("countdown", cd, noise=Noise(max_attempts=8, guided=0.0))
    assert sum(len(c) for _, c in long) > 1.5 * sum(len(c) for _, c in short)


def test_heavy_noise_never_breaks_a_trace(train_problems):
    # Slips can derail a replayed solution (a slipped 0 then divided by): the step is dropped, not crashed on.
    noise = Noise(slip=0.5, guided=0.8, wrong_op=0.9, notice=0.2)
    for task, problems in train_problems.items():
        for _, completion in traces.examples(task, problems * 4, noise=noise):
            assert completion.endswith("</answer>")


def test_noisy_traces_vary_in_length(train_problems):
    lengths = [len(c) for _, c in traces.examples("countdown", train_problems["countdown"])]
    assert max(lengths) > 2.5 * min(lengths)


def test_the_audit_scores_the_solvers_own_traces_as_faithful(train_problems):
    problems = train_problems["countdown"] * 4
    clean = traces.audit_countdown([c for _, c in traces.examples("countdown", problems, noise=Noise(slip=0.0))],
                                   problems)
    assert (clean["copy"], clean["arithmetic"], clean["verdict"]) == (1.0, 1.0, 1.0)
    assert clean["attempts"] > 1.5 and 0 < clean["hit"] <= clean["said_yes"] == clean["hit"]
    slipping = traces.audit_countdown([c for _, c in traces.examples("countdown", problems, noise=Noise(slip=0.3))],
                                      problems)
    assert slipping["copy"] == 1.0 and slipping["verdict"] == 1.0  # a slip is believed and carried on
    assert 0.6 < slipping["arithmetic"] < 0.8


def test_the_audit_reads_a_model_that_copies_and_judges_badly():
    problem = {"numbers": [13, 2, 1], "target": 28}
    sloppy = ["\n7*4=38, 9+6=15, yes\n</think><answer>1</answer>",  # numbers not in the prompt, a wrong product
              "\n13+2=15, 15*1=15, yes\n</think><answer>1</answer>",  # right steps, wrong verdict
              "no steps at all"]
    audit = traces.audit_countdown(sloppy, [problem] * 3)
    assert audit["completions"] == 3 and audit["attempts"] == pytest.approx(2 / 3, abs=1e-4)
    assert audit["copy"] == 0.5 and audit["arithmetic"] == 0.75 and audit["verdict"] == 0.0
    assert audit["said_yes"] == 1.0 and audit["hit"] == 0.0
    assert traces.audit_countdown(["nothing"], [problem])["copy"] is None


def test_countdown_attempts_write_their_order_chain_their_steps_and_end_beside_the_target(train_problems):
    import re

    verdicts = []
    problems = train_problems["countdown"] * 3
    for problem, (_, completion) in zip(problems, traces.examples("countdown", problems)):
        for line in completion.split("</think>")[0].strip().split("\n"):
            order, line = line.split(": ")
            order = [int(x) for x in order.split()]
            assert sorted(order) == sorted(problem["numbers"])  # every number once
            if line.endswith(", drop"):
                continue
            *steps, compared, verdict = line.split(", ")
            steps = [re.fullmatch(r"(\d+)[-+*/](\d+)=(\d+)", step).groups() for step in steps]
            # The first step combines the first two numbers of the order, the next one its result and the third.
            assert sorted(map(int, steps[0][:2])) == sorted(order[:2])
            assert sorted(map(int, steps[1][:2])) == sorted([int(steps[0][2]), order[2]])
            last_result = steps[-1][2]  # the value the solver believes (a slip included)
            assert compared == f"{last_result} vs {problem['target']}"
            assert verdict == ("yes" if last_result == str(problem["target"]) else "no")
            verdicts.append(verdict)
    assert "yes" in verdicts and "no" in verdicts


def test_an_aimed_last_step_is_the_combination_closest_to_the_target(train_problems):
    import re
    from fractions import Fraction

    from companion.tasks import countdown

    problems = train_problems["countdown"]
    checked = 0
    for problem, (_, completion) in zip(problems, traces.examples("countdown", problems,
                                                                  noise=Noise(guided=0.0, aim=1.0, slip=0.0))):
        for line in completion.split("</think>")[0].strip().split("\n"):
            if line.endswith(", drop"):
                continue
            a, op, b, value = re.fullmatch(r"(\d+)([-+*/])(\d+)=(\d+)", line.split(", ")[-3]).groups()
            results = [countdown.apply_op(Fraction(x), o, Fraction(y)) for x, y in ((a, b), (b, a)) for o in "+-*/"]
            usable = [r for r in results if r is not None and r.denominator == 1 and 0 <= r <= traces.LIMIT]
            assert abs(int(value) - problem["target"]) == min(abs(r - problem["target"]) for r in usable)
            checked += 1
    assert checked > len(problems)
    # Aiming is what lets a solver without intuition hit: far more often than picking the last step blindly.
    blind = _accuracy("countdown", problems, Noise(guided=0.0, aim=0.0))
    aimed = _accuracy("countdown", problems, Noise(guided=0.0, aim=1.0))
    assert aimed > blind + 0.1, (blind, aimed)


def test_arithmetic_drills_are_right_and_within_the_limit():
    import re

    rng = random.Random(0)
    for _ in range(500):
        a, op, b, result = re.fullmatch(r"(\d+)([-+*/])(\d+)=(\d+)", traces.arithmetic_fact(rng)).groups()
        a, b, result = int(a), int(b), int(result)
        expected = {"+": a + b, "-": a - b, "*": a * b, "/": a // b if b and a % b == 0 else None}[op]
        assert expected == result and 0 <= result <= traces.LIMIT


def test_corpus_holds_groups_of_traces_on_training_problems_only():
    from companion.tasks import countdown, tinygsm

    config = PretrainConfig(num_examples=400, traces_per_problem=4, drill_fraction=0.25)
    corpus = pretrain.build_corpus(config)
    assert sum(len(g.completions) for g in corpus) == 400 and all(len(g.completions) == 4 for g in corpus)
    assert sum(g.task == "arithmetic" for g in corpus) == 25
    split = {"countdown": countdown.split_of, "tinygsm": tinygsm.split_of}
    for group in corpus:
        if group.task != "arithmetic":
            assert split[group.task](group.problem) == "train"
            assert group.prompt == pretrain.task_prompt(group.task, group.problem)
    countdown_groups = [g for g in corpus if g.task == "countdown"]
    assert sum(len(set(g.completions)) > 1 for g in countdown_groups) > 0.8 * len(countdown_groups)  # noisy
    assert pretrain.build_corpus(config) == corpus


def test_bad_noise_and_unknown_tasks_say_what_to_change():
    with pytest.raises(ValueError, match="probability"):
        Noise(slip=1.5)
    with pytest.raises(ValueError, match="at least 1"):
        Noise(max_attempts=0)
    with pytest.raises(ValueError, match="countdown, tinygsm"):
        traces.noisy_trace("gsm8k", {}, random.Random(0))
    with pytest.raises(ValueError, match="no solution"):
        traces.clean_trace("countdown", {"numbers": [1, 1, 1], "target": 100})


# --- the pretraining pipeline ----------------------------------------------------------------------------

import dataclasses  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402

from companion import pretrain, tiny  # noqa: E402
from companion.evaluate import pass_at  # noqa: E402
from companion.pretrain import PretrainConfig  # noqa: E402
from companion.runs import RunError  # noqa: E402

SHORT = dict(num_examples=48, batch_size=16, warmup_steps=1, hidden_size=32, num_hidden_layers=1,
             num_attention_heads=2, num_key_value_heads=1, intermediate_size=64, eval_problems=2, eval_num_generations=4,
             max_completion_length=24, instruction_set="native")  # this process loaded torch long ago


@pytest.fixture(scope="module")
def short_runs(tmp_path_factory):
    """Three seconds-long pretraining runs: two with seed 0, one with seed 1."""
    root = tmp_path_factory.mktemp("pretrain")
    runs = {}
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        config = PretrainConfig(out=str(root / name), seed=seed, **SHORT)
        runs[name] = (config, pretrain.pretrain(config, progress=False))
    return runs


def _without_timings(metrics):
    metrics = json.loads(json.dumps(metrics))
    metrics["pretrain"].pop("seconds")
    metrics["pretrain"].pop("cpu_seconds")
    metrics["targets"].pop("pretrain_minutes")
    for ev in metrics["eval"].values():
        for key in ("seconds", "sampling_seconds", "samples_per_s", "tokens_per_s"):
            ev.pop(key)
    return metrics


@pytest.mark.slow
def test_short_pretraining_writes_a_loadable_checkpoint_and_its_metrics(short_runs):
    config, metrics = short_runs["a"]
    out = Path(config.out)
    assert json.loads((out / pretrain.METRICS_FILE).read_text()) == json.loads(json.dumps(metrics))
    assert json.loads((out / pretrain.CONFIG_FILE).read_text())["seed"] == 0
    assert metrics["pretrain"]["steps"] == 3 and metrics["model"]["parameters"] == sum(
        p.numel() for p in AutoModelForCausalLM.from_pretrained(out).parameters())
    for task in ("countdown", "tinygsm"):
        ev = metrics["eval"][task]
        assert ev["num_problems"] == 2 and [p["k"] for p in ev["pass_at_k"]] == [1, 2, 4]
        assert 0.0 <= pass_at(ev, 1) <= pass_at(ev, 4) <= 1.0
        assert ev["length_wrong"]["count"] + ev["length_correct"]["count"] == ev["samples"] == 8
        assert 0.0 <= metrics["corpus"][task]["solver_accuracy"] <= 1.0
    # The same files load through transformers' Auto classes and through load_tiny, to the same model.
    model = AutoModelForCausalLM.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    loaded, loaded_tok = tiny.load_tiny(out)
    ids = tokenizer(["Using the numbers [3, 5, 2], make 16"], return_tensors="pt")["input_ids"]
    assert torch.equal(model(ids).logits, loaded(ids).logits)
    assert loaded_tok.padding_side == "left" and loaded_tok.eos_token_id == model.config.eos_token_id


@pytest.mark.slow
def test_one_seed_gives_identical_runs_and_another_seed_does_not(short_runs):
    weights = {name: (Path(config.out) / "model.safetensors").read_bytes() for name, (config, _) in short_runs.items()}
    assert weights["a"] == weights["b"] and weights["a"] != weights["c"]
    assert _without_timings(short_runs["a"][1]) == _without_timings(short_runs["b"][1])


@pytest.mark.slow
def test_an_existing_different_run_is_not_overwritten_without_overwrite(short_runs, tmp_path):
    config, _ = short_runs["a"]
    other = dataclasses.replace(config, seed=7)
    with pytest.raises(RunError, match="different config.*seed: 0 there, 7 now.*--overwrite"):
        pretrain.pretrain(other, progress=False)
    # With --overwrite the run replaces only the files a pretraining run writes; anything else stays.
    (tmp_path / "notes.txt").write_text("mine")
    (tmp_path / pretrain.CONFIG_FILE).write_text("{}")
    pretrain.pretrain(dataclasses.replace(other, out=str(tmp_path), overwrite=True), progress=False)
    assert (tmp_path / "notes.txt").read_text() == "mine"
    assert json.loads((tmp_path / pretrain.CONFIG_FILE).read_text())["seed"] == 7


def test_configs_that_cannot_work_are_refused_with_what_to_change(tmp_path):
    with pytest.raises(ValueError, match="--max-completion-length .* raise --context"):
        PretrainConfig(context=128)
    with pytest.raises(ValueError, match="countdown, tinygsm"):
        PretrainConfig(tasks=("countdown", "math"), task_weights=(1.0, 1.0))
    with pytest.raises(ValueError, match="one positive weight per task"):
        PretrainConfig(tasks=("countdown",))
    with pytest.raises(ValueError, match="multiple of num_attention_heads"):
        PretrainConfig(hidden_size=100, num_attention_heads=8)
    # An eval that cannot fit is refused before the training it would waste, and nothing is written.
    with pytest.raises(ValueError, match="exceeds the model.s context of 200 tokens: lower --max-completion-length"):
        pretrain.pretrain(PretrainConfig(**{**SHORT, "out": str(tmp_path / "run"), "context": 200,
                                        "max_completion_length": 120}), progress=False)
    assert not (tmp_path / "run").exists()
    config = PretrainConfig(context=100, max_completion_length=40, num_examples=32, batch_size=16)
    with pytest.raises(ValueError, match="does not fit the context of 100: raise --context"):
        pretrain.encode_corpus(tiny.build_tokenizer(100), pretrain.build_corpus(config), config.context)


CLI_SHORT = [f"--{name.replace('_', '-')}={value}" for name, value in SHORT.items() if name != "instruction_set"]


def _has_avx2() -> bool:
    cpuinfo = Path("/proc/cpuinfo")
    return platform.machine() == "x86_64" and cpuinfo.exists() and " avx2" in cpuinfo.read_text()


@pytest.mark.skipif(not _has_avx2(), reason="the avx2 float path needs an x86-64 CPU with AVX2")
def test_the_command_pins_the_kernels_before_torch_loads(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in pretrain.FLOAT_PATHS["avx2"]}
    result = subprocess.run([sys.executable, "-m", "companion.cli", "pretrain", "--out", str(tmp_path / "run"),
                             *CLI_SHORT], capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    metrics = json.loads((tmp_path / "run" / pretrain.METRICS_FILE).read_text())
    assert metrics["environment"]["float_path"] == {"instruction_set": "avx2", "cpu_capability": "AVX2",
                                                    **pretrain.FLOAT_PATHS["avx2"]}
    assert json.loads((tmp_path / "run" / pretrain.CONFIG_FILE).read_text())["instruction_set"] == "avx2"


def test_kernels_that_cannot_be_pinned_are_refused_before_anything_is_written(tmp_path, monkeypatch):
    import torch

    config = PretrainConfig(**{**SHORT, "out": str(tmp_path / "run"), "instruction_set": "avx2"})
    for name in pretrain.FLOAT_PATHS["avx2"]:
        monkeypatch.delenv(name, raising=False)  # as in a notebook that imported torch first
    with pytest.raises(RunError, match="needs ATEN_CPU_CAPABILITY=avx2 .* before torch is imported.*"
                                       "--instruction-set native"):
        pretrain.pretrain(config, progress=False)
    for name, value in pretrain.FLOAT_PATHS["avx2"].items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "DEFAULT")  # a CPU without AVX2
    with pytest.raises(RunError, match="runs torch's DEFAULT kernels, not AVX2 ones.*--instruction-set native"):
        pretrain.pretrain(config, progress=False)
    assert not (tmp_path / "run").exists()


def test_cli_reports_bad_input_and_exits_nonzero(tmp_path):
    result = subprocess.run([sys.executable, "-m", "companion.cli", "pretrain", "--out", str(tmp_path / "x"),
                             "--tasks", "gsm8k"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "gsm8k has no solver traces" in result.stderr
    assert not (tmp_path / "x").exists()


def test_missing_and_corrupt_checkpoints_say_how_to_rebuild(tiny_policy_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match="companion pretrain --out"):
        tiny.load_tiny(tmp_path / "nowhere")
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        (broken / name).write_bytes((Path(tiny_policy_dir) / name).read_bytes())
    with pytest.raises(FileNotFoundError, match="missing model.safetensors"):
        tiny.load_tiny(broken)
    (broken / "model.safetensors").write_bytes(b"\x00not a safetensors file")
    with pytest.raises(ValueError, match="corrupt checkpoint.*--overwrite"):
        tiny.load_tiny(broken)


def test_a_tokenizer_that_reloads_differently_is_refused(tiny_policy_dir, tmp_path):
    import json
    import shutil

    # The character tokenizer of older versions: raw " " and "\n" in the vocabulary, no ByteLevel step.
    old = tmp_path / "old"
    shutil.copytree(tiny_policy_dir, old)
    spec = json.loads((old / "tokenizer.json").read_text())
    spec["model"]["vocab"] = {{"\u0120": " ", "\u010a": "\n"}.get(k, k): v for k, v in spec["model"]["vocab"].items()}
    spec["pre_tokenizer"] = spec["decoder"] = spec["normalizer"] = None
    (old / "tokenizer.json").write_text(json.dumps(spec))
    with pytest.raises(ValueError, match="spaces or newlines are lost.*--overwrite"):
        tiny.load_tiny(old)


def test_load_tiny_follows_the_environment_variable(tiny_policy_dir, monkeypatch):
    monkeypatch.setenv(tiny.TINY_ENV, str(tiny_policy_dir))
    assert tiny.tiny_dir() == Path(tiny_policy_dir)
    model, _ = tiny.load_tiny()
    assert model.config.hidden_size == 64 and not model.training


# --- the shipped checkpoint ---------------------------------------------------------------------------------

SHIPPED = tiny.SHIPPED_DIR


def test_the_command_with_no_options_resolves_to_the_default_config(capsys):
    assert pretrain.main(["--dry-run"]) == 0
    assert json.loads(capsys.readouterr().out) == json.loads(json.dumps(dataclasses.asdict(PretrainConfig())))
    assert pretrain.main(["--dry-run", "--guided", "0.9", "--batch-size", "4"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["noise"]["guided"] == 0.9 and printed["batch_size"] == 4


def test_the_shipped_checkpoint_is_what_the_default_command_builds():
    # `companion pretrain` with no options rebuilds data/tiny-base: its saved config is the default one.
    saved = json.loads((SHIPPED / pretrain.CONFIG_FILE).read_text())
    assert pretrain._comparable(saved) == pretrain._comparable(dataclasses.asdict(PretrainConfig())), \
        "data/tiny-base was built with other options than PretrainConfig's defaults: rebuild it or move the defaults"
    model, tokenizer = tiny.load_tiny(SHIPPED)
    assert sum(p.numel() for p in model.parameters()) == json.loads((SHIPPED / pretrain.METRICS_FILE).read_text())[
        "model"]["parameters"]
    assert sum(f.stat().st_size for f in SHIPPED.iterdir()) < 10 * 2**20


def test_the_shipped_metrics_agree_with_the_targets_they_report():
    metrics = json.loads((SHIPPED / pretrain.METRICS_FILE).read_text())
    assert pretrain.check_targets(metrics) == metrics["targets"]  # the record agrees with the numbers
    assert metrics["targets"]["pretrain_minutes"]["met"], metrics["targets"]
    config = PretrainConfig()  # the float path it was built on is the one the default config asks for
    assert metrics["environment"]["num_threads"] == config.num_threads
    assert metrics["environment"]["float_path"]["instruction_set"] == config.instruction_set
    assert metrics["environment"]["float_path"]["cpu_capability"] == config.instruction_set.upper()
    for task in pretrain.TASKS:
        ev = metrics["eval"][task]
        assert ev["num_problems"] == 200 and ev["num_generations"] == 64 and ev["temperature"] == 1.0


@pytest.mark.parametrize("task", pretrain.TASKS)
def test_the_shipped_checkpoint_meets_the_targets(task):
    metrics = json.loads((SHIPPED / pretrain.METRICS_FILE).read_text())
    ev = metrics["eval"][task]
    assert metrics["targets"][task]["pass@1_met"] and metrics["targets"][task]["pass@64_met"], \
        (task, pass_at(ev, 1), pass_at(ev, 64))
    # completion lengths spread widely, for correct and for wrong answers (the slowest 5% at least 1.5x the fastest)
    for side in ("length_correct", "length_wrong"):
        assert ev[side]["p95"] >= 1.5 * ev[side]["p5"], (task, side, ev[side])
    room = ev["room_for_rl"]  # what sharpening can reach, measured on the same samples and on greedy decoding
    assert room["sampled_pass@1"] == pass_at(ev, 1) and 0.0 <= room["greedy_pass@1"] <= 1.0
    assert room["group_size"] == 8 and 0.0 <= room["zero_spread_groups"] <= 1.0
