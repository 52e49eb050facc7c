"""Evaluation: n samples per problem, scored by the task's verifier, summarised as a pass@k curve.

One path for every evaluation in the package. Pretraining's eval of the tiny base, the trainer's held-out
accuracy every ``eval_every`` steps and ``companion eval`` all call the same two functions:

1. :func:`score_problems` — sample ``num_generations`` completions per problem
   (:func:`companion.sampler.sample_completions`) and score each with the task's verifier: one *row* per problem;
2. :func:`summarize` — rows to one summary: pass@k for k = 1, 2, 4, …, n with bootstrap intervals over
   problems, coverage, and the length distributions of correct and of wrong completions.

A completion is correct when :func:`companion.verify.is_correct` says so (reward 1.0: Countdown's format score
is not a solve), everywhere.

``companion eval`` wraps them in a resumable run directory::

    companion eval --model tiny --task countdown --problems 200 --num-generations 256 --out runs/eval-base

Chapter 7 asks whether RL expands what a model can solve or only sharpens it; the evidence is the pass@k
curve (Yue et al. 2025, arXiv 2504.13837) of a base and a trained model over the same held-out problems.

Decisions, and why:

* **Finished problems are never lost.** Each problem's row is appended, flushed and fsynced as soon as it
  is scored. Rerunning the same command skips the problems already in ``problems.jsonl`` (a half-written
  last line from a crash is dropped and redone), and a directory holding a different run is refused
  rather than mixed with it.
* **A run is one model.** The run is keyed by its config *and* a hash of the weights (``model.json``), so a
  checkpoint that changed under the same path is refused instead of resumed into the same rows.
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
import hashlib
import json
import math
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from companion.config import (MAX_COMPLETION_LENGTH, SamplingOptions, add_dataclass_arguments, config_from_args,
                              load_config, need, need_finite, save_config)
from companion.runs import (BAD_INPUT, CONFIG_FILE, RunError, append_jsonl, available_memory, jsonable, open_run_dir,
                            read_jsonl, run_lock, torch_threads, write_atomically)
from companion.decode import problem_seed
from companion.verify import is_correct

ROWS_FILE, SUMMARY_FILE, MODEL_FILE = "problems.jsonl", "summary.json", "model.json"

GPU_BATCH_SIZE = 512
"""Samples decoded together on a GPU by default, when the memory planner fits them (:func:`gpu_batch_size`)."""
CPU_BATCH_SIZE = 1024
"""Samples decoded together on the CPU by default, when the planner fits them in :data:`CPU_MEMORY_SHARE` of the free
memory (:func:`cpu_batch_size`): the fastest for the tiny model at n = 256 (bench/bench_eval.py). A 30-layer model's
caches take far more room per sample, and get a smaller batch."""
CPU_MEMORY_SHARE = 0.5
"""The share of the machine's free memory a CPU evaluation plans its default batch in: the rest is left to a run
beside it (``companion reproduce`` runs two at a time)."""

RESUMABLE_FIELDS = ("problems", "batch_size", "num_threads", "device", "fast_sampler", "out", "overwrite")
"""Fields that may differ between runs in one directory: none of them changes what problem i's samples are."""

N_BOOTSTRAP = 1000
"""Bootstrap resamples of the problems behind each pass@k interval."""


