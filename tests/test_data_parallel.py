"""Data parallel training under `accelerate launch`: two gloo processes on the CPU give the update one process gives
for the same batch, keep the same weights, and resume exactly; a run resumes only with its own process count."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from companion.config import load_config
from companion.models import load_policy
from companion.objectives import NORMALIZERS
from companion.runs import RunError
from companion.checkpoint import load_checkpoint
from companion.parallel import SINGLE, Processes, check_processes
from companion.trainer import TrainConfig, train

WORKER = Path(__file__).with_name("dp_worker.py")


@pytest.fixture(scope="module")
def two_processes(tiny_policy_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("data-parallel")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("WORLD_SIZE", None)
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               str(WORKER), str(tiny_policy_dir), str(out)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-6000:]
    return out, json.loads((out / "result.json").read_text())


def test_an_update_split_over_two_processes_is_the_update_of_the_whole_batch(two_processes):
    _, result = two_processes
    assert result["world"] == 2
    cases = {(u["normalizer"], u["idle_second"]): u for u in result["updates"]}
    assert set(cases) == {(n, idle) for n in NORMALIZERS for idle in (False, True)}
    for (normalizer, idle), u in cases.items():
        assert u["moved"] > 1e-4, (normalizer, idle)  # the update did something
        assert u["max_param_diff"] < 1e-6, (normalizer, idle, u["max_param_diff"])  # float rounding of the sums
        assert u["split"]["loss"] == pytest.approx(u["whole"]["loss"], rel=1e-5, abs=1e-7)
        assert u["split"]["grad_norm"] == pytest.approx(u["whole"]["grad_norm"], rel=1e-5)
        assert u["split"]["frac_weighted"] == pytest.approx(u["whole"]["frac_weighted"])
        for key in ("ratio_mean", "clip_ratio/region_mean"):
            assert u["split"][key] == pytest.approx(u["whole"][key], rel=1e-5), (normalizer, key)
        assert u["checksums"][0] == u["checksums"][1]  # both processes took the same step


def test_a_ppo_update_split_over_two_processes_is_the_update_of_the_whole_batch(two_processes):
    u = two_processes[1]["ppo"]
    assert u["moved"] > 1e-4 and u["max_param_diff"] < 1e-6, u["max_param_diff"]  # advantages whitened over both
    assert u["split"]["loss"] == pytest.approx(u["whole"]["loss"], rel=1e-5, abs=1e-7)
    assert u["split"]["value_loss"] == pytest.approx(u["whole"]["value_loss"], rel=1e-5)
    assert u["checksums"][0] == u["checksums"][1]


def test_training_keeps_the_weights_equal_and_resumes_exactly(two_processes):
    out, result = two_processes
    assert result["train_checksums"][0] == result["train_checksums"][1]
    assert result["resumed_checksums"] == result["train_checksums"]
    assert result["resumed"] == result["straight"]
    steps = [r for r in result["straight"] if r["step"] > 0]
    assert len(steps) == 3 and any(r["grad_norm"] > 0 for r in steps)
    # the records cover both processes' samples: 4 prompts x 4 completions, accuracy in 16ths
    assert all((r["accuracy"] * 16) == pytest.approx(round(r["accuracy"] * 16)) for r in steps)
    config = json.loads((out / "straight" / "config.json").read_text())
    assert config["num_processes"] == 2
    assert (out / "straight" / "policy").is_dir()


def test_a_two_process_run_does_not_resume_in_one(two_processes):
    out, _ = two_processes
    config = dataclasses.replace(load_config(TrainConfig, out / "straight" / "config.json"), steps=4)
    with pytest.raises(ValueError, match="set for 2 data-parallel processes .* this launch started 1"):
        train(config, resume=True, progress=False)
    model, _ = load_policy(out / "straight" / "policy", device="cpu")
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda u: 1.0)
    with pytest.raises(RunError, match="saved by 2 process\\(es\\) and this launch has 1"):
        load_checkpoint(out / "straight" / "checkpoint.pt", model=model, optimizer=optimizer, scheduler=scheduler)


def test_one_process_is_the_default_and_prompts_must_split_evenly():
    assert Processes.launched(torch.device("cpu")).world == 1  # no launcher here
    config = TrainConfig(prompts_per_step=6)
    assert check_processes(config, SINGLE).num_processes == 1
    assert check_processes(config, Processes(world=3, rank=1)).num_processes == 3
    with pytest.raises(ValueError, match="must split evenly over the 4 processes"):
        check_processes(config, Processes(world=4, rank=0))
    with pytest.raises(ValueError, match="set for 2 data-parallel processes .* started 3"):
        check_processes(TrainConfig(prompts_per_step=6, num_processes=2), Processes(world=3, rank=0))
    with pytest.raises(ValueError, match="num_processes must be >= 1"):
        TrainConfig(num_processes=0)
    values = torch.arange(3.0)
    assert SINGLE.sum(values) is values and SINGLE.gather(values) is values and SINGLE.gather_object(1) == [1]
