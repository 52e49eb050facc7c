"""bench/bench_gpu.py, the GPU measurement a lent GPU machine runs (chapter 8): its plumbing, on the CPU.

It cannot be run by CI where it matters (CI has no GPU), so what can rot is checked here: the random model has the
exact shape the planner plans for, its tokenizer decodes every id it can sample, and the whole measurement runs
end to end in its smoke mode and writes what chapter 8 reads.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import load_bench

BENCH = Path(__file__).resolve().parents[1] / "bench" / "bench_gpu.py"


@pytest.fixture(scope="module")
def bench():
    return load_bench("bench_gpu")


def test_the_random_model_has_the_planned_shape_and_every_id_decodes(bench, tmp_path, one_thread):
    from transformers import AutoConfig, AutoTokenizer

    from companion.planner import ModelShape

    shape = ModelShape(**{**bench.SMOKE_SHAPE, "vocab_size": 700})
    path = bench.write_model(shape, tmp_path / "model")
    assert ModelShape.from_config(AutoConfig.from_pretrained(path), name=shape.name) == shape
    tokenizer = AutoTokenizer.from_pretrained(path)
    assert len(tokenizer) == shape.vocab_size
    assert tokenizer.decode([2 + ord("7"), 699]) == "7<699>"  # a byte, then a filler
    prompt = "Using 3, 5 and 7, make 22."
    assert tokenizer.decode(tokenizer(prompt)["input_ids"]) == prompt  # text never encodes to a filler


def test_the_reward_splits_groups_whatever_the_text(bench):
    rewards = [bench.coin_flip_reward(None, f"<{i}>" * 40, None) for i in range(400)]
    assert set(rewards) == {0.0, 1.0} and 0.35 < sum(rewards) / len(rewards) < 0.65
    assert bench.coin_flip_reward(None, "same", None) == bench.coin_flip_reward(None, "same", None)


def test_the_smoke_run_measures_every_step_and_writes_the_report(bench, tmp_path):
    out = tmp_path / "gpu.json"
    done = subprocess.run([sys.executable, str(BENCH), "--smoke", "--steps", "2", "--out", str(out)],
                          capture_output=True, text=True, timeout=300,
                          env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["environment"]["torch"] and report["environment"]["gpu"] is None
    (run,) = report["runs"]
    assert "error" not in run, run
    assert [s["step"] for s in run["steps"]] == [1, 2]
    assert run["finite"] and run["adapters_moved"]
    assert run["median_step_s"] > 0 and run["generated_tokens_per_s"] > 0
    assert run["planned_gib"]["peak"] > 0 and run["peak_reserved_gib"] is None  # no CUDA, no measured peak
    assert run["longest_prompt"] > 20
    assert "smoke float32:" in done.stdout
    (sampled,) = report["evals"]
    assert "error" not in sampled, sampled
    settings = bench.SMOKE_EVAL
    assert sampled["samples"] == settings["problems"] * settings["num_generations"]
    assert sampled["samples_per_s"] > 0 and 0 < sampled["mean_length"] <= settings["max_completion_length"]
    assert sampled["planned_peak_gib"] > 0 and "planned" in done.stdout.split("companion eval:")[-1]


def test_a_failing_run_is_recorded_not_raised(bench, tmp_path, monkeypatch):
    class Args:
        steps, timeout = 2, 60

    result = bench._run_child(tmp_path / "no-model-here", "float32", Args, bench.SMOKE)
    assert "error" in result and "no-model-here" in result["error"]


def test_bad_arguments_are_refused_before_any_work(bench, tmp_path, capsys):
    with pytest.raises(SystemExit):
        bench.main(["--out", str(tmp_path / "x.json"), "--models", "Qwen/Qwen9-1B"])
    assert "Qwen/Qwen2.5-0.5B" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        bench.main(["--out", str(tmp_path / "x.json"), "--steps", "1"])
    assert not (tmp_path / "x.json").exists()