@dataclass(frozen=True)
class EvalConfig(SamplingOptions):
    """One evaluation run: which model, which problems, how to sample (:class:`companion.config.SamplingOptions`,
    shared with training, here at Yue et al.'s T = 0.6 and top-p 0.95 by default), where to write."""

    model: str = field(default="tiny", metadata={
        "help": "'tiny' (the shipped tiny base model), a model known by name (smollm2-135m), a model directory (a "
                "save_pretrained model, or the LoRA adapters `companion train` saved), or a hub name like "
                "Qwen/Qwen2.5-0.5B"})
    task: str = field(default="countdown", metadata={"help": "the task whose problems and verifier to use",
                                                     "choices": ("countdown", "tinygsm", "gsm8k")})
    tier: str = field(default="default", metadata={
        "help": "which problems of the task: countdown has default (numbers 1..20) and hard (numbers 1..35); the "
                "word problems have default only"})
    problems: int = field(default=200, metadata={"help": "number of problems (may grow when resuming)"})
    split: str = field(default="test", metadata={"help": "problem split: 'test' is held out from pretraining "
                                                         "and training", "choices": ("train", "test")})
    problem_seed: int = field(default=0, metadata={"help": "which problems are drawn; keep it fixed to compare models"})
    data_file: str = field(default="", metadata={"help": "gsm8k only: a local JSONL file (question, answer) "
                                                         "instead of the Hugging Face hub"})
    num_generations: int = field(default=256, metadata={
        "help": "samples per problem (the n of pass@k); pass@k is reported for k = 1, 2, 4, ..., n"})
    temperature: float = field(default=0.6, metadata={"help": "sampling temperature (0: greedy, needs "
                                                              "--num-generations 1)"})
    top_p: float = field(default=0.95, metadata={"help": "nucleus sampling: keep the most likely tokens up to this "
                                                         "probability mass"})
    seed: int = field(default=0, metadata={"help": "sampling seed; problem i uses a seed derived from it and i"})
    batch_size: int = field(default=0, metadata={
        "help": "samples decoded together (memory grows with it); 0: the largest power of two up to 1024 on the "
                "CPU (the fastest for the tiny model at n = 256 in bench/bench_eval.py) that the memory planner fits "
                "in half of the free memory, and up to 512 on a GPU in its free memory (checked before the weights "
                "load)"})
    num_threads: int = field(default=1, metadata={"help": "torch CPU threads, 0 for torch's default (one per core). "
                                                          "One decodes the tiny model fastest when other processes "
                                                          "share the cores (see bench/bench_eval.py)"})
    device: str = field(default="auto", metadata={"help": "'auto' (a GPU if there is one), 'cpu' or 'cuda'"})
    save_completions: bool = field(default=False, metadata={"help": "also write every completion's text to "
                                                                    "problems.jsonl (large for big n)"})
    out: str = field(default="runs/eval", metadata={"help": "output directory: config.json, model.json, "
                                                            "problems.jsonl, summary.json"})
    overwrite: bool = field(default=False, metadata={"help": "delete a previous run's files in --out instead of "
                                                             "resuming it"})

    def __post_init__(self):
        need_finite(self)
        SamplingOptions.check(self)
        need(bool(self.model), "model is empty: pass 'tiny', a model directory or a hub name")
        need(self.problems >= 1, f"problems must be at least 1, got {self.problems}")
        need(self.num_generations >= 1, f"num_generations (samples per problem) must be at least 1, got "
                                        f"{self.num_generations}")
        need(self.temperature > 0 or self.num_generations == 1,
             f"temperature 0 (greedy) gives {self.num_generations} identical samples: use --num-generations 1 for "
             "greedy, or a temperature > 0 for pass@k")
        need(self.batch_size >= 0, f"batch_size must be at least 1 (or 0 for the device's default), got "
                                   f"{self.batch_size}")
        need(self.num_threads >= 0, f"num_threads must be 0 (torch's default) or a positive count, got {self.num_threads}")
        from companion.tasks import tier_options

        tier_options(self.task, self.tier)  # raises with the task's tiers
        need(not self.data_file or self.task == "gsm8k", f"data_file is for --task gsm8k only; {self.task} problems "
                                                         "are generated")
        need(bool(self.out), "out is empty: pass an output directory")

    def rows_per_batch(self, device) -> int:
        """``batch_size``, or for 0 the default on ``device`` (a torch device or its name): 1024 samples on the CPU,
        512 on a GPU."""
        import torch

        return self.batch_size or (CPU_BATCH_SIZE if torch.device(device).type == "cpu" else GPU_BATCH_SIZE)


# --- 1. score: problems -> rows --------------------------------------------------------------------------------


