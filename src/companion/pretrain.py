"""Pretraining the CPU world's base model: the noisy-solver corpus, the loop, its evaluation, ``companion pretrain``.

The tiny Qwen2 of :mod:`companion.tiny` learns from scratch on traces of a *noisy* solver
(:mod:`companion.traces`): 1. build the corpus, 2. train on it (the loss on the completions only),
3. save, reload and evaluate what was written on held-out problems (:mod:`companion.evaluate`, the same path
as every other evaluation), 4. write ``metrics.json`` beside the checkpoint.

The shipped checkpoint is rebuilt, bit for bit, by one command::

    companion pretrain --out data/tiny-base --overwrite

Bit for bit needs the same float path. The config fixes the thread count (``num_threads``) and the CPU
instructions the kernels may use (``instruction_set``: torch, MKL and oneDNN pick AVX-512 kernels where the CPU
has them, and those round differently), and the run turns on torch's deterministic algorithms;
``metrics.json`` records the CPU, the kernels in force and the library versions.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import random
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import NamedTuple

import numpy as np
from tqdm.auto import tqdm

from companion.config import (MAX_COMPLETION_LENGTH, add_dataclass_arguments, config_from_args, need, need_finite,
                              save_config)
from companion.runs import BAD_INPUT, RunError, jsonable, open_run_dir, torch_threads, write_atomically
from companion.tiny import DEFAULT_CONTEXT, build_tokenizer, load_tiny, model_config, random_model
from companion.traces import TASKS, Noise

METRICS_FILE = "metrics.json"
CONFIG_FILE = "pretrain_config.json"
FLOAT_PATHS = {
    "avx2": {"ATEN_CPU_CAPABILITY": "avx2", "MKL_ENABLE_INSTRUCTIONS": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2"},
    "native": {},
}
"""Per ``--instruction-set``, the environment variables that cap torch's (ATen), MKL's and oneDNN's kernels.
Each library reads its variable once, when torch loads or at its first call, so they are set before torch
is imported. ``avx2`` runs on every x86-64 CPU of the last decade and gives one model on all of them;
``native`` lets each library use what the CPU has (faster on some, other weights)."""
_WRITTEN = ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
            "special_tokens_map.json", METRICS_FILE, CONFIG_FILE)


# --- the run config ---------------------------------------------------------------------------------------

PRETRAIN_NOISE = Noise(max_attempts=7, guided=0.1, aim=1.0, slip=0.02)
"""The noisy solver the shipped model imitates: up to 7 attempts; 10% of them follow a known solution (the
solver's "intuition", which a model cannot see in the prompt), the others aim their last step at the target
(which it can); 2% of steps miscalculated."""


@dataclass(frozen=True)
class PretrainConfig:
    """Everything ``companion pretrain`` does, resolved; saved next to the checkpoint it produced."""

    out: str = field(default="data/tiny-base", metadata={"help": "directory to write the checkpoint and metrics.json to"})
    overwrite: bool = field(default=False, metadata={"help": "replace an existing run in --out made with another config"})
    seed: int = field(default=0, metadata={"help": "seeds the corpus, the initial weights, the batch order and the eval"})
    num_threads: int = field(default=2, metadata={"help": "torch threads: fixed, since the weights depend on it; two "
                                                "use both cores of the 2-core CPU (bench/bench_pretrain.py); on a "
                                                "busy machine one thread per run wastes less"})
    instruction_set: str = field(default="avx2", metadata={"help": "CPU instructions the kernels may use, fixed since "
                                                         "the weights depend on them: avx2 (the shipped model, the "
                                                         "same on every x86-64 CPU with AVX2) or native"})
    # model
    hidden_size: int = field(default=128, metadata={"help": "width of the residual stream (a multiple of 64, as in "
                                                       "Qwen2.5: 4-bit layers quantise on every CPU)"})
    num_hidden_layers: int = field(default=3, metadata={"help": "transformer blocks"})
    num_attention_heads: int = field(default=4, metadata={"help": "query heads per block"})
    num_key_value_heads: int = field(default=2, metadata={"help": "key/value heads (grouped-query attention, as in Qwen2)"})
    intermediate_size: int = field(default=384, metadata={"help": "width of each block's SwiGLU MLP"})
    context: int = field(default=DEFAULT_CONTEXT, metadata={"help": "context length in characters (prompt + completion)"})
    # corpus
    tasks: tuple[str, ...] = field(default=TASKS, metadata={"help": "tasks of the corpus and the eval"})
    task_weights: tuple[float, ...] = field(default=(0.7, 0.3), metadata={"help": "share of each task in the corpus"})
    num_examples: int = field(default=83_200, metadata={"help": "pretraining examples (prompt + noisy trace)"})
    drill_fraction: float = field(default=0.3, metadata={"help": "share of the examples that are arithmetic drills "
                                                                 "(companion.traces.arithmetic_drill)"})
    traces_per_problem: int = field(default=1, metadata={"help": "noisy traces of each problem, trained in one batch "
                                                               "(its prompt runs once for all of them)"})
    noise: Noise = field(default=PRETRAIN_NOISE, metadata={"help": "the noisy solver's knobs (see companion.traces.Noise)"})
    # optimisation
    batch_size: int = field(default=8, metadata={"help": "examples (traces) per optimizer step; small batches, "
                                                           "many steps: what a 40-minute budget learns most from"})
    learning_rate: float = field(default=3e-3, metadata={"help": "peak AdamW learning rate (linear warmup, cosine decay to 10%)"})
    warmup_steps: int = field(default=200, metadata={"help": "steps of linear learning-rate warmup"})
    weight_decay: float = field(default=0.1, metadata={"help": "AdamW weight decay on matrices (not norms)"})
    # evaluation
    eval_problems: int = field(default=200, metadata={"help": "held-out (test-split) problems per task"})
    eval_num_generations: int = field(default=64, metadata={"help": "samples per problem, the n of pass@k"})
    eval_temperature: float = field(default=1.0, metadata={"help": "sampling temperature of the eval"})
    max_completion_length: int = field(default=MAX_COMPLETION_LENGTH, metadata={"help": "longest completion sampled in the eval, in tokens"})
    eval_batch_size: int = field(default=512, metadata={"help": "completions sampled at once in the eval (memory vs speed)"})

    def __post_init__(self):
        if isinstance(self.noise, dict):  # read back from pretrain_config.json
            object.__setattr__(self, "noise", Noise(**self.noise))
        need_finite(self)
        positive = ("num_threads", "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
                    "intermediate_size", "context", "num_examples", "batch_size", "eval_num_generations",
                    "max_completion_length", "eval_batch_size")
        for name in positive:
            need(getattr(self, name) >= 1, f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        for name in ("warmup_steps", "eval_problems"):
            need(getattr(self, name) >= 0, f"--{name.replace('_', '-')} must be >= 0, got {getattr(self, name)}")
        need(self.instruction_set in FLOAT_PATHS, f"--instruction-set must be one of {', '.join(FLOAT_PATHS)}, got "
                                                  f"{self.instruction_set!r}")
        need(bool(self.tasks) and set(self.tasks) <= set(TASKS) and len(set(self.tasks)) == len(self.tasks),
             f"--tasks {' '.join(self.tasks)}: the tiny model is pretrained on distinct tasks among {', '.join(TASKS)} "
             "(gsm8k has no solver traces: it is the GPU world's task)")
        need(0.0 <= self.drill_fraction < 1.0, f"--drill-fraction is a share in [0, 1), got {self.drill_fraction}")
        need(len(self.task_weights) == len(self.tasks) and min(self.task_weights) > 0,
             f"--task-weights needs one positive weight per task in --tasks {' '.join(self.tasks)}, got "
             f"{self.task_weights}")
        need(self.learning_rate > 0 and self.eval_temperature > 0, "--learning-rate and --eval-temperature must be "
                                                                   "positive")
        need(self.weight_decay >= 0, f"--weight-decay must be >= 0, got {self.weight_decay}")
        need(self.num_examples >= self.batch_size,
             f"--num-examples ({self.num_examples}) must be at least --batch-size ({self.batch_size})")
        need(self.traces_per_problem >= 1 and self.batch_size % self.traces_per_problem == 0,
             f"--batch-size ({self.batch_size}) must be a multiple of --traces-per-problem ({self.traces_per_problem})")
        # The shortest prompt is ~50 characters; a completion budget that leaves less cannot fit any prompt.
        need(self.max_completion_length <= self.context - 50, f"--max-completion-length ({self.max_completion_length}) "
             f"leaves no room for a prompt in a context of {self.context}: lower it or raise --context")
        model_config(build_tokenizer(self.context), **self.model_sizes)  # raises on a shape that cannot work

    @property
    def model_sizes(self) -> dict:
        return dict(hidden_size=self.hidden_size, num_hidden_layers=self.num_hidden_layers,
                    num_attention_heads=self.num_attention_heads, num_key_value_heads=self.num_key_value_heads,
                    intermediate_size=self.intermediate_size, max_position_embeddings=self.context)


# --- 1. the corpus ----------------------------------------------------------------------------------------


def _train_problems(task: str, n: int, seed: int) -> list[dict]:
    """``n`` training-split problems: all distinct while the split lasts, then the same ones again (the
    traces differ, and Countdown numbers are reshuffled, so a repeat is not a copy)."""
    from companion.tasks import countdown, get_task

    if n == 0:
        return []
    if task != "countdown":
        return get_task(task).generate(n, seed=seed, split="train")
    distinct = countdown.generate(min(n, _countdown_train_size()), seed=seed, split="train")
    rng = random.Random(seed)
    problems = list(distinct)
    while len(problems) < n:
        for p in rng.sample(distinct, min(len(distinct), n - len(problems))):
            problems.append({"numbers": rng.sample(p["numbers"], len(p["numbers"])), "target": p["target"]})
    return problems


@lru_cache(maxsize=1)
def _countdown_train_size() -> int:
    from companion.tasks import countdown

    return len(countdown.enumerate_problems(split="train"))


class Group(NamedTuple):
    """One training-split problem with several noisy traces of it: the unit of the corpus."""

    task: str
    problem: dict
    prompt: str
    completions: tuple[str, ...]


def build_corpus(config: PretrainConfig) -> list[Group]:
    """Groups of ``config.traces_per_problem`` noisy-solver traces per training-split problem, and arithmetic
    drills (task ``"arithmetic"``), shuffled: ``config.num_examples`` examples in all, a ``drill_fraction``
    of them drills, the rest shared among the tasks by ``config.task_weights``."""
    from companion import traces

    k = config.traces_per_problem
    total = config.num_examples // k
    drills = round(total * config.drill_fraction)
    shares = np.asarray(config.task_weights) / sum(config.task_weights)
    groups = np.floor(shares * (total - drills)).astype(int)
    groups[0] += total - drills - groups.sum()  # the rounding remainder goes to the first task
    rng = random.Random(config.seed)
    corpus = [Group("arithmetic", {}, traces.DRILL_PROMPT, tuple(traces.arithmetic_drill(rng) for _ in range(k)))
              for _ in range(drills)]
    for t, (task, n) in enumerate(zip(config.tasks, groups.tolist())):
        problems = _train_problems(task, n, config.seed + t)
        # Each problem k times in a row: consecutive calls of the seeded solver give k different traces.
        pairs = traces.examples(task, [p for p in problems for _ in range(k)], seed=config.seed + t, noise=config.noise)
        for i, problem in enumerate(problems):
            chunk = pairs[i * k:(i + 1) * k]
            corpus.append(Group(task, problem, chunk[0][0], tuple(c for _, c in chunk)))
    random.Random(config.seed).shuffle(corpus)
    return corpus


def encode_corpus(tokenizer, corpus: list[Group], context: int) -> list[tuple[list[int], list[list[int]]]]:
    """Per group: the prompt's token ids and each completion's ids with EOS appended.

    Raises ``ValueError`` showing the longest example when one does not fit ``context``.
    """
    prompts = tokenizer([g.prompt for g in corpus], add_special_tokens=False)["input_ids"]
    flat = tokenizer([c for g in corpus for c in g.completions], add_special_tokens=False)["input_ids"]
    encoded, i = [], 0
    for prompt, group in zip(prompts, corpus):
        encoded.append((prompt, [ids + [tokenizer.eos_token_id] for ids in flat[i:i + len(group.completions)]]))
        i += len(group.completions)
    size = [len(p) + max(map(len, cs)) for p, cs in encoded]
    longest = int(np.argmax(size))
    if size[longest] > context:
        group = corpus[longest]
        completion = max(group.completions, key=len)
        raise ValueError(
            f"a {group.task} example of {size[longest]} tokens does not fit the context of {context}: raise "
            f"--context or shorten the traces (lower --max-attempts). The example:\n{group.prompt}{completion}")
    return encoded


def _batches(encoded, groups_per_batch: int, rng: random.Random) -> list[list[int]]:
    """Batches of group indices with similar lengths (less padding), in random order: shuffle, sort within
    windows of 64 batches by length, cut into batches, shuffle the batches."""
    order = list(range(len(encoded)))
    rng.shuffle(order)
    window = 64 * groups_per_batch
    batches = []
    for start in range(0, len(order), window):
        chunk = sorted(order[start:start + window], key=lambda i: (len(encoded[i][0]), max(map(len, encoded[i][1]))))
        batches += [chunk[b:b + groups_per_batch] for b in range(0, len(chunk) - groups_per_batch + 1, groups_per_batch)]
    rng.shuffle(batches)
    return batches


def _collate(encoded, indices, pad_id: int):
    """``(prompt_ids, prompt_mask, completion_ids, completion_mask)`` for the groups ``indices``: each
    prompt repeated once per completion (left padded, (N, P)), completions right padded ((N, T))."""
    import torch

    rows = [(encoded[i][0], c) for i in indices for c in encoded[i][1]]
    P, T = max(len(p) for p, _ in rows), max(len(c) for _, c in rows)
    prompt_ids, prompt_mask = torch.full((len(rows), P), pad_id), torch.zeros((len(rows), P), dtype=torch.long)
    completion_ids, completion_mask = torch.full((len(rows), T), pad_id), torch.zeros((len(rows), T), dtype=torch.long)
    for r, (p, c) in enumerate(rows):
        prompt_ids[r, P - len(p):], prompt_mask[r, P - len(p):] = torch.tensor(p), 1
        completion_ids[r, :len(c)], completion_mask[r, :len(c)] = torch.tensor(c), 1
    return prompt_ids, prompt_mask, completion_ids, completion_mask


# --- 2. training ------------------------------------------------------------------------------------------


@contextmanager
def deterministic(seed: int, num_threads: int):
    """Seed torch, fix the thread count and turn on deterministic algorithms; restore them afterwards."""
    import torch

    strict = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        with torch_threads(num_threads), torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            yield
    finally:
        torch.use_deterministic_algorithms(strict)


def set_float_path(instruction_set: str) -> None:
    """Put the variables of ``instruction_set`` (:data:`FLOAT_PATHS`) into the environment, if torch has not
    loaded yet (once it has, they would not take effect)."""
    if "torch" not in sys.modules:
        os.environ.update(FLOAT_PATHS[instruction_set])


def float_path(instruction_set: str) -> dict:
    """Set (before torch loads) or check (after) the kernels ``instruction_set`` asks for; return what is in
    force: the instruction set, torch's CPU capability and the three variables.

    Raises :class:`~companion.runs.RunError` when torch loaded without the variables, or when this CPU cannot run
    the kernels asked for: the weights would silently differ from the ones the config promises.
    """
    set_float_path(instruction_set)
    import torch

    wanted = FLOAT_PATHS[instruction_set]
    missing = [f"{name}={value}" for name, value in wanted.items() if os.environ.get(name) != value]
    if missing:
        raise RunError(f"--instruction-set {instruction_set} needs {' '.join(missing)} in the environment before "
                       "torch is imported, and torch was imported without: run `companion pretrain` from a shell, "
                       "start Python with those variables set, or pass --instruction-set native (other weights than "
                       "the shipped ones)")
    capability = torch.backends.cpu.get_cpu_capability()
    if wanted and capability != wanted["ATEN_CPU_CAPABILITY"].upper():
        raise RunError(f"this CPU runs torch's {capability} kernels, not {instruction_set.upper()} ones, so it cannot "
                       f"rebuild the {instruction_set} weights: pass --instruction-set native (other weights)")
    return {"instruction_set": instruction_set, "cpu_capability": capability,
            **{name: os.environ.get(name) for name in FLOAT_PATHS["avx2"]}}


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux; ``platform.processor()`` elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def fit(model, tokenizer, corpus: list[Group], config: PretrainConfig, *, progress: bool = True) -> list[float]:
    """Pretrain ``model`` on ``corpus``: one pass, ``config.batch_size`` traces per AdamW step, the loss on
    the completions only (the prompts' numbers are random and cannot be predicted). Returns the loss per step.

    Run inside :func:`deterministic` for reproducible weights.
    """
    import torch

    from companion.rollout import per_token_logps

    encoded = encode_corpus(tokenizer, corpus, config.context)
    batches = _batches(encoded, config.batch_size // config.traces_per_problem, random.Random(config.seed))
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": config.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}],
                                  lr=config.learning_rate, betas=(0.9, 0.95))

    def lr_factor(step: int) -> float:  # linear warmup, then cosine decay to 10% of the peak
        if step < config.warmup_steps:
            return (step + 1) / config.warmup_steps
        progress_ = (step - config.warmup_steps) / max(1, len(batches) - config.warmup_steps)
        return 0.1 + 0.45 * (1 + math.cos(math.pi * progress_))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
    model.train()
    losses = []
    bar = tqdm(batches, desc="pretraining", disable=not progress, dynamic_ncols=True)
    for indices in bar:
        prompt_ids, prompt_mask, completion_ids, completion_mask = _collate(encoded, indices, tokenizer.pad_token_id)
        # The same per-token log-probs the RL trainers use; each prompt runs once for its group of traces.
        logps = per_token_logps(model, prompt_ids, prompt_mask, completion_ids, completion_mask)  # (N, T)
        loss = -(logps * completion_mask).sum() / completion_mask.sum()  # token-mean NLL of the completions
        if not torch.isfinite(loss):
            raise RuntimeError(f"pretraining diverged at step {len(losses)} (loss {loss.item()}): "
                               "lower --learning-rate or raise --warmup-steps")
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if len(losses) % 10 == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-10:]):.3f}")
    bar.close()
    return losses


# --- 3. evaluation ----------------------------------------------------------------------------------------


EVAL_PROBLEM_SEED = 2025
"""Seed of the held-out problem sets, fixed so every model (and every pretraining seed) meets the same ones."""
TARGETS = {"pass@1": (0.10, 0.50), "pass@64": 0.80, "pretrain_minutes": 40.0}
"""What the base model must do (the issue's targets), checked on the shipped checkpoint's metrics."""


def heldout_problems(task: str, n: int = 200, *, seed: int = EVAL_PROBLEM_SEED) -> list[dict]:
    """``n`` test-split problems of ``task``: never in any pretraining corpus (which uses the train split)."""
    from companion.tasks import get_task

    return get_task(task).generate(n, seed=seed, split="test")


# --- 4. the command ---------------------------------------------------------------------------------------


def _comparable(config: dict) -> dict:
    """A run's config without the options that do not change its result."""
    return {k: v for k, v in jsonable(config).items() if k not in ("out", "overwrite")}


def _prepare_out(config: PretrainConfig) -> Path:
    """The output directory, emptied of a previous run's files (a rerun of the same config starts afresh; a
    different one needs ``--overwrite``). Files that no pretraining run writes are left alone."""
    out, _ = open_run_dir(config.out, dataclasses.asdict(config), _WRITTEN, overwrite=config.overwrite,
                          may_differ=("out", "overwrite"), config_file=CONFIG_FILE)
    for name in _WRITTEN:
        (out / name).unlink(missing_ok=True)
    return out


def _check_eval_fits(config: PretrainConfig) -> None:
    """Raise unless every held-out prompt of the eval leaves room for ``max_completion_length`` in the context
    (before the training that a failing eval would waste)."""
    from companion.decode import check_prompts_fit

    tokenizer = build_tokenizer(config.context)
    for task in config.tasks if config.eval_problems else ():
        prompts = [task_prompt(task, p) for p in heldout_problems(task, config.eval_problems)]
        check_prompts_fit(config.context, tokenizer, prompts, config.max_completion_length)


def pretrain(config: PretrainConfig | None = None, *, progress: bool = True) -> dict:
    """Build the tokenizer, corpus and model, pretrain, save, reload and evaluate (``config`` defaults to
    :class:`PretrainConfig`'s defaults). Returns the metrics, which are also written to ``config.out/metrics.json``
    (next to the resolved config and the checkpoint)."""
    if config is None:
        set_float_path(PretrainConfig.instruction_set)  # the default config's checks load torch
        config = PretrainConfig()
    kernels = float_path(config.instruction_set)  # before torch loads, if it has not yet
    import torch
    import transformers

    _check_eval_fits(config)  # before the training it would waste
    out = _prepare_out(config)
    start, cpu_start = time.perf_counter(), time.process_time()
    with deterministic(config.seed, config.num_threads):
        tokenizer = build_tokenizer(config.context)
        corpus = build_corpus(config)
        model = random_model(tokenizer, seed=config.seed, **config.model_sizes)
        losses = fit(model, tokenizer, corpus, config, progress=progress)
    pretrain_seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    save_config(config, out / CONFIG_FILE)

    metrics = {
        "model": {"parameters": sum(p.numel() for p in model.parameters()), **config.model_sizes,
                  "vocab_size": len(tokenizer)},
        "pretrain": {"seconds": round(pretrain_seconds, 1), "cpu_seconds": round(cpu_seconds, 1), "steps": len(losses),
                     "examples": len(losses) * config.batch_size,
                     "tokens_computed": sum(len(g.prompt) + sum(len(c) + 1 for c in g.completions) for g in corpus),
                     "loss_first_10": float(np.mean(losses[:10])), "loss_last_100": float(np.mean(losses[-100:])),
                     "loss_every_50": [round(float(np.mean(losses[i:i + 50])), 4) for i in range(0, len(losses), 50)]},
        "corpus": _corpus_summary(corpus),
        "eval": {},
        "environment": {"python": platform.python_version(), "torch": torch.__version__,
                        "transformers": transformers.__version__, "num_threads": config.num_threads,
                        "machine": platform.machine(), "cpu": cpu_name(), "cpu_count": os.cpu_count(),
                        "float_path": kernels},
        "config": _comparable(dataclasses.asdict(config)),
    }
    metrics["eval"] = evaluate_checkpoint(out, config, progress=progress)
    metrics["targets"] = check_targets(metrics)
    write_atomically(out / METRICS_FILE, json.dumps(metrics, indent=2) + "\n")
    return metrics


def evaluate_checkpoint(directory: str | os.PathLike, config: PretrainConfig, *, progress: bool = True) -> dict:
    """Per task, the summary (:func:`companion.evaluate.summarize`) of the checkpoint in ``directory`` on
    ``config.eval_problems`` held-out problems, sampled as ``config`` says, and the room it leaves for RL
    (:func:`companion.evaluate.room_for_rl`, with greedy decoding's accuracy beside the sampled pass@1).

    It evaluates what was written, reloaded, so the numbers describe the shipped files, not an in-memory model.
    """
    from companion.evaluate import pass_at, room_for_rl, sampling_progress, score_problems, summarize
    from companion.tasks import get_task

    model, tokenizer = load_tiny(directory)
    results = {}
    for k, task in enumerate(config.tasks if config.eval_problems else ()):
        problems = heldout_problems(task, config.eval_problems)
        start = time.perf_counter()
        with deterministic(config.seed, config.num_threads), sampling_progress(
                len(problems) * config.eval_num_generations, desc=f"sampling {task}", disable=not progress) as bar:
            rows = score_problems(model, tokenizer, get_task(task), problems,
                                  num_generations=config.eval_num_generations, seed=config.seed + 1000 * k,
                                  temperature=config.eval_temperature,
                                  max_completion_length=config.max_completion_length,
                                  batch_size=config.eval_batch_size, on_progress=bar)
        seconds = round(time.perf_counter() - start, 1)
        with deterministic(config.seed, config.num_threads):
            greedy = summarize(score_problems(model, tokenizer, get_task(task), problems, num_generations=1,
                                              temperature=0.0, max_completion_length=config.max_completion_length,
                                              batch_size=config.eval_batch_size))
        summary = summarize(rows)
        results[task] = {**summary, "seconds": seconds, "temperature": config.eval_temperature,
                         "problem_seed": EVAL_PROBLEM_SEED,
                         "room_for_rl": {"sampled_pass@1": pass_at(summary, 1),
                                         "greedy_pass@1": greedy["accuracy"], "greedy_length": greedy["length"],
                                         **room_for_rl(rows, group_size=min(8, config.eval_num_generations))}}
    return results


def task_prompt(task: str, problem: dict) -> str:
    """The base-template prompt the tiny model is pretrained and evaluated with."""
    from companion.tasks import prompts

    return prompts.format_prompt(task, problem, style="base")


def _corpus_summary(corpus) -> dict:
    """Per task: examples, the noisy solver's own accuracy (what the model imitates), prompt and completion
    lengths in characters (of correct and of wrong traces)."""
    from companion.evaluate import length_summary
    from companion.tasks import get_task
    from companion.verify import is_correct

    summary = {}
    for task in sorted({g.task for g in corpus} - {"arithmetic"}):
        rows = [(g.problem, g.prompt, c) for g in corpus if g.task == task for c in g.completions]
        correct = [is_correct(get_task(task).reward(c, problem)) for problem, _, c in rows]
        summary[task] = {"examples": len(rows), "solver_accuracy": round(float(np.mean(correct)), 4),
                         "prompt_chars": length_summary([len(p) for _, p, _ in rows]),
                         "completion_chars_correct": length_summary([len(c) for (_, _, c), ok in zip(rows, correct) if ok]),
                         "completion_chars_wrong": length_summary([len(c) for (_, _, c), ok in zip(rows, correct) if not ok])}
    return summary


def check_targets(metrics: dict) -> dict:
    """Which of :data:`TARGETS` the metrics meet, per task (``None`` where the eval did not run)."""
    from companion.evaluate import pass_at

    low, high = TARGETS["pass@1"]
    result = {"pretrain_minutes": {"value": metrics["pretrain"]["seconds"] / 60,
                                   "met": metrics["pretrain"]["seconds"] / 60 <= TARGETS["pretrain_minutes"]}}
    for task, summary in metrics["eval"].items():
        first, most = pass_at(summary, 1), pass_at(summary, 64)
        result[task] = {"pass@1": first, "pass@1_met": low <= first <= high, "pass@64": most,
                        "pass@64_met": None if most is None else most >= TARGETS["pass@64"]}
    return result


def main(argv: list[str] | None = None) -> int:
    """``companion pretrain``: build, pretrain, evaluate and save the tiny base model."""
    parser = argparse.ArgumentParser(
        prog="companion pretrain",
        description="Pretrain the tiny Qwen2 base model on noisy solver traces, evaluate pass@k on held-out "
                    "problems, and write a save_pretrained checkpoint with metrics.json. The defaults rebuild "
                    "the shipped data/tiny-base.")
    parser.add_argument("--dry-run", action="store_true", help="print the resolved config as JSON and stop")
    add_dataclass_arguments(parser, PretrainConfig, skip=("noise",))
    add_dataclass_arguments(parser.add_argument_group("noisy solver (companion.traces.Noise)"), Noise,
                            defaults=PRETRAIN_NOISE)
    args = parser.parse_args(argv)
    if args.instruction_set in FLOAT_PATHS:  # before the config's checks load torch
        set_float_path(args.instruction_set)
    try:
        config = config_from_args(PretrainConfig, args, noise=config_from_args(Noise, args))
    except ValueError as error:
        parser.error(str(error))
    if args.dry_run:
        print(json.dumps(dataclasses.asdict(config), indent=2, sort_keys=True))
        return 0
    try:
        metrics = pretrain(config)
    except ValueError as error:  # RunError among them: a run directory or option that does not fit
        print(f"companion pretrain: error: {error}", file=sys.stderr)
        return BAD_INPUT
    print(f"pretrained {metrics['model']['parameters']:,} parameters in {metrics['pretrain']['seconds'] / 60:.1f} min; "
          f"wrote {config.out}")
    from companion.evaluate import pass_at

    for task, summary in metrics["eval"].items():
        n = summary["num_generations"]
        print(f"{task}: pass@1 {pass_at(summary, 1):.3f}  pass@{n} {pass_at(summary, n):.3f}  median length correct "
              f"{summary['length_correct'].get('median')} / wrong {summary['length_wrong'].get('median')}")
    return 0
