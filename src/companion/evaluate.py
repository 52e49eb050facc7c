"""``companion eval``: n samples per problem, scored by the task's verifier, summarised as a pass@k curve.

    companion eval --model tiny --task countdown --problems 200 --n 256 --out runs/eval-base

Chapter 7 asks whether RL expands what a model can solve or only sharpens it; the evidence is the pass@k
curve (Yue et al. 2025, arXiv 2504.13837) of a base and a trained model over the same held-out problems.
This module produces it:

1. draw the problems (the task's held-out ``test`` split by default, the same for every model),
2. sample ``n`` completions per problem (:func:`companion.sampler.sample_completions`),
3. score each with the task's verifier, and append one JSON line per problem to ``problems.jsonl``,
4. summarise: pass@k for k = 1, 2, 4, …, n with bootstrap intervals, coverage, and the mean length of
   correct and of wrong completions (``summary.json``).

A completion is *correct* when its reward is 1.0: Countdown's format score (0.1 for a well-formed wrong
answer) is not a solve.

Decisions, and why:

* **Finished problems are never lost.** Each problem's row is appended, flushed and fsynced as soon as it
  is scored. Rerunning the same command skips the problems already in ``problems.jsonl`` (a half-written
  last line from a crash is dropped and redone), and a directory holding a different run is refused
  rather than mixed with it.
* **A resumed run equals an uninterrupted one.** Problem ``i`` is sampled from a seed derived from
  ``seed`` and ``i`` only, and the sampler fixes every random draw of a sample in advance, so neither the
  interruption nor the batching changes what is sampled. Problems are sampled in groups aligned to their
  index (problems 0..m-1, m..2m-1, …), and a group with a missing problem is redone whole, so even the
  floating-point rounding (which depends on what shares a batch) is that of the uninterrupted run.
* **More problems later.** The problem draws are prefix-stable (the first 100 of 200 problems are the
  100 problems), so ``--problems`` may grow between runs in the same directory; so may the batch size,
  the device and the thread count, which change only speed (and float rounding).

Python API for the book: :func:`evaluate` runs it (and accepts a model already in memory);
:func:`load_results` reads a finished or partial run back.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from companion.config import MAX_COMPLETION_LENGTH, add_dataclass_arguments, config_from_args, load_config, save_config

CORRECT_REWARD = 1.0
"""Reward of a correct completion; anything less (Countdown's format score included) is wrong."""

CONFIG_FILE, ROWS_FILE, SUMMARY_FILE = "config.json", "problems.jsonl", "summary.json"

RESUMABLE_FIELDS = ("problems", "batch_size", "threads", "device", "out", "overwrite")
"""Fields that may differ between runs in one directory: none of them changes what problem i's samples are."""

N_BOOTSTRAP = 1000
"""Bootstrap resamples of the problems behind each pass@k interval."""


class EvalError(ValueError):
    """A problem with the run's inputs or its output directory; the message says what to change."""


@dataclass(frozen=True)
class EvalConfig:
    """One evaluation run: which model, which problems, how to sample, where to write."""

    model: str = field(default="tiny", metadata={
        "help": "'tiny' (the shipped tiny base model), a model directory (a save_pretrained model, or the LoRA "
                "adapters `companion train` saved), or a hub name like Qwen/Qwen2.5-0.5B"})
    task: str = field(default="countdown", metadata={"help": "the task whose problems and verifier to use",
                                                     "choices": ("countdown", "tinygsm", "gsm8k")})
    problems: int = field(default=200, metadata={"help": "number of problems (may grow when resuming)"})
    split: str = field(default="test", metadata={"help": "problem split: 'test' is held out from pretraining "
                                                         "and training", "choices": ("train", "test")})
    problem_seed: int = field(default=0, metadata={"help": "which problems are drawn; keep it fixed to compare models"})
    data_file: str = field(default="", metadata={"help": "gsm8k only: a local JSONL file (question, answer) "
                                                         "instead of the Hugging Face hub"})
    prompt_style: str = field(default="base", metadata={"help": "'base' for base models, 'chat' for instruct "
                                                                "models (their chat template)",
                                                        "choices": ("base", "chat")})
    n: int = field(default=256, metadata={"help": "samples per problem; pass@k is reported for k = 1, 2, 4, ..., n"})
    temperature: float = field(default=0.6, metadata={"help": "sampling temperature (0: greedy, needs --n 1)"})
    top_p: float = field(default=0.95, metadata={"help": "nucleus sampling: keep the most likely tokens up to this "
                                                         "probability mass"})
    max_completion_length: int = field(default=MAX_COMPLETION_LENGTH, metadata={
        "help": "tokens per completion at most (EOS included); the default is the same as in training and pretraining"})
    seed: int = field(default=0, metadata={"help": "sampling seed; problem i uses a seed derived from it and i"})
    batch_size: int = field(default=512, metadata={"help": "samples decoded together (memory grows with it); 512 was "
                                                           "the fastest for the tiny model at n = 256 in "
                                                           "bench/bench_eval.py"})
    threads: int = field(default=1, metadata={"help": "torch CPU threads, 0 for torch's default (one per core). One "
                                                      "decodes the tiny model fastest when other processes share the "
                                                      "cores (see bench/bench_eval.py)"})
    device: str = field(default="auto", metadata={"help": "'auto' (a GPU if there is one), 'cpu' or 'cuda'"})
    save_completions: bool = field(default=False, metadata={"help": "also write every completion's text to "
                                                                    "problems.jsonl (large for big n)"})
    out: str = field(default="runs/eval", metadata={"help": "output directory: config.json, problems.jsonl, "
                                                            "summary.json"})
    overwrite: bool = field(default=False, metadata={"help": "delete a previous run's files in --out instead of "
                                                             "resuming it"})

    def __post_init__(self):
        if not self.model:
            raise ValueError("model is empty: pass 'tiny', a model directory or a hub name")
        if self.problems < 1:
            raise ValueError(f"problems must be at least 1, got {self.problems}")
        if self.n < 1:
            raise ValueError(f"n (samples per problem) must be at least 1, got {self.n}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0 (0 is greedy), got {self.temperature}")
        if self.temperature == 0 and self.n > 1:
            raise ValueError(f"temperature 0 (greedy) gives {self.n} identical samples: use --n 1 for greedy, "
                             "or a temperature > 0 for pass@k")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1] (1 turns nucleus sampling off), got {self.top_p}")
        if self.max_completion_length < 1:
            raise ValueError(f"max_completion_length must be at least 1, got {self.max_completion_length}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {self.batch_size}")
        if self.threads < 0:
            raise ValueError(f"threads must be 0 (torch's default) or a positive count, got {self.threads}")
        if self.data_file and self.task != "gsm8k":
            raise ValueError(f"data_file is for --task gsm8k only; {self.task} problems are generated")
        if not self.out:
            raise ValueError("out is empty: pass an output directory")

    @property
    def problems_per_group(self) -> int:
        """Problems sampled together: as many as fit in a batch, at least one."""
        return max(1, self.batch_size // self.n)


def problem_seed(seed: int, index: int) -> int:
    """The sampling seed of problem ``index``: a hash of ``(seed, index)``, the same on every machine.

    >>> problem_seed(0, 0) == problem_seed(0, 0) != problem_seed(0, 1)
    True
    """
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


# --- the rows file: append, fsync, repair ---------------------------------------------------------------------


def _read_rows(path: Path, *, repair: bool) -> list[dict]:
    """The complete rows of ``problems.jsonl``. A partial last line (a crash mid-write) is dropped, and with
    ``repair`` cut from the file so the next append starts on a fresh line."""
    if not path.exists():
        return []
    data = path.read_bytes()
    complete = data[: data.rfind(b"\n") + 1]  # everything up to the last newline
    if repair and len(complete) < len(data):
        with path.open("r+b") as f:
            f.truncate(len(complete))
            os.fsync(f.fileno())
    rows = []
    for number, line in enumerate(complete.decode().splitlines(), start=1):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as error:
            raise EvalError(f"{path}, line {number}, is not valid JSON ({error.msg}): the file was edited or "
                            "corrupted; fix or delete that line, or rerun with --overwrite") from None
    return rows


def _append_row(f, row: dict) -> None:
    f.write(json.dumps(row) + "\n")
    f.flush()
    os.fsync(f.fileno())


# --- the run directory: refuse a different run, resume the same one -------------------------------------------


def _identity(config: dict) -> dict:
    return {k: v for k, v in config.items() if k not in RESUMABLE_FIELDS}


def _prepare_directory(config: EvalConfig) -> Path:
    """Create ``out``, or check that it holds this same run (or wipe our files in it with ``overwrite``)."""
    out = Path(config.out)
    ours = [out / name for name in (CONFIG_FILE, ROWS_FILE, SUMMARY_FILE)]
    if config.overwrite:
        for path in ours:
            path.unlink(missing_ok=True)
    elif (out / CONFIG_FILE).exists():
        previous = json.loads((out / CONFIG_FILE).read_text())
        current = dataclasses.asdict(config)
        differences = [f"{name}: {previous.get(name)!r} there, {current.get(name)!r} now"
                       for name in sorted(set(_identity(previous)) | set(_identity(current)))
                       if previous.get(name) != current.get(name)]
        if differences:
            raise EvalError(f"{out} holds an evaluation with a different config ({'; '.join(differences)}). "
                            "Use another --out, or --overwrite to replace that run.")
    elif (out / ROWS_FILE).exists():
        raise EvalError(f"{out} has a {ROWS_FILE} but no {CONFIG_FILE}, so it cannot be resumed safely: "
                        "use another --out, or --overwrite to replace it")
    out.mkdir(parents=True, exist_ok=True)
    save_config(config, out / CONFIG_FILE)
    return out


def _finished_rows(path: Path, problems: list[dict]) -> dict[int, dict]:
    """The rows already written, by problem index, after checking they belong to these problems."""
    done: dict[int, dict] = {}
    for row in _read_rows(path, repair=True):
        index = row["index"]
        if index in done:
            raise EvalError(f"{path} has two rows for problem {index}: were two runs writing to it at once? "
                            "Rerun with --overwrite")
        if index < len(problems) and row["problem"] != _jsonable(problems[index]):
            raise EvalError(f"{path}: problem {index} is {row['problem']} there but the task now draws "
                            f"{_jsonable(problems[index])} (did the task's generator change?). Rerun with --overwrite")
        done[index] = row
    return done


def _jsonable(value):
    """``value`` as it reads back from JSON (tuples become lists)."""
    return json.loads(json.dumps(value))


# --- 1.-3. sample, score, write ------------------------------------------------------------------------------


def _load_problems(config: EvalConfig, task) -> list[dict]:
    options = {"data_file": config.data_file} if config.data_file else {}
    try:
        return task.generate(config.problems, seed=config.problem_seed, split=config.split, **options)
    except (ValueError, RuntimeError, OSError) as error:
        raise EvalError(f"cannot draw {config.problems} {config.task} problems ({config.split} split): {error}") from error


def _load_model(config: EvalConfig):
    from companion.models import load_policy

    try:
        return load_policy(config.model, device=config.device)
    except (ValueError, RuntimeError, OSError) as error:
        raise EvalError(f"cannot load the model {config.model!r}: {error}") from error


def _check_context(model, tokenizer, prompts: list[str], config: EvalConfig) -> None:
    limit = getattr(model.config, "max_position_embeddings", None)
    longest = max(len(ids) for ids in tokenizer(prompts, add_special_tokens=False)["input_ids"])
    if limit is not None and longest + config.max_completion_length > limit:
        raise EvalError(f"the longest prompt ({longest} tokens) + max_completion_length ({config.max_completion_length})"
                        f" exceeds the model's context of {limit} tokens: lower --max-completion-length to at most "
                        f"{limit - longest}")


def evaluate(config: EvalConfig, *, model=None, tokenizer=None, progress: bool = True) -> dict:
    """Run (or resume) the evaluation ``config`` describes; returns the summary also written to ``summary.json``.

    ``model`` and ``tokenizer`` evaluate a model already in memory (``config.model`` then only names it);
    otherwise ``config.model`` is loaded with :func:`companion.models.load_policy`.
    """
    import torch
    from tqdm.auto import tqdm

    from companion.sampler import sample_completions
    from companion.tasks import get_task

    if (model is None) != (tokenizer is None):
        raise ValueError("pass both model and tokenizer, or neither (then config.model is loaded)")
    out = _prepare_directory(config)
    task = get_task(config.task)
    problems = _load_problems(config, task)
    done = _finished_rows(out / ROWS_FILE, problems)
    todo = [i for i in range(len(problems)) if i not in done]
    if todo:
        if model is None:
            model, tokenizer = _load_model(config)
        try:
            prompts = [task.prompt(p, style=config.prompt_style, tokenizer=tokenizer) for p in problems]
        except ValueError as error:  # e.g. --prompt-style chat with a tokenizer that has no chat template
            raise EvalError(str(error)) from error
        _check_context(model, tokenizer, prompts, config)
        threads = torch.get_num_threads()
        if config.threads:
            torch.set_num_threads(config.threads)
        size = config.problems_per_group
        groups = sorted({i // size for i in todo})
        bar = tqdm(total=len(problems) * config.n, initial=(len(problems) - len(todo)) * config.n, unit="sample", smoothing=0.05,
                   desc=f"eval {config.task}", disable=not progress, dynamic_ncols=True)
        tokens = 0

        def finished(samples: int, new_tokens: int) -> None:
            nonlocal tokens
            tokens += new_tokens
            bar.update(samples)
            bar.set_postfix(tokens_per_s=f"{tokens / max(bar.format_dict['elapsed'], 1e-9):.0f}", refresh=False)

        try:
            with (out / ROWS_FILE).open("a") as f:
                for group in groups:
                    # The whole group, even a problem already written (rare: only after a crash mid-group, or when
                    # --problems grew), so the batch is the uninterrupted run's batch, down to float rounding.
                    members = list(range(group * size, min((group + 1) * size, len(problems))))
                    start = time.perf_counter()
                    completions = sample_completions(
                        model, tokenizer, [prompts[i] for i in members], config.n,
                        seeds=[problem_seed(config.seed, i) for i in members],
                        max_completion_length=config.max_completion_length, temperature=config.temperature,
                        top_p=config.top_p, batch_size=config.batch_size,
                        on_finished=finished if all(i not in done for i in members) else None,
                    )
                    seconds = (time.perf_counter() - start) / len(members)
                    for i, samples in zip(members, completions):
                        if i in done:
                            continue
                        _append_row(f, _score(task, i, problems[i], samples, seconds, config.save_completions))
                        if any(j in done for j in members):
                            bar.update(config.n)
        finally:
            bar.close()
            torch.set_num_threads(threads)
    rows = [row for row in load_results(out).rows if row["index"] < len(problems)]
    summary = summarize(rows, config)
    _write_atomically(out / SUMMARY_FILE, json.dumps(summary, indent=2) + "\n")
    return summary


def _score(task, index: int, problem: dict, samples, seconds: float, save_completions: bool) -> dict:
    """One problem's row: its rewards, lengths and whether each sample ended (EOS) before the length cap."""
    rewards = [task.reward(c.text, problem) for c in samples]
    row = {
        "index": index,
        "problem": _jsonable(problem),
        "num_correct": sum(r >= CORRECT_REWARD for r in rewards),
        "rewards": rewards,
        "lengths": [c.length for c in samples],
        "finished": [c.finished for c in samples],
        "seconds": seconds,
    }
    if save_completions:
        row["completions"] = [c.text for c in samples]
    return row


def _write_atomically(path: Path, text: str) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text)
    os.replace(partial, path)


# --- 4. summarise --------------------------------------------------------------------------------------------


def summarize(rows: list[dict], config: EvalConfig) -> dict:
    """The run's summary from its rows: pass@k curve (bootstrap CIs over problems), coverage, lengths, speed.

    >>> rows = [{"index": 0, "num_correct": 1, "rewards": [1.0, 0.1], "lengths": [10, 30], "finished": [True, True],
    ...          "seconds": 1.0},
    ...         {"index": 1, "num_correct": 0, "rewards": [0.0, 0.0], "lengths": [40, 40], "finished": [False, False],
    ...          "seconds": 1.0}]
    >>> s = summarize(rows, EvalConfig(n=2, problems=2))
    >>> [(p["k"], p["estimate"]) for p in s["pass_at_k"]], s["coverage"]
    ([(1, 0.25), (2, 0.5)], 0.5)
    >>> s["mean_length_correct"], s["mean_length_wrong"], s["truncated_fraction"], s["samples_per_s"]
    (10.0, 36.666666666666664, 0.5, 2.0)
    """
    from companion.passk import pass_at_k_curve

    if not rows:
        raise EvalError("no finished problems to summarise")
    counts = [row["num_correct"] for row in rows]
    curve = pass_at_k_curve(counts, config.n, n_bootstrap=N_BOOTSTRAP, seed=0)
    rewards = np.array([row["rewards"] for row in rows], dtype=float)  # (P, n)
    lengths = np.array([row["lengths"] for row in rows], dtype=float)  # (P, n)
    correct = rewards >= CORRECT_REWARD
    seconds = sum(row["seconds"] for row in rows)

    def mean(values: np.ndarray) -> float | None:
        return float(values.mean()) if values.size else None

    return {
        "model": config.model,
        "task": config.task,
        "split": config.split,
        "num_problems": len(rows),
        "n": config.n,
        "temperature": config.temperature,
        "top_p": config.top_p,
        "pass_at_k": [point._asdict() for point in curve.values()],
        "accuracy": float(correct.mean()),  # per-sample: the same number as pass@1
        "mean_reward": float(rewards.mean()),
        "coverage": float(np.mean([c > 0 for c in counts])),  # problems solved by at least one sample
        "num_solved": int(sum(c > 0 for c in counts)),
        "mean_length": float(lengths.mean()),
        "mean_length_correct": mean(lengths[correct]),
        "mean_length_wrong": mean(lengths[~correct]),
        "truncated_fraction": float(1 - np.mean([row["finished"] for row in rows])),
        "samples": int(rewards.size),
        "tokens": int(lengths.sum()),
        "sampling_seconds": seconds,
        "samples_per_s": rewards.size / seconds if seconds > 0 else None,
        "tokens_per_s": float(lengths.sum()) / seconds if seconds > 0 else None,
    }


# --- reading a run back ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EvalResults:
    """A run read back by :func:`load_results`."""

    config: EvalConfig
    rows: list[dict]  # one per finished problem, by index
    summary: dict | None  # None while the run is unfinished

    @property
    def correct_counts(self) -> dict[int, int]:
        """Correct samples per problem index: the input of :mod:`companion.passk` (curves, coverage)."""
        return {row["index"]: row["num_correct"] for row in self.rows}


def load_results(directory: str | Path) -> EvalResults:
    """The config, the finished rows (sorted by problem index) and the summary of the run in ``directory``.

    Read-only: a partial last line of ``problems.jsonl`` is skipped, not repaired.
    """
    directory = Path(directory)
    if not (directory / CONFIG_FILE).exists():
        raise EvalError(f"{directory} holds no evaluation (no {CONFIG_FILE}); run `companion eval --out {directory}`")
    config = load_config(EvalConfig, directory / CONFIG_FILE)
    rows = sorted(_read_rows(directory / ROWS_FILE, repair=False), key=lambda row: row["index"])
    summary_path = directory / SUMMARY_FILE
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else None
    return EvalResults(config, rows, summary)


# --- command line ----------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="companion eval",
        description="Sample n completions per problem, score them with the task's verifier, and write one JSON "
                    "line per problem and the pass@k curve. Rerun the same command to resume.",
    )
    add_dataclass_arguments(parser, EvalConfig)
    args = parser.parse_args(argv)
    try:
        config = config_from_args(EvalConfig, args)
    except ValueError as error:
        parser.error(str(error))
    try:
        summary = evaluate(config)
    except EvalError as error:
        print(f"companion eval: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\ncompanion eval: interrupted; every finished problem is in {config.out}/{ROWS_FILE}: rerun the same "
              "command to resume", file=sys.stderr)
        return 130
    print(f"{summary['num_problems']} problems x {summary['n']} samples of {summary['model']} on {summary['task']}: "
          f"coverage {summary['coverage']:.3f}, mean reward {summary['mean_reward']:.3f}")
    for point in summary["pass_at_k"]:
        interval = f"  [{point['low']:.3f}, {point['high']:.3f}]" if point["low"] is not None else ""
        print(f"  pass@{point['k']:<5d} {point['estimate']:.3f}{interval}")
    print(f"results in {config.out}/ ({ROWS_FILE}, {SUMMARY_FILE})")
    return 0
