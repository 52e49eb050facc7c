"""``companion train`` as a user runs it: a subprocess, its files, its exit codes and messages."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from companion.trainer import TrainConfig


def companion(*args: str, cwd=None):
    return subprocess.run([sys.executable, "-m", "companion.cli", "train", *args], capture_output=True, text=True,
                          timeout=600, cwd=cwd)


def _small(model_dir, out):
    return ["--model", str(model_dir), "--out", str(out), "--device", "cpu", "--num-threads", "1", "--quiet",
            "--prompts-per-step", "2", "--num-generations", "2", "--max-completion-length", "16",
            "--train-problems", "8", "--eval-every", "0", "--save-every", "1"]


def test_help_lists_every_config_field():
    result = companion("--help")
    assert result.returncode == 0
    import dataclasses

    for name in [f.name.replace("_", "-") for f in dataclasses.fields(TrainConfig)] + ["resume", "overwrite",
                                                                                         "until-step"]:
        assert f"--{name}" in result.stdout, name


def test_the_config_groups_split_the_fields_and_every_committed_config_still_names_them():
    """TrainConfig is its groups' fields, each in one group; the flags and the committed config.json files that
    name them keep working."""
    import dataclasses

    from companion.config import load_config
    from companion.shipped import data_dir
    from companion.train_config import GROUPS

    grouped = [f.name for group in GROUPS for f in dataclasses.fields(group)]
    fields = {f.name for f in dataclasses.fields(TrainConfig)}  # not the LEGACY class variable
    assert sorted(grouped) == sorted(fields) and len(set(grouped)) == len(grouped)
    committed = sorted((data_dir() / "experiments").glob("*/*/config.json"))
    assert len(committed) > 100
    for path in committed:
        saved = json.loads(path.read_text())
        assert set(saved) <= fields, path
        config = load_config(TrainConfig, path)
        assert {k: getattr(config, k) for k in saved} == saved, path


@pytest.mark.slow
def test_train_stop_resume_and_refuse_to_clobber(tiny_policy_dir, tmp_path):
    out = tmp_path / "run"
    first = companion(*_small(tiny_policy_dir, out), "--steps", "2", "--until-step", "1", "--algo", "fisft_pm")
    assert first.returncode == 0, first.stderr
    assert json.loads((out / "config.json").read_text())["algo"] == "fisft_pm"
    assert [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()] == [1]
    assert (out / "checkpoint.pt").exists() and not (out / "policy").exists()

    again = companion(*_small(tiny_policy_dir, out), "--steps", "2")
    assert again.returncode == 2 and "already holds a run" in again.stderr and "--resume" in again.stderr

    changed = companion("--resume", str(out), "--learning-rate", "0.5")
    assert changed.returncode == 2 and "drop --learning-rate" in changed.stderr

    resumed = companion("--resume", str(out), "--quiet")
    assert resumed.returncode == 0, resumed.stderr
    assert [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    assert (out / "policy" / "config.json").exists() and "step 2 of 2" in resumed.stdout


def test_resume_finds_the_run_however_its_path_is_spelled(tiny_policy_dir, tmp_path):
    """A run started with an absolute --out resumes from a relative path to the same directory (and back)."""
    out = tmp_path / "run"
    first = companion(*_small(tiny_policy_dir, out), "--steps", "2", "--until-step", "1")
    assert first.returncode == 0, first.stderr
    resumed = companion("--resume", "run", "--quiet", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2]


@pytest.mark.parametrize("args, code, message", [
    (["--num-generations", "1"], 2, "num_generations must be >= 2"),
    (["--task", "chess"], 2, "unknown task 'chess'"),
    (["--algo", "reinforce"], 2, "invalid choice: 'reinforce'"),
    (["--resume", "{tmp}/nowhere"], 2, "nothing to resume"),
    (["--resume", "{tmp}/nowhere", "--out", "{tmp}/elsewhere"], 2, "drop --out"),
])
def test_bad_input_exits_with_a_message(tmp_path, args, code, message):
    result = companion(*[a.format(tmp=tmp_path) for a in args], cwd=tmp_path)  # the default --out is relative
    assert result.returncode == code and message in result.stderr, result.stderr


def test_gsm8k_without_the_hub_is_a_message_not_a_traceback_and_writes_nothing(tmp_path):
    result = subprocess.run([sys.executable, "-m", "companion.cli", "train", "--task", "gsm8k", "--out",
                             str(tmp_path / "run")], capture_output=True, text=True, timeout=600,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 2, result.stderr
    assert "cannot load GSM8K" in result.stderr and "--data-file" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "run").exists()
