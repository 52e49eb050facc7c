"""``companion reproduce``: committed runs are found, rerun from their saved configs, resumed, compared and saved."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from companion import experiments
from companion.config import save_config
from companion.evaluate import EvalConfig
from companion.runs import RunError, read_jsonl
from companion.records import TIMING_METRICS
from companion.trainer import TrainConfig

# A run of seconds: two steps of 2 problems x 2 completions, then 2 held-out problems x 2 samples.
TRAIN = dict(task="tinygsm", steps=2, prompts_per_step=2, num_generations=2, max_completion_length=32,
             train_problems=8, eval_every=0, save_every=1, num_threads=1)
EVAL = dict(task="tinygsm", problems=2, num_generations=2, temperature=1.0, top_p=1.0, max_completion_length=32,
            num_threads=1)


def _commit(data, experiment="tiny", name="run", **train):
    """Committed configs (no results yet) of one small run under ``data``."""
    directory = data / experiment / name
    (directory / "eval").mkdir(parents=True)
    save_config(TrainConfig(**{**TRAIN, **train, "out": f"runs/reproduce/{experiment}/{name}"}), directory / "config.json")
    save_config(EvalConfig(**EVAL, model=f"runs/reproduce/{experiment}/{name}/policy",
                           out=f"runs/reproduce/{experiment}/{name}/eval"), directory / "eval" / "config.json")
    return directory


def _reproduce(data, out, *extra, capsys=None) -> tuple[int, str]:
    code = experiments.main(["--data", str(data), "--out", str(out), *extra])
    return code, capsys.readouterr().out if capsys else ""


def test_the_comparison_is_four_algorithms_by_two_tasks_by_five_seeds_with_one_recipe():
    runs = experiments.comparison_configs()
    trained = {name: configs for name, configs in runs.items() if configs[0] is not None}
    assert len(trained) == 40 and sorted(set(runs) - set(trained)) == ["countdown-base", "tinygsm-base"]
    recipes = {json.dumps({k: v for k, v in train.items() if k not in ("algo", "task", "seed")}, sort_keys=True)
               for train, _ in trained.values()}
    assert len(recipes) == 1
    assert {(t["algo"], t["task"], t["seed"]) for t, _ in trained.values()} == {
        (a, t, s) for a in experiments.ALGOS for t in experiments.TASKS for s in experiments.COMPARE_SEEDS}
    for train, evaluation in trained.values():
        TrainConfig(**train)  # every generated config is valid
        EvalConfig(**evaluation)
        assert evaluation["task"] == train["task"]
    for task in experiments.TASKS:  # the base, scored exactly as the trained policies are
        base = runs[f"{task}-base"][1]
        assert base == {**trained[f"{task}-grpo-seed0"][1], "model": "tiny"}


def test_distillation_and_chapter_7_are_generated_from_the_comparison():
    compare = experiments.comparison_configs()
    distill = experiments.distill_configs()
    assert len(distill) == 6
    for name, (train, evaluation) in distill.items():
        TrainConfig(**train)
        twin = compare[name.replace("distill", "fisft_plus")]  # the same recipe, problems and evaluation
        assert train == {**twin[0], "source": "teacher"} and evaluation == twin[1]
    boundary = experiments.boundary_configs()
    assert len(boundary) == 2 * len(experiments.BOUNDARY_MODELS) * len(experiments.BOUNDARY_SAMPLING)
    for name, (train, evaluation) in boundary.items():
        config = EvalConfig(**evaluation)
        assert train is None and config.num_generations == 256
        assert (config.problems, config.problem_seed) == (200, 2025)  # the comparison's held-out problems
        assert config.temperature == (0.6 if name.endswith("T0.6") else 1.0)
    assert boundary["countdown-grpo-T0.6"][1]["model"] == "runs/reproduce/compare/countdown-grpo-seed0/policy"
    assert boundary["tinygsm-distill-T1.0"][1]["model"] == "runs/reproduce/distill/tinygsm-distill-seed0/policy"
    assert boundary["tinygsm-base-T1.0"][1]["model"] == "tiny"


def test_training_length_is_the_comparisons_grpo_run_again_keeping_its_policies():
    [train] = [t for t, _ in experiments.length_configs().values() if t is not None]
    twin, _ = experiments.comparison_configs()["countdown-grpo-seed0"]
    assert train == {**twin, "policy_every": 25}  # the same run step for step: its step 100 is the compared policy
    evaluations = {name: e for name, (t, e) in experiments.length_configs().items() if t is None}
    boundary = experiments.boundary_configs()["countdown-grpo-T0.6"][1]
    assert experiments.LENGTH_STEPS[-1] == train["steps"]
    for step in experiments.LENGTH_STEPS:
        evaluation = evaluations[f"countdown-grpo-step{step}-T0.6"]
        policy = "policy" if step == train["steps"] else f"policy-step{step}"
        assert evaluation == {**boundary, "model": f"runs/reproduce/length/countdown-grpo-seed0/{policy}"}
        assert experiments.model_key(evaluation["model"]) == "grpo"
        assert experiments.policy_step(evaluation["model"]) == (None if step == train["steps"] else step)


def test_the_precision_runs_are_the_comparisons_grpo_runs_with_lora_4bit_and_fp16_compute():
    runs = experiments.precision_configs()
    assert len(runs) == len(experiments.PRECISION_VARIANTS) * len(experiments.SEEDS)
    compare = experiments.comparison_configs()
    for name, (train, evaluation) in runs.items():
        config = TrainConfig(**train)
        assert config.lora and config.learning_rate == experiments.LORA_RATE
        twin = compare[f"tinygsm-grpo-seed{config.seed}"]  # the same problems, recipe and final evaluation
        assert {**train, "learning_rate": twin[0]["learning_rate"]} == {**twin[0], **experiments.PRECISION_VARIANTS[
            name.removeprefix("tinygsm-grpo-").rsplit("-seed", 1)[0]]} and evaluation == twin[1]
        assert config.load_in_4bit == ("4bit" in name) and config.dtype == ("float16" if "fp16" in name else "auto")


def test_an_evaluation_of_a_kept_policy_waits_for_the_run_that_keeps_it(tmp_path, capsys):
    data, out = tmp_path / "data", tmp_path / "out"
    _commit(data, policy_every=1)
    directory = data / "tiny" / "step1"
    (directory / "eval").mkdir(parents=True)
    save_config(EvalConfig(**EVAL, model="runs/reproduce/tiny/run/policy-step1", out="runs/reproduce/tiny/step1/eval"),
                directory / "eval" / "config.json")
    # Alone, it is refused before anything starts: nothing has kept that policy.
    code = experiments.main(["--data", str(data), "--out", str(out), "--only", "tiny/step1"])
    assert code == 2 and "reproduce it too (--only tiny/run tiny/step1)" in capsys.readouterr().err
    assert not out.exists()
    # With its run, on two workers, it starts when the run has ended (it is listed first on purpose).
    code, text = _reproduce(data, out, "--only", "tiny/step1", "tiny/run", "--save", capsys=capsys)
    assert code == 0, text
    assert (out / "tiny" / "run" / "policy-step1").is_dir()
    runs = {r["name"]: r for r in experiments.load_results("tiny", data)}
    assert runs["step1"]["steps"] == 1 and runs["run"]["steps"] == 2
    assert not (data / "tiny" / "run" / "policy-step1").exists()  # kept policies are not committed


def test_an_evaluation_names_the_reproduced_policy_and_falls_back_to_the_committed_one(tmp_path):
    runs, data = tmp_path / "runs", tmp_path / "data"
    name = "runs/reproduce/compare/countdown-grpo-seed0/policy"
    reproduced = str(runs / "compare" / "countdown-grpo-seed0" / "policy")
    assert experiments.policy_for(name, runs, data) == reproduced  # neither exists: eval will say it is missing
    (data / "compare" / "countdown-grpo-seed0" / "policy").mkdir(parents=True)
    assert experiments.policy_for(name, runs, data) == str(data / "compare" / "countdown-grpo-seed0" / "policy")
    (runs / "compare" / "countdown-grpo-seed0" / "policy").mkdir(parents=True)
    assert experiments.policy_for(name, runs, data) == reproduced
    assert experiments.policy_for("tiny", runs, data) == "tiny"


def test_the_claims_experiments_change_one_thing_each_against_the_comparison():
    compare = experiments.comparison_configs()

    def changed(train: dict) -> dict:
        twin = compare[f"{train['task']}-grpo-seed{train['seed']}"][0]
        return {k: v for k, v in train.items() if twin.get(k) != v}

    negatives = experiments.negatives_configs()
    trained = [t for t, _ in negatives.values() if t is not None]
    assert len(trained) == 3 * 2 * 5 and {t["seed"] for t in trained} == set(experiments.COMPARE_SEEDS)
    assert all(set(changed(t)) == {"algo"} for t in trained)
    assert {e["model"] for t, e in negatives.values() if t is None} == {
        f"runs/reproduce/negatives/{task}-{algo}-seed0/policy" for task in experiments.TASKS
        for algo in experiments.NEGATIVE_ALGOS}
    normalizers = experiments.normalizers_configs()
    for name, (train, evaluation) in normalizers.items():
        TrainConfig(**train) if train else None
        EvalConfig(**evaluation)
        assert evaluation["max_completion_length"] == experiments.LENGTH_CAP  # lengths judged with the same room
        if train:
            assert set(changed(train)) <= {"algo", "normalizer", "reward", "max_completion_length"}
            assert train["reward"] == "binary" and train["max_completion_length"] == experiments.LENGTH_CAP
    assert len(normalizers) == 1 + 2 * 3 * 5
    for train, _ in experiments.dr_grpo_configs().values():
        TrainConfig(**train)
        variant = next(v for v in experiments.DR_GRPO_VARIANTS.values() if all(train.get(k) == x for k, x in v.items()))
        assert set(changed(train)) <= set(variant)


def test_the_real_model_runs_share_one_recipe_on_the_chat_prompt_and_the_seed0_policies_get_n64():
    assert experiments.real_configs() == experiments.real_configs(experiments.REAL_RATE)  # the sweep's choice
    runs = experiments.real_configs(3e-4)
    sweep = {experiments.real_run_name("grpo", 0, r) for r in experiments.REAL_RATES}
    assert sweep | {"tinygsm-base"} <= set(runs)  # the sweep's runs are the experiment's runs
    trained = {name: t for name, (t, _) in runs.items() if t is not None}
    at_rate = {name: t for name, t in trained.items() if t["learning_rate"] == 3e-4}
    assert {(t["algo"], t["seed"]) for t in at_rate.values()} == {
        (a, s) for a in experiments.ALGOS for s in experiments.SEEDS}
    recipes = {json.dumps({k: v for k, v in t.items() if k not in ("algo", "seed", "learning_rate")}, sort_keys=True)
               for t in trained.values()}
    assert len(recipes) == 1  # the sweep's runs too: they are the experiment's runs
    recipe = next(iter(trained.values()))
    assert (recipe["model"], recipe["prompt_style"], recipe["lora"]) == ("smollm2-135m", "chat", True)
    for name, (train, evaluation) in runs.items():
        EvalConfig(**evaluation)
        TrainConfig(**train) if train else None
        assert evaluation["prompt_style"] == "chat"
        assert evaluation["max_completion_length"] == recipe["max_completion_length"]  # lengths judged with one cap
    base = runs["tinygsm-base"][1]
    assert base["model"] == "smollm2-135m" and base["num_generations"] == experiments.REAL_N
    for algo in experiments.ALGOS:
        evaluation = runs[f"tinygsm-{algo}-n64"][1]
        assert evaluation == dict(base, model=f"runs/reproduce/real/{experiments.real_run_name(algo, 0, 3e-4)}/policy")
        assert experiments.producer(evaluation["model"]) == f"real/{experiments.real_run_name(algo, 0, 3e-4)}"


def test_init_writes_loadable_configs_and_keeps_what_is_there(tmp_path):
    written = experiments.init("compare", tmp_path)
    assert len(written) == 42  # 4 algorithms x 2 tasks x 5 seeds, and the base on each task
    runs, broken = experiments.committed_runs(tmp_path)
    assert broken == [] and len(runs) == 42
    assert {r.name for r in runs if r.train is None} == {"countdown-base", "tinygsm-base"}
    assert {r.name for r in runs if r.keep_policy} == {r.name for r in runs if r.train and r.train["seed"] == 0}
    assert experiments.init("compare", tmp_path) == []  # nothing rewritten
    with pytest.raises(RunError, match="compare"):
        experiments.init("nope", tmp_path)


def test_an_unknown_name_lists_the_known_ones(tmp_path, capsys):
    _commit(tmp_path / "data")
    code = experiments.main(["--data", str(tmp_path / "data"), "--only", "nope", "--list"])
    err = capsys.readouterr().err
    assert code == 2
    assert "unknown experiment or run nope" in err and "experiments: tiny" in err and "tiny/run" in err


def test_a_config_that_no_longer_loads_is_reported_by_name(tmp_path, capsys):
    data = tmp_path / "data"
    _commit(data)
    broken = _commit(data, name="old")
    config = json.loads((broken / "config.json").read_text())
    (broken / "config.json").write_text(json.dumps({**config, "retired_knob": 1}))
    runs, lines = experiments.committed_runs(data)
    assert [r.key for r in runs] == ["tiny/run"]
    assert len(lines) == 1 and lines[0].startswith("tiny/old: its config does not load") and "retired_knob" in lines[0]
    code = experiments.main(["--data", str(data), "--list"])
    captured = capsys.readouterr()
    assert code == 0 and "tiny/old" in captured.err and "Traceback" not in captured.err


def test_reproduce_runs_resumes_compares_and_saves(tmp_path, capsys):
    data, first, second = tmp_path / "data", tmp_path / "first", tmp_path / "second"
    _commit(data)
    code, out = _reproduce(data, first, "--save", capsys=capsys)
    assert code == 0, out
    assert "tiny/run: nothing committed to compare with" in out
    assert "tiny-base" not in out and "recipe" not in out  # the shipped data's, not this --data's
    committed = data / "tiny" / "run"
    assert (committed / "eval" / "summary.json").exists() and len(read_jsonl(committed / "metrics.jsonl")) == 2
    saved = json.loads((committed / "config.json").read_text())
    assert saved["out"] == "runs/reproduce/tiny/run"  # no machine's absolute path in data/
    assert not (committed / "checkpoint.pt").exists() and not (committed / "policy").exists()

    # An attempt interrupted after step 1 (checkpoint, no policy) is resumed, not restarted, and the result is
    # the committed run step for step.
    config = TrainConfig(**{**TRAIN, "out": str(second / "tiny" / "run")})
    subprocess.run([sys.executable, "-m", "companion.cli", "train", "--quiet", "--until-step", "1",
                    *experiments.reproduce._flags(dataclasses.asdict(config))],
                   check=True, capture_output=True)
    assert len(read_jsonl(second / "tiny" / "run" / "metrics.jsonl")) == 1
    code, out = _reproduce(data, second, capsys=capsys)
    assert code == 0, out
    assert "tiny/run: pass@1" in out and "within the committed interval" in out
    assert "training identical step for step" in out
    difference = experiments.compare(experiments.committed_runs(data)[0][0], second)
    assert difference["training_identical"] and difference["within_interval"]

    # A finished reproduction is not run again; --list shows the committed cost and the status.
    code, out = _reproduce(data, second, capsys=capsys)
    assert code == 0 and "tiny/run: pass@1" in out
    # --save after the run finished in an earlier invocation without it: copied now, not only compared
    (committed / "eval" / "summary.json").unlink()
    code, out = _reproduce(data, second, "--save", capsys=capsys)
    assert code == 0 and "saved to" in out and (committed / "eval" / "summary.json").exists()
    code, out = _reproduce(data, second, "--list", capsys=capsys)
    assert "reproduced" in out and " min" in out


def test_compare_finds_the_first_step_that_differs(tmp_path):
    data, out = tmp_path / "data", tmp_path / "out"
    for root in (data / "e" / "r", out / "e" / "r"):
        (root / "eval").mkdir(parents=True)
    records = [{"step": 1, "reward": 0.5, "step_time": 1.0}, {"step": 2, "reward": 0.25, "step_time": 1.0}]
    again = [dict(records[0], step_time=9.0), dict(records[1], reward=0.5)]  # timings differ freely
    for root, rows, estimate in ((data / "e" / "r", records, 0.5), (out / "e" / "r", again, 0.9)):
        (root / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        (root / "eval" / "summary.json").write_text(json.dumps(
            {"pass_at_k": [{"k": 1, "estimate": estimate, "low": 0.4, "high": 0.6}]}))
    run = experiments.Run("e", "r", {}, {}, keep_policy=False, data=data)
    difference = experiments.compare(run, out)
    assert difference["training_differs_at_step"] == 2 and not difference["within_interval"]
    assert "OUTSIDE" in experiments.describe(difference) and "differs from step 2" in experiments.describe(difference)
    assert "step_time" in TIMING_METRICS


def test_the_first_steps_are_checked_against_the_committed_records_and_a_full_run_goes_on_from_them(tmp_path,
                                                                                                        capsys):
    data, first, second = tmp_path / "data", tmp_path / "first", tmp_path / "second"
    _commit(data, steps=3)
    assert _reproduce(data, first, "--save", capsys=capsys)[0] == 0  # commit the records of a full run
    code, out = _reproduce(data, second, "--steps", "2", capsys=capsys)
    assert code == 0 and "tiny/run: steps 0-2 identical to the committed records" in out
    assert [r["step"] for r in read_jsonl(second / "tiny" / "run" / "metrics.jsonl")] == [1, 2]
    assert not (second / "tiny" / "run" / "eval").exists()  # no evaluation: the first steps only
    code, out = _reproduce(data, second, capsys=capsys)  # the whole run resumes from step 2
    assert code == 0 and "training identical step for step" in out
    # what differs, and whether it is only rounding
    records = read_jsonl(data / "tiny" / "run" / "metrics.jsonl")
    rounded = [dict(r, entropy=r["entropy"] * (1 + 1e-6)) for r in records]
    difference = experiments.reproduce.records_difference(records, rounded)
    assert not difference["identical"] and difference["outcomes_identical"] and difference["largest_in"] == "entropy"
    sampled = [dict(r, reward=r["reward"] + 0.5) for r in records]
    assert not experiments.reproduce.records_difference(records, sampled)["outcomes_identical"]


@pytest.mark.parametrize("extra, message", [
    (["--steps", "0"], "--steps must be at least 1"),
    (["--steps", "2", "--save"], "pass one of them"),
    (["--data", "/nonexistent"], "is not a directory of committed experiments"),
])
def test_reproduce_refuses_options_it_cannot_follow(tmp_path, capsys, extra, message):
    code = experiments.main(["--out", str(tmp_path / "out"), *extra])
    assert code == 2 and message in capsys.readouterr().err


def test_reproduce_into_a_file_is_refused(tmp_path, capsys):
    (tmp_path / "file").write_text("")
    assert experiments.main(["--out", str(tmp_path / "file"), "--list"]) == 2
    assert "is a file" in capsys.readouterr().err


def test_a_kept_policy_is_saved_in_half_precision_and_loads_back(tmp_path, capsys):
    import torch

    from companion.models import load_policy

    data, out = tmp_path / "data", tmp_path / "out"
    _commit(data)
    assert _reproduce(data, out, capsys=capsys)[0] == 0
    run = experiments.committed_runs(data)[0][0]
    run = experiments.Run(run.experiment, run.name, run.train, run.eval, keep_policy=True, data=data)
    source = {"model": "smollm2-135m", "gguf_sha256": "ab" * 32, "weights_sha256": "cd" * 32}
    (out / "tiny" / "run" / "model_source.json").write_text(json.dumps(source))  # as a model known by name writes
    target = experiments.save(run, out)
    assert json.loads((target / "model_source.json").read_text()) == source  # where the weights came from, kept
    stored = json.loads((target / "policy" / "config.json").read_text())
    assert stored.get("dtype", stored.get("torch_dtype")) == "float16"
    half, _ = load_policy(str(target / "policy"), device="cpu")
    full, _ = load_policy(str(out / "tiny" / "run" / "policy"), device="cpu")
    for (name, a), (_, b) in zip(half.named_parameters(), full.named_parameters()):
        assert a.dtype == torch.float32
        torch.testing.assert_close(a, b, atol=1e-2, rtol=1e-3, msg=name)
    assert experiments.committed_runs(data)[0][0].keep_policy  # the saved policy marks the run as keeping it


def test_kept_adapters_are_stored_in_half_precision_with_their_base_by_name(tmp_path, capsys):
    import torch

    from companion.models import ADAPTER_CONFIG, ADAPTER_WEIGHTS, load_policy

    data, out = tmp_path / "data", tmp_path / "out"
    _commit(data, lora=True, learning_rate=3e-2)  # a rate that moves the adapters off their zero start
    assert _reproduce(data, out, capsys=capsys)[0] == 0
    run = experiments.committed_runs(data)[0][0]
    run = experiments.Run(run.experiment, run.name, run.train, run.eval, keep_policy=True, data=data)
    target = experiments.save(run, out) / "policy"
    stored = sorted(p.name for p in target.iterdir())
    assert stored == sorted([ADAPTER_CONFIG, ADAPTER_WEIGHTS, "companion_policy.json"])
    assert json.loads((target / ADAPTER_CONFIG).read_text())["base_model_name_or_path"] == "tiny"  # no cache path
    half, _ = load_policy(str(target), device="cpu")
    full, _ = load_policy(str(out / "tiny" / "run" / "policy"), device="cpu")
    moved = 0
    for (name, a), (_, b) in zip(half.named_parameters(), full.named_parameters()):
        assert a.dtype == torch.float32 and a.requires_grad == b.requires_grad, name
        torch.testing.assert_close(a, b, atol=1e-3, rtol=1e-3, msg=name)
        moved += "lora_B" in name and bool(b.abs().max() > 0)
    assert moved  # the comparison saw trained adapters, not their all-zero start


def test_chapter_10_commits_the_adapters_of_grpo_seed_0_at_the_chosen_rate_only():
    runs = experiments.generated_runs("real")
    assert [r.name for r in runs if r.keep_policy] == [experiments.real_run_name("grpo", 0, experiments.REAL_RATE)]
    assert experiments.keeps_policy("compare", {"seed": 0}) and not experiments.keeps_policy("compare", {"seed": 1})
    assert not experiments.keeps_policy("stability", {"seed": 0}) and not experiments.keeps_policy("real", None)


def test_a_killed_reproduce_stops_its_runs_and_resumes(tmp_path):
    data, out = tmp_path / "data", tmp_path / "out"
    _commit(data, steps=40)
    command = [sys.executable, "-m", "companion.cli", "reproduce", "--data", str(data), "--out", str(out)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = out / "tiny" / "run" / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while len(read_jsonl(metrics)) < 2 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert len(read_jsonl(metrics)) >= 2, "training never started"
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    assert "interrupted" in err and "run the same command" in err
    time.sleep(1)
    steps = len(read_jsonl(metrics))
    time.sleep(2)
    assert len(read_jsonl(metrics)) == steps, "a training run outlived the reproduce that started it"
    assert (out / "tiny" / "run" / "checkpoint.pt").exists() and steps < 40
    finished = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert finished.returncode == 0, finished.stderr
    assert [r["step"] for r in read_jsonl(metrics)] == list(range(1, 41))
    assert os.path.exists(out / "tiny" / "run" / "eval" / "summary.json")


def test_an_evaluation_only_run_scores_the_model_it_names(tmp_path, capsys):
    data, first, second = tmp_path / "data", tmp_path / "first", tmp_path / "second"
    directory = data / "tiny" / "base"
    (directory / "eval").mkdir(parents=True)
    save_config(EvalConfig(**EVAL, model="tiny", out="runs/reproduce/tiny/base/eval"), directory / "eval" / "config.json")
    runs, broken = experiments.committed_runs(data)
    assert broken == [] and runs[0].train is None and runs[0].steps == 0 and not runs[0].keep_policy
    code, out = _reproduce(data, first, "--save", capsys=capsys)
    assert code == 0, out
    assert not (directory / "config.json").exists() and (directory / "eval" / "summary.json").exists()
    assert json.loads((directory / "eval" / "config.json").read_text())["model"] == "tiny"
    code, out = _reproduce(data, second, capsys=capsys)
    assert code == 0 and "tiny/base: pass@1" in out and "no training (evaluation only)" in out
    [base] = experiments.load_results("tiny", data)
    assert base["algo"] == "base" and base["records"] == [] and len(base["rows"]) == EVAL["problems"]


def test_the_base_model_is_reproduced_by_its_command_and_compared_by_hash(tmp_path, monkeypatch):
    from companion.tiny import tiny_dir

    calls = []

    def fake_pretrain(command, log):  # what `companion pretrain --out OUT` leaves, without its 25 minutes
        calls.append(command)
        out = command[command.index("--out") + 1]
        shutil.copytree(tiny_dir(), out, dirs_exist_ok=True)

    monkeypatch.setattr(experiments.reproduce, "_call", fake_pretrain)
    lines = experiments.reproduce_other("tiny-base", tmp_path)
    assert calls and calls[0][-4:] == ["pretrain", "--out", str(tmp_path / "tiny-base"), "--overwrite"]
    assert lines[0] == "tiny-base: weights identical (same sha256)"
    assert any(line.startswith("tiny-base countdown: pass@1") for line in lines)
    (tmp_path / "tiny-base" / "model.safetensors").write_bytes(b"other weights")
    assert experiments.reproduce_other("tiny-base", tmp_path)[0] == "tiny-base: weights differ (another sha256)"
    assert len(calls) == 1  # a finished rebuild is compared again, not rerun


def test_the_recipe_sweep_is_listed_and_named(capsys, monkeypatch, tmp_path):
    code = experiments.main(["--list", "--only", "recipe", "tiny-base", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 0 and "recipe" in out and "tiny-base" in out and "not started" in out
    monkeypatch.setattr(experiments.reproduce, "SWEEP_SCRIPT", tmp_path / "missing.py")
    assert "only in a source checkout" in experiments.reproduce_other("recipe", tmp_path)[0]


def test_committed_jsonl_is_compressed_the_same_way_every_time_and_read_back(tmp_path):
    from companion.runs import write_jsonl_gz

    rows = [{"index": i, "rewards": [0.0, 1.0] * 50} for i in range(20)]
    plain = tmp_path / "problems.jsonl"
    plain.write_text("".join(json.dumps(r) + "\n" for r in rows))
    first = write_jsonl_gz(plain, tmp_path / "a.jsonl.gz").read_bytes()
    assert write_jsonl_gz(plain, tmp_path / "problems.jsonl.gz").read_bytes() == first  # no timestamp inside
    assert len(first) < plain.stat().st_size / 5
    plain.unlink()
    assert read_jsonl(plain) == rows  # the compressed twin, under the plain name
    assert read_jsonl(tmp_path / "missing.jsonl") == []
    committed = list(experiments.DATA.glob("*/*/eval/problems.jsonl*"))
    assert committed and all(p.name == "problems.jsonl.gz" for p in committed)


def test_the_committed_data_stays_small():
    """The repository stays light: data/ (base model, experiments, sweeps, benches) within 50 MB (this wave's limit,
    with room for the real model's adapters), no file over 10 MB."""
    from companion.shipped import data_dir

    files = [p for p in data_dir().rglob("*") if p.is_file()]
    sizes = {p: p.stat().st_size for p in files}
    assert sum(sizes.values()) <= 50 * 2**20, f"data/ holds {sum(sizes.values()) / 2**20:.1f} MB"
    big = [str(p) for p, size in sizes.items() if size > 10 * 2**20]
    assert not big, big
    policies = [p for p in data_dir().glob("experiments/*/*/policy/config.json")]
    assert all(json.loads(p.read_text()).get("dtype", json.loads(p.read_text()).get("torch_dtype")) == "float16"
               for p in policies), "committed policies are stored in half precision"


def test_the_hard_tier_scores_the_base_the_distilled_and_the_long_runs_on_the_same_problems():
    runs = experiments.hard_configs()
    evaluations = {name: EvalConfig(**evaluation) for name, (train, evaluation) in runs.items() if train is None}
    for name in ("countdown-base-T0.6", "countdown-base-T1.0"):  # chapter 7's evaluation of the base, other tier
        assert runs[name][1] == dict(experiments.boundary_configs()[name][1], tier="hard")
    scored = {(e.problems, e.problem_seed, e.tier, e.num_generations, e.max_completion_length)
              for e in evaluations.values()}
    assert scored == {(200, 2025, "hard", 256, 256)}  # every curve over the same 200 hard problems, n = 256
    trained = {name: TrainConfig(**train) for name, (train, _) in runs.items() if train is not None}
    assert trained["countdown-distill-seed0"].source == "teacher" and trained["countdown-distill-seed0"].tier == "hard"
    long = {name: c for name, c in trained.items() if c.steps == experiments.LONG_STEPS}
    assert len(long) == len(experiments.LONG_RECIPES) * len(experiments.LONG_SEEDS) == 4
    assert {(c.beta, c.ref_reset_every) for c in long.values()} == {(0.0, 0), (0.01, 250)}
    assert all(c.tier == "hard" and c.policy_every == 100 and c.algo == "grpo" for c in long.values())
    for name in long:  # the kept policies scored: step 100 and the final one, each produced by its run
        for step in experiments.LONG_EVAL_STEPS:
            model = evaluations[f"{name}-step{step}-T1.0"].model
            assert experiments.producer(model) == f"hard/{name}" and experiments.model_key(model) == "grpo"
            assert experiments.policy_step(model) == (None if step == experiments.LONG_STEPS else step)