def score_problems(model, tokenizer, task, problems: list[dict], *, num_generations: int, seed: int = 0,
                   indices: list[int] | None = None, temperature: float = 1.0, top_p: float = 1.0,
                   max_completion_length: int = MAX_COMPLETION_LENGTH, batch_size: int = 512,
                   prompt_style: str = "base", save_completions: bool = False, fast: bool = False,
                   on_progress=None) -> list[dict]:
    """Sample ``num_generations`` completions of each problem and score them: one row per problem.

    Problem ``indices[j]`` (default ``j``) is sampled with :func:`problem_seed` ``(seed, indices[j])``, so its
    samples do not depend on which problems share the call. A row holds ``index``, ``problem``, ``num_correct``,
    ``rewards``, ``lengths`` (tokens, EOS included), ``finished`` (ended with EOS within the budget), ``seconds``
    (sampling time per problem), for a task that checks written steps (Countdown: ``task.steps_right``)
    ``num_checked`` (right answers whose every written step holds: checked pass@k's count) and, with
    ``save_completions``, ``completions`` (the texts).
    ``on_progress(samples, tokens)`` is called after every decoding step (samples ended, tokens decoded), for
    progress bars. ``fast``: the sampler's fast
    path (:func:`companion.sampler.sample_completions`); off by default, so that the trainers' and pretraining's
    evaluations stay bit for bit what their committed runs recorded.
    """
    from companion import sampler

    indices = list(range(len(problems))) if indices is None else list(indices)
    prompts = [task.prompt(p, style=prompt_style, tokenizer=tokenizer) for p in problems]
    start = time.perf_counter()
    samples = sampler.sample_completions(
        model, tokenizer, prompts, num_generations, seeds=[problem_seed(seed, i) for i in indices],
        max_completion_length=max_completion_length, temperature=temperature, top_p=top_p, batch_size=batch_size,
        fast=fast, on_progress=on_progress)
    seconds = (time.perf_counter() - start) / max(len(problems), 1)
    rows = []
    for index, problem, completions in zip(indices, problems, samples):
        rewards = [task.reward(c.text, problem) for c in completions]
        row = {"index": index, "problem": jsonable(problem), "num_correct": sum(map(is_correct, rewards)),
               "rewards": rewards, "lengths": [c.length for c in completions],
               "finished": [c.finished for c in completions], "seconds": seconds}
        checked = [task.steps_right(c.text) for c in completions]
        if None not in checked:  # a task that checks the written steps: right answers whose every step holds
            row["num_checked"] = sum(is_correct(r) and ok for r, ok in zip(rewards, checked))
        if save_completions:
            row["completions"] = [c.text for c in completions]
        rows.append(row)
    return rows


def perplexity_under(scorer, model, tokenizer, task, problems: list[dict], *, num_generations: int, seed: int = 0,
                     temperature: float = 1.0, top_p: float = 1.0,
                     max_completion_length: int = MAX_COMPLETION_LENGTH, prompts_per_batch: int = 16) -> list[dict]:
    """Sample ``num_generations`` completions of each problem from ``model`` and score each under ``scorer``:
    its perplexity exp(−mean log P_scorer(o_t | q, o_<t)) at temperature 1, Yue et al.'s PPL_base(Y | x) when
    ``scorer`` is the base model (arXiv 2504.13837, their Fig. 6). One row per problem: ``index``, ``perplexity``
    (one per sample), ``correct`` (verifier), ``lengths`` (tokens, EOS included).

    Batch ``b`` (``prompts_per_batch`` problems) is sampled with seed ``seed + b``, so a call is reproducible.
    """
    import torch

    from companion.passk import perplexity
    from companion.rollout import generate, per_token_logps

    if num_generations < 1 or prompts_per_batch < 1:
        raise ValueError(f"need num_generations >= 1 and prompts_per_batch >= 1, got {num_generations}, "
                         f"{prompts_per_batch}")
    rows = []
    for b, start in enumerate(range(0, len(problems), prompts_per_batch)):
        batch = problems[start:start + prompts_per_batch]
        prompts = [task.prompt(p, tokenizer=tokenizer) for p in batch]
        with torch.no_grad():
            rollout = generate(model, tokenizer, prompts, num_generations=num_generations, temperature=temperature,
                               top_p=top_p, max_completion_length=max_completion_length, seed=seed + b,
                               return_logps=False)
            logps = per_token_logps(scorer, rollout.prompt_ids, rollout.prompt_mask, rollout.completion_ids,
                                    rollout.completion_mask)  # (N, T) under the scorer, T = 1
        ppl = perplexity(logps, rollout.completion_mask).tolist()
        lengths = rollout.lengths.tolist()
        for j, problem in enumerate(batch):
            rows_of = range(j * num_generations, (j + 1) * num_generations)
            rows.append({"index": start + j, "perplexity": [ppl[i] for i in rows_of],
                         "correct": [is_correct(task.reward(rollout.texts[i], problem)) for i in rows_of],
                         "lengths": [lengths[i] for i in rows_of]})
    return rows


@contextmanager
def sampling_progress(total: int, *, desc: str, initial: int = 0, disable: bool = False):
    """A tqdm bar over samples with a tokens-per-second readout; yields the ``on_progress`` callback."""
    from tqdm.auto import tqdm

    bar = tqdm(total=total, initial=initial, unit="sample", smoothing=0.05, desc=desc, disable=disable,
               dynamic_ncols=True)
    tokens = 0

    def on_progress(samples: int, new_tokens: int) -> None:
        nonlocal tokens
        tokens += new_tokens
        bar.update(samples)
        bar.set_postfix(tokens_per_s=f"{tokens / max(bar.format_dict['elapsed'], 1e-9):.0f}", refresh=False)

    try:
        yield on_progress
    finally:
        bar.close()


