"""Nothing lost, nothing doubled, nothing silently wrong: run locks, collapse detection, and a clear message (not a
traceback) for every broken input, as a user meets them: through the command line."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from companion.runs import RunError, run_lock


def companion(*args: str, cwd=None, timeout: int = 600):
    return subprocess.run([sys.executable, "-m", "companion.cli", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd)


def _train_args(model_dir, out, *extra: str) -> list[str]:
    return ["train", "--model", str(model_dir), "--out", str(out), "--device", "cpu", "--num-threads", "1", "--quiet",
            "--prompts-per-step", "2", "--num-generations", "2", "--max-completion-length", "16", "--train-problems",
            "8", "--eval-every", "0", "--save-every", "1", *extra]


def _steps(out) -> list[int]:
    return [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]


# --- one writer per run directory ----------------------------------------------------------------------------------


def test_a_run_directory_in_use_is_refused_to_a_second_writer_and_to_a_resume(tiny_policy_dir, tmp_path):
    out = tmp_path / "run"
    assert companion(*_train_args(tiny_policy_dir, out, "--steps", "2", "--until-step", "1")).returncode == 0
    with run_lock(out, "test"):  # another process holds it, as a live run does
        second = companion(*_train_args(tiny_policy_dir, out, "--steps", "2", "--overwrite"))
        resumed = companion("train", "--resume", str(out), "--quiet")
        with run_lock(out / "eval", "test"):
            evaluation = companion("eval", "--model", str(tiny_policy_dir), "--problems", "2", "--num-generations",
                                   "2", "--out", str(out / "eval"))
    for result in (second, resumed, evaluation):
        assert result.returncode == 2 and "is in use by another process" in result.stderr, result.stderr
    assert _steps(out) == [1]  # nothing written twice
    resumed = companion("train", "--resume", str(out), "--quiet")  # free again
    assert resumed.returncode == 0, resumed.stderr
    assert _steps(out) == [1, 2]


def test_a_killed_holder_leaves_no_lock_behind(tmp_path):
    out = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from companion.runs import run_lock\n"
                               f"with run_lock({str(out)!r}, 'holder'):\n print('held', flush=True); time.sleep(600)"],
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(RunError, match="in use"):
        with run_lock(out, "test"):
            pass
    holder.kill()
    holder.wait()
    with run_lock(out, "test"):  # the operating system released it with the process
        pass
    assert list(out.iterdir()) == []  # and no file is left behind


def test_ctrl_c_stops_a_run_with_its_resume_command(tiny_policy_dir, tmp_path):
    out = tmp_path / "run"
    # the run starts with Ctrl-C's default handling even where this test's own runner ignores SIGINT (a job a shell
    # put in the background does, and the child would inherit that)
    run = subprocess.Popen([sys.executable, "-m", "companion.cli", *_train_args(tiny_policy_dir, out, "--steps", "500")],
                           stderr=subprocess.PIPE, text=True,
                           preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 300
    while time.time() < deadline and not ((out / "metrics.jsonl").exists() and _steps(out)):
        time.sleep(0.2)
    run.send_signal(signal.SIGINT)
    _, err = run.communicate(timeout=120)
    assert run.returncode == 130 and f"companion train --resume {out}" in err and "Traceback" not in err


# --- an evaluation never reuses rows of other weights --------------------------------------------------------------


def test_an_evaluation_whose_weights_changed_on_disk_is_refused_not_reused(tiny_policy_dir, tmp_path):
    from safetensors.torch import load_file, save_file

    model = tmp_path / "model"
    shutil.copytree(tiny_policy_dir, model)
    args = ["eval", "--model", str(model), "--problems", "2", "--num-generations", "2", "--out", str(tmp_path / "e")]
    assert companion(*args).returncode == 0
    assert companion(*args).returncode == 0  # the same weights: the finished run is read back
    weights = load_file(model / "model.safetensors")
    name = next(iter(weights))
    weights[name] = weights[name] + 0.01
    save_file(weights, model / "model.safetensors", metadata={"format": "pt"})
    again = companion(*args)
    assert again.returncode == 2 and "its files changed since they were sampled" in again.stderr


# --- a collapsed policy stops the run -------------------------------------------------------------------------------


def test_a_collapsed_policy_stops_the_run_with_exit_1_and_no_checkpoint_of_it(tmp_path):
    import re

    from companion.checkpoint import usable_checkpoint

    out = tmp_path / "collapse"
    result = companion("train", "--learning-rate", "10", "--steps", "10", "--prompts-per-step", "4",
                       "--num-generations", "4", "--max-completion-length", "64", "--save-every", "1",
                       "--eval-every", "0", "--num-threads", "1", "--quiet", "--out", str(out))
    assert result.returncode == 1 and "the policy collapsed" in result.stderr, result.stderr
    collapsed_at = int(re.search(r"step (\d+): the policy collapsed", result.stderr).group(1))
    last = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["step"] == collapsed_at and last["entropy"] < 1e-3 and last["accuracy"] == 0
    if (out / "checkpoint.pt").exists():  # the checkpoint left in place is from before the update that broke it
        assert usable_checkpoint(out)[1] < collapsed_at and "holds step" in result.stderr
    else:
        assert (out / "checkpoint.collapsed.pt").exists() and "--overwrite" in result.stderr


def test_a_collapse_with_no_earlier_checkpoint_moves_the_broken_one_aside(tiny_policy, tmp_path):
    from companion.checkpoint import roll_back, save_checkpoint

    model, _ = tiny_policy
    optimizer = torch.optim.AdamW(model.parameters())
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda u: 1.0)
    save_checkpoint(tmp_path / "checkpoint.pt", model=model, optimizer=optimizer, scheduler=scheduler, step=1,
                    data_position=0)
    message = roll_back(tmp_path)
    assert not (tmp_path / "checkpoint.pt").exists() and (tmp_path / "checkpoint.collapsed.pt").exists()
    assert "--overwrite" in message


def test_rolling_back_puts_the_checkpoint_before_the_last_in_its_place(tiny_policy, tmp_path):
    from companion.checkpoint import roll_back, save_checkpoint, usable_checkpoint

    model, _ = tiny_policy
    optimizer = torch.optim.AdamW(model.parameters())
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda u: 1.0)
    for step in (3, 4):
        save_checkpoint(tmp_path / "checkpoint.pt", model=model, optimizer=optimizer, scheduler=scheduler, step=step,
                        data_position=0)
    assert usable_checkpoint(tmp_path)[1] == 4
    assert "holds step 3 again" in roll_back(tmp_path)
    assert usable_checkpoint(tmp_path)[1] == 3


# --- broken files: a message that names the file, never a traceback ------------------------------------------------


def test_a_damaged_checkpoint_falls_back_to_the_one_before_it(tiny_policy_dir, tmp_path):
    out = tmp_path / "run"
    assert companion(*_train_args(tiny_policy_dir, out, "--steps", "4", "--until-step", "3")).returncode == 0
    (out / "checkpoint.pt").write_bytes(b"not a checkpoint")
    resumed = companion("train", "--resume", str(out), "--quiet")
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming from checkpoint.previous.pt (step 2)" in resumed.stderr
    assert _steps(out) == [1, 2, 3, 4]


@pytest.mark.parametrize("command", ["train", "eval"])
def test_cut_short_weights_are_named_with_what_to_do(tiny_policy_dir, tmp_path, command):
    model = tmp_path / "model"
    shutil.copytree(tiny_policy_dir, model)
    data = (model / "model.safetensors").read_bytes()
    (model / "model.safetensors").write_bytes(data[:len(data) // 2])
    args = (_train_args(model, tmp_path / "run", "--steps", "1") if command == "train" else
            ["eval", "--model", str(model), "--problems", "2", "--out", str(tmp_path / "run")])
    result = companion(*args)
    assert result.returncode == 2 and "damaged or cut short" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").iterdir())  # nothing blocks a retry


@pytest.mark.parametrize("content, message", [
    ("", "holds no problem"),
    ('{"question": "a", "answer": "no gold"}\n', "line 1: no '#### N' gold answer"),
    ('{"question": "a", "answer": "#### 3"}\n{broken\n', "line 2, is not JSON"),
    ('{"question": "a"}\n', "line 1, lacks a question or an answer"),
])
def test_a_broken_gsm8k_file_is_named_with_its_line(tmp_path, content, message):
    path = tmp_path / "train.jsonl"
    path.write_text(content)
    result = companion("train", "--task", "gsm8k", "--data-file", str(path), "--eval-every", "0", "--out",
                       str(tmp_path / "run"))
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr


def test_resume_refuses_to_end_before_its_checkpoint_or_without_its_records(tiny_policy_dir, tmp_path):
    out = tmp_path / "run"
    assert companion(*_train_args(tiny_policy_dir, out, "--steps", "4", "--until-step", "3")).returncode == 0
    shorter = companion("train", "--resume", str(out), "--steps", "2")
    assert shorter.returncode == 2 and "is at step 3: --steps 2 would end before it" in shorter.stderr
    (out / "metrics.jsonl").rename(out / "kept.jsonl")
    lost = companion("train", "--resume", str(out))
    assert lost.returncode == 2 and "lacks the records of steps 1-3" in lost.stderr
    (out / "kept.jsonl").rename(out / "metrics.jsonl")
    assert json.loads((out / "config.json").read_text())["steps"] == 4  # nothing rewritten by the refusals


# --- retries: a failed start leaves nothing that blocks the corrected command -----------------------------------------


def test_a_run_killed_before_its_first_checkpoint_starts_again(tiny_policy_dir, tmp_path):
    out = tmp_path / "run"
    assert companion(*_train_args(tiny_policy_dir, out, "--steps", "3", "--until-step", "1")).returncode == 0
    for name in ("checkpoint.pt", "policy"):  # as if killed after its config and first record, before a checkpoint
        if (out / name).exists():
            shutil.rmtree(out / name) if (out / name).is_dir() else (out / name).unlink()
    again = companion(*_train_args(tiny_policy_dir, out, "--steps", "3"))
    assert again.returncode == 0 and "stopped before its first checkpoint" in again.stderr
    assert _steps(out) == [1, 2, 3]


def test_a_training_run_is_not_written_into_an_evaluation(tiny_policy_dir, tmp_path):
    out = tmp_path / "eval"
    assert companion("eval", "--model", str(tiny_policy_dir), "--problems", "2", "--num-generations", "2", "--out",
                     str(out)).returncode == 0
    before = sorted(p.name for p in out.iterdir())
    result = companion(*_train_args(tiny_policy_dir, out, "--steps", "1", "--overwrite"))
    assert result.returncode == 2 and "holds a companion eval run" in result.stderr
    assert sorted(p.name for p in out.iterdir()) == before  # nothing deleted


def test_values_that_cannot_be_right_are_refused_before_anything_is_written(tmp_path):
    for args, message in [(["--temperature", "inf"], "--temperature inf: must be a finite number"),
                          (["--learning-rate", "nan"], "--learning-rate nan: must be a finite number"),
                          (["--num-generations", "1000000"], "this machine (free memory) has")]:
        result = companion("train", "--out", str(tmp_path / "run"), *args)
        assert result.returncode == 2 and message in result.stderr, result.stderr
        assert not (tmp_path / "run").exists()
    result = companion("pretrain", "--weight-decay", "-1", "--out", str(tmp_path / "base"))
    assert result.returncode == 2 and "--weight-decay must be >= 0" in result.stderr