# --- 2. summarise: rows -> one summary -----------------------------------------------------------------------------


def length_summary(lengths) -> dict:
    """Count, mean, spread and percentiles of completion lengths (``{"count": 0}`` when there are none).

    >>> length_summary([10, 20, 30])["median"], length_summary([])
    (20.0, {'count': 0})
    """
    if len(lengths) == 0:
        return {"count": 0}
    a = np.asarray(lengths, dtype=float)
    q = np.percentile(a, [5, 25, 50, 75, 95])
    return {"count": int(a.size), "mean": round(float(a.mean()), 2), "std": round(float(a.std()), 2),
            "min": int(a.min()), "p5": float(q[0]), "p25": float(q[1]), "median": float(q[2]), "p75": float(q[3]),
            "p95": float(q[4]), "max": int(a.max())}


def summarize(rows: list[dict]) -> dict:
    """One summary of scored rows: pass@k curve (bootstrap 95% intervals over problems), coverage, rewards,
    the length distributions of correct and of wrong completions, and sampling speed; when every row has
    ``num_checked``, also ``pass_at_k_checked``: the curve that counts a right answer only when its written steps hold.

    >>> rows = [{"index": 0, "num_correct": 1, "rewards": [1.0, 0.1], "lengths": [10, 30], "finished": [True, True],
    ...          "seconds": 1.0},
    ...         {"index": 1, "num_correct": 0, "rewards": [0.0, 0.0], "lengths": [40, 40], "finished": [False, False],
    ...          "seconds": 1.0}]
    >>> s = summarize(rows)
    >>> [(p["k"], p["estimate"]) for p in s["pass_at_k"]], s["coverage"], s["well_formed_wrong"]
    ([(1, 0.25), (2, 0.5)], 0.5, 0.25)
    >>> s["length_correct"]["mean"], s["length_wrong"]["mean"], s["truncated_fraction"], s["samples_per_s"]
    (10.0, 36.67, 0.5, 2.0)
    """
    from companion.passk import pass_at_k_curve

    if not rows:
        raise RunError("no finished problems to summarise")
    rewards = np.array([row["rewards"] for row in rows], dtype=float)  # (P, n)
    lengths = np.array([row["lengths"] for row in rows], dtype=float)  # (P, n)
    num_problems, n = rewards.shape
    correct = np.vectorize(is_correct, otypes=[bool])(rewards)  # (P, n)
    counts = correct.sum(axis=1).tolist()
    curve = pass_at_k_curve(counts, n, n_bootstrap=N_BOOTSTRAP, seed=0)
    seconds = sum(row["seconds"] for row in rows)
    checked = {}
    if all("num_checked" in row for row in rows):  # the task checks written steps (Countdown)
        checked_curve = pass_at_k_curve([row["num_checked"] for row in rows], n, n_bootstrap=N_BOOTSTRAP, seed=0)
        checked = {"pass_at_k_checked": [point._asdict() for point in checked_curve.values()]}
    return {
        "num_problems": num_problems,
        "num_generations": n,
        "pass_at_k": [point._asdict() for point in curve.values()],
        "accuracy": float(correct.mean()),  # per sample: the same number as pass@1
        "mean_reward": float(rewards.mean()),
        "coverage": float(np.mean([c > 0 for c in counts])),  # problems solved by at least one sample
        "num_solved": int(sum(c > 0 for c in counts)),
        "well_formed_wrong": float(((rewards > 0) & ~correct).mean()),  # a format score without a solve
        "truncated_fraction": float(1 - np.mean([row["finished"] for row in rows])),
        "length": length_summary(lengths.ravel()),
        "length_correct": length_summary(lengths[correct]),
        "length_wrong": length_summary(lengths[~correct]),
        "samples": int(rewards.size),
        "tokens": int(lengths.sum()),
        "sampling_seconds": seconds,
        "samples_per_s": rewards.size / seconds if seconds > 0 else None,
        "tokens_per_s": float(lengths.sum()) / seconds if seconds > 0 else None,
        **checked,
    }


def room_for_rl(rows: list[dict], *, group_size: int = 8, rare: float = 0.1) -> dict:
    """What sharpening the sampled distribution can reach, read from each problem's count c of correct samples
    out of n:

    - ``zero_spread_groups``: the expected share of groups of ``group_size`` samples (drawn without replacement
      from a problem's n) that are all right or all wrong, (C(c, G) + C(n - c, G)) / C(n, G) averaged over
      problems: the groups whose group-normalised advantages are all zero, so GRPO learns nothing from them;
    - ``rarely_solved``: the share of problems solved by some sample but by fewer than ``rare`` of them, and
      ``rarely_solved_share_of_coverage``: the part of pass@n (coverage) those problems make up.

    >>> rows = [{"num_correct": 0, "rewards": [0.0] * 16}, {"num_correct": 1, "rewards": [0.0] * 16},
    ...         {"num_correct": 8, "rewards": [0.0] * 16}]
    >>> r = room_for_rl(rows)
    >>> round(r["zero_spread_groups"], 4), round(r["rarely_solved"], 4), r["rarely_solved_share_of_coverage"]
    (0.5001, 0.3333, 0.5)
    """
    counts = np.array([row["num_correct"] for row in rows])
    n = len(rows[0]["rewards"])
    if group_size > n:
        raise ValueError(f"groups of {group_size} cannot be drawn from {n} samples per problem: sample more")
    zero_spread = [(math.comb(c, group_size) + math.comb(n - c, group_size)) / math.comb(n, group_size)
                   for c in counts.tolist()]
    rarely = (counts > 0) & (counts < rare * n)
    solved = int((counts > 0).sum())
    return {"group_size": group_size, "zero_spread_groups": float(np.mean(zero_spread)), "rare_below": rare,
            "rarely_solved": float(rarely.mean()),
            "rarely_solved_share_of_coverage": float(rarely.sum() / solved) if solved else None}


def pass_at(summary: dict, k: int) -> float | None:
    """The pass@k estimate of a summary, or ``None`` when k was not measured.

    >>> pass_at({"pass_at_k": [{"k": 1, "estimate": 0.25}, {"k": 2, "estimate": 0.5}]}, 2)
    0.5
    """
    return next((point["estimate"] for point in summary["pass_at_k"] if point["k"] == k), None)


# --- companion eval: the resumable run directory -------------------------------------------------------------------


def model_fingerprint(model) -> str:
    """A hash of the model's weights (names, dtypes, shapes and bytes): two runs share rows only if it is equal."""
    import torch

    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        data = tensor.detach().to("cpu").contiguous().reshape(-1)
        digest.update(f"{name} {data.dtype} {tuple(tensor.shape)}\n".encode())
        digest.update(data.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _weight_files(config: EvalConfig) -> str | None:
    """A digest of the weight files ``config.model`` loads from (:func:`companion.models.weight_files_digest`)."""
    from companion.models import weight_files_digest

    return weight_files_digest(config.model)


def _check_weight_files(out: Path, config: EvalConfig) -> None:
    """Refuse to summarise rows again when the files of ``config.model`` changed since they were sampled (a run
    that recorded no digest of its files, or a model without local files, cannot be checked this way)."""
    path = out / MODEL_FILE
    saved = json.loads(path.read_text()).get("files") if path.exists() else None
    now = _weight_files(config) if saved else None
    if saved and now and saved != now:
        raise RunError(f"{out} holds samples of other weights than {config.model!r} has now (its files changed since "
                       "they were sampled): use another --out, or --overwrite to sample these weights")


def _claim_model(out: Path, model, config: EvalConfig, resuming: bool, files: str | None = None) -> None:
    """Write the weights' fingerprint (and ``files``, the digest of the files they came from; for a model known by
    name, where its weights came from), or check that the rows already there were sampled from these weights."""
    from companion.named_models import is_named, provenance

    fingerprint = model_fingerprint(model)
    path = out / MODEL_FILE
    if path.exists():
        saved = json.loads(path.read_text())["fingerprint"]
        if saved != fingerprint:
            raise RunError(f"{out} holds samples of other weights than {config.model!r} has now (fingerprint "
                           f"{saved[:12]} there, {fingerprint[:12]} now): the model changed since. Use another --out, "
                           "or --overwrite to replace that run")
    elif resuming and (out / ROWS_FILE).exists():
        raise RunError(f"{out} holds rows but no {MODEL_FILE}, so which weights sampled them is unknown: use another "
                       "--out, or --overwrite to replace that run")
    claim = {"model": config.model, "fingerprint": fingerprint, **({"files": files} if files else {}),
             **({"source": provenance(config.model)} if is_named(config.model) else {})}
    write_atomically(path, json.dumps(claim, indent=2) + "\n")


def _finished_rows(path: Path, problems: list[dict]) -> dict[int, dict]:
    """The rows already written, by problem index, after checking they belong to these problems."""
    done: dict[int, dict] = {}
    for row in read_jsonl(path, repair=True):
        index = row["index"]
        if index in done:
            raise RunError(f"{path} has two rows for problem {index}: were two runs writing to it at once? "
                           "Rerun with --overwrite")
        if index < len(problems) and row["problem"] != jsonable(problems[index]):
            raise RunError(f"{path}: problem {index} is {row['problem']} there but the task now draws "
                           f"{jsonable(problems[index])} (did the task's generator change?). Rerun with --overwrite")
        done[index] = row
    return done


def _load_problems(config: EvalConfig, task) -> list[dict]:
    options = {"data_file": config.data_file} if config.data_file else {}
    try:
        return task.generate(config.problems, seed=config.problem_seed, split=config.split, **options)
    except (ValueError, RuntimeError, OSError) as error:
        raise RunError(f"cannot draw {config.problems} {config.task} problems ({config.split} split): {error}") from error


def _load_model(config: EvalConfig):
    from companion.models import load_policy

    try:
        return load_policy(config.model, device=config.device)
    except (ValueError, RuntimeError, OSError) as error:
        raise RunError(f"cannot load the model {config.model!r}: {error}") from error


def batch_plan(config: EvalConfig, files, prompt_length: int, batch_size: int, *, dtype_bytes: int = 2):
    """:func:`companion.planner.plan_eval` of a batch of ``batch_size`` samples of this evaluation, for the model
    ``files`` (:func:`companion.models.read_model_files`) describes, with prompts of ``prompt_length`` tokens, in
    half precision (a GPU's) or ``dtype_bytes`` = 4 (the CPU's float32)."""
    from companion.planner import ModelShape, plan_eval

    return plan_eval(ModelShape.from_config(files.config), batch_size=batch_size,
                     num_generations=config.num_generations, prompt_length=prompt_length,
                     completion_length=config.max_completion_length, load_in_4bit=files.load_in_4bit,
                     lora_r=files.lora_r, dtype_bytes=dtype_bytes, fast=config.fast_sampler,
                     top_p=config.top_p if config.temperature > 0 else 1.0)


def gpu_batch_size(config: EvalConfig, files, prompt_length: int, free_bytes: int, *, gpu: str = "the GPU") -> int:
    """Samples per batch on a GPU with ``free_bytes`` free (read after the CUDA context exists): ``batch_size`` if
    the planner fits it, or for 0 the largest of 512, 256, ..., 1 that it fits. Raises :class:`RunError` saying what
    to change when the asked batch, or a batch of one, does not fit."""
    from companion.planner import CONTEXT_BYTES, GIB, largest_fitting_batch

    def need_bytes(batch: int) -> int:
        return batch_plan(config, files, prompt_length, batch).peak - CONTEXT_BYTES  # the context is there already

    largest = largest_fitting_batch(lambda b: need_bytes(b) <= free_bytes, start=config.batch_size or GPU_BATCH_SIZE)
    if largest and (not config.batch_size or largest == config.batch_size):
        return largest
    asked = config.batch_size or 1
    estimate = batch_plan(config, files, prompt_length, asked)
    have = f"{gpu} has {free_bytes / GIB:.2f} GiB"
    if not largest:
        raise RunError(f"evaluating {config.model} needs about {need_bytes(1) / GIB:.2f} GiB with even one sample per "
                       f"batch (weights {estimate.weights / GIB:.2f} GiB) and {have}: lower --max-completion-length, "
                       "or use a GPU with more memory")
    raise RunError(f"--batch-size {asked} needs about {(estimate.peak - CONTEXT_BYTES) / GIB:.2f} GiB (its samples' "
                   f"KV cache and scores: {estimate.sampling / GIB:.2f} GiB) and {have}: use --batch-size {largest} "
                   "(or 0 to let the planner choose; the samples do not depend on the batch)")


def cpu_batch_size(config: EvalConfig, files, prompt_length: int, free_bytes: int) -> int:
    """Samples per batch on the CPU for ``--batch-size 0``: the largest of 1024, 512, ..., 1 whose planned peak
    (float32 weights, the samples' caches and scores) fits in :data:`CPU_MEMORY_SHARE` of ``free_bytes``; 1 when none
    does (the run then meets the machine's own limit, as any other would)."""
    from companion.planner import CONTEXT_BYTES, largest_fitting_batch

    budget = CPU_MEMORY_SHARE * free_bytes
    return largest_fitting_batch(
        lambda b: batch_plan(config, files, prompt_length, b, dtype_bytes=4).peak - CONTEXT_BYTES <= budget,
        start=CPU_BATCH_SIZE) or 1


def _cpu_rows(config: EvalConfig, task, problems: list[dict]) -> int | None:
    """On the CPU with ``--batch-size 0``, the batch :func:`cpu_batch_size` plans in the memory free now, before the
    weights load; None when a batch is given, or the model's files cannot be read without loading it."""
    from companion.models import read_model_files

    free = available_memory()
    files = read_model_files(config.model) if free and not config.batch_size else None
    longest = None if files is None else _planned_prompt_length(config, task, problems, files.tokenizer)
    if longest is None:
        return None
    rows = cpu_batch_size(config, files, longest, free)
    if rows < CPU_BATCH_SIZE:
        print(f"eval: {rows} samples per batch, the most whose caches the planner fits in {CPU_MEMORY_SHARE:.0%} of "
              f"the {free / 2**30:.1f} GiB free (--batch-size sets it)", file=sys.stderr)
    return rows


def _gpu_rows(config: EvalConfig, task, problems: list[dict]) -> int | None:
    """On a CUDA device, the batch the planner fits in its free memory (:func:`gpu_batch_size`), before the weights
    load; None elsewhere, or when the model's config cannot be read without loading it."""
    from companion.models import gpu_budget, resolve_device

    budget = gpu_budget(config.model, resolve_device(config.device))
    longest = None if budget is None else _planned_prompt_length(config, task, problems, budget.files.tokenizer)
    if longest is None:
        return None
    rows = gpu_batch_size(config, budget.files, longest, budget.free_bytes, gpu=budget.gpu)
    if not config.batch_size and rows < GPU_BATCH_SIZE:
        print(f"eval: {rows} samples per batch, the most that the planner fits in {budget.free_bytes / 2**30:.1f} "
              "GiB free (--batch-size sets it)", file=sys.stderr)
    return rows


def _planned_prompt_length(config: EvalConfig, task, problems: list[dict], tokenizer) -> int | None:
    """:func:`longest_prompt` for the planners, or None when a prompt cannot be built (e.g. no chat template: the
    check after loading says so)."""
    try:
        return longest_prompt(config, task, problems, tokenizer)
    except ValueError:
        return None


def longest_prompt(config: EvalConfig, task, problems: list[dict], tokenizer) -> int:
    """Tokens in the longest of ``problems``' prompts, built and encoded as the evaluation builds them (raises
    ValueError when a prompt cannot be built, e.g. ``--prompt-style chat`` without a chat template)."""
    prompts = [task.prompt(p, style=config.prompt_style, tokenizer=tokenizer) for p in problems]
    return max(len(ids) for ids in tokenizer(prompts, add_special_tokens=False)["input_ids"])


def _check_prompts(model, tokenizer, task, problems: list[dict], config: EvalConfig) -> None:
    """Every prompt can be built (a chat template exists) and leaves room for a whole completion."""
    from companion.decode import check_context

    try:
        check_context(model, longest_prompt(config, task, problems, tokenizer), config.max_completion_length)
    except ValueError as error:  # e.g. --prompt-style chat with a tokenizer that has no chat template
        raise RunError(str(error)) from error


def _planned_rows(config: EvalConfig, task, problems: list[dict]) -> int | None:
    """The batch the memory planner chooses on the evaluation's device (None: ``rows_per_batch``'s default)."""
    from companion.models import resolve_device

    if resolve_device(config.device).type == "cuda":
        return _gpu_rows(config, task, problems)
    return _cpu_rows(config, task, problems)


def evaluate(config: EvalConfig, *, model=None, tokenizer=None, progress: bool = True) -> dict:
    """Run (or resume) the evaluation ``config`` describes; returns the summary also written to ``summary.json``.

    ``model`` and ``tokenizer`` evaluate a model already in memory (``config.model`` then only names it);
    otherwise ``config.model`` is loaded with :func:`companion.models.load_policy`. The run directory is locked while
    it runs (:func:`companion.runs.run_lock`): a second evaluation into it is refused, not mixed in.
    """
    from companion.tasks import get_task, tier_options

    if (model is None) != (tokenizer is None):
        raise ValueError("pass both model and tokenizer, or neither (then config.model is loaded)")
    with run_lock(config.out, "companion eval"):
        out, resuming = open_run_dir(config.out, dataclasses.asdict(config), (CONFIG_FILE, MODEL_FILE, ROWS_FILE,
                                     SUMMARY_FILE), overwrite=config.overwrite, may_differ=RESUMABLE_FIELDS,
                                     defaults={f.name: f.default for f in dataclasses.fields(EvalConfig)
                                               if f.default is not dataclasses.MISSING})
        task = get_task(config.task, **tier_options(config.task, config.tier))
        problems = _load_problems(config, task)
        done = _finished_rows(out / ROWS_FILE, problems)
        todo = [i for i in range(len(problems)) if i not in done]
        rows_per_batch, loaded = None, model is None
        if todo:  # the model and the prompts are checked before anything is written: a failed start leaves no run
            if loaded:  # behind that would refuse the corrected command as "a different config"
                rows_per_batch = _planned_rows(config, task, problems)  # what fits, before the weights load
                model, tokenizer = _load_model(config)
            _check_prompts(model, tokenizer, task, problems, config)
            _claim_model(out, model, config, resuming, files=_weight_files(config) if loaded else None)
        elif loaded:  # nothing left to sample: still, these rows must be of the weights config.model names now
            _check_weight_files(out, config)
        save_config(config, out / CONFIG_FILE)
        if todo:
            _score(config, model, tokenizer, task, problems, done, todo, out, rows_per_batch, progress)
        rows = [row for row in load_results(out).rows if row["index"] < len(problems)]
        summary = {"model": config.model, "task": config.task, "split": config.split,
                   "temperature": config.temperature, "top_p": config.top_p, **summarize(rows)}
        write_atomically(out / SUMMARY_FILE, json.dumps(summary, indent=2) + "\n")
        return summary


def _score(config: EvalConfig, model, tokenizer, task, problems: list[dict], done: dict, todo: list[int], out: Path,
           rows_per_batch: int | None, progress: bool) -> None:
    """Sample and score the problems of ``todo``, appending each problem's row to ``problems.jsonl`` as it ends."""
    rows_per_batch = rows_per_batch or config.rows_per_batch(next(model.parameters()).device)
    n = config.num_generations
    size = max(1, rows_per_batch // n)  # problems sampled together: as many as fit in a batch
    with torch_threads(config.num_threads), out.joinpath(ROWS_FILE).open("a") as f, sampling_progress(
            len(problems) * n, initial=(len(problems) - len(todo)) * n, desc=f"eval {config.task}",
            disable=not progress) as on_progress:
        for group in sorted({i // size for i in todo}):
            # The whole group, even a problem already written (rare: only after a crash mid-group, or when
            # --problems grew), so the batch is the uninterrupted run's batch, down to float rounding.
            members = list(range(group * size, min((group + 1) * size, len(problems))))
            redone = any(i in done for i in members)  # then the bar counts only the new rows, once written
            rows = score_problems(model, tokenizer, task, [problems[i] for i in members], num_generations=n,
                                  seed=config.seed, indices=members, temperature=config.temperature,
                                  top_p=config.top_p, max_completion_length=config.max_completion_length,
                                  batch_size=rows_per_batch, prompt_style=config.prompt_style,
                                  save_completions=config.save_completions, fast=config.fast_sampler,
                                  on_progress=None if redone else on_progress)
            for row in rows:
                if row["index"] not in done:
                    append_jsonl(f, row)
                    if redone:
                        on_progress(n, sum(row["lengths"]))


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
        raise RunError(f"{directory} holds no evaluation (no {CONFIG_FILE}); run `companion eval --out {directory}`")
    config = load_config(EvalConfig, directory / CONFIG_FILE)
    rows = sorted(read_jsonl(directory / ROWS_FILE), key=lambda row: row["index"])
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
    except (RunError, OSError) as error:  # bad input; a directory or file that cannot be written
        print(f"companion eval: error: {error}", file=sys.stderr)
        return BAD_INPUT
    except KeyboardInterrupt:
        print(f"\ncompanion eval: interrupted; every finished problem is in {config.out}/{ROWS_FILE}: rerun the same "
              "command to resume", file=sys.stderr)
        return 130
    print(f"{summary['num_problems']} problems x {summary['num_generations']} samples of {summary['model']} on "
          f"{summary['task']}: coverage {summary['coverage']:.3f}, mean reward {summary['mean_reward']:.3f}")
    for point in summary["pass_at_k"]:
        interval = f"  [{point['low']:.3f}, {point['high']:.3f}]" if point["low"] is not None else ""
        print(f"  pass@{point['k']:<5d} {point['estimate']:.3f}{interval}")
    print(f"results in {config.out}/ ({ROWS_FILE}, {SUMMARY_FILE})")
    return 0
