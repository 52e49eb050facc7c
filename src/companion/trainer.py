"""The one training loop: 1. sample → 2. verify → 3. weight → 4. update, for every algorithm of the book.

GRPO, Dr. GRPO, F-ISFT+ and F-ISFT± differ only in phase 3 (how rewards become per-sample weights,
:func:`companion.objectives.sample_weights`) and in the length normaliser of the loss
(:func:`companion.objectives.policy_loss`); everything else is this file, read top to bottom:

* :class:`TrainConfig` — every knob, with a default for the CPU world and a help string (``--help`` is
  generated from it);
* :func:`train` — the loop, with its four numbered phases, held-out evaluation every ``eval_every`` steps,
  a metrics record per step in ``metrics.jsonl``, a checkpoint every ``save_every`` steps and exact resume;
* :func:`main` — ``companion train ...`` on the command line.

A run directory holds ``config.json`` (the resolved config), ``metrics.jsonl`` (one JSON record per step,
append-only), ``checkpoint.pt`` (the last checkpoint: trainable weights, optimizer, scheduler, RNG states,
step and data position) and, at the end, ``policy/`` (the trained model or adapters, loadable with
:func:`companion.models.load_policy`); with ``policy_every``, the policies of earlier steps too
(``policy-step<N>/``).

Each line of ``metrics.jsonl`` is one step: ``reward``, ``accuracy`` (share of correct completions,
:func:`companion.verify.is_correct`), ``frac_zero_spread`` (groups whose rewards are all equal: they get no weight),
``frac_weighted`` (completions with a non-zero weight), ``length``, ``length_correct`` and ``length_wrong``
(mean tokens, EOS included; ``None`` when there is none), ``frac_truncated`` (cut by
``max_completion_length``), ``entropy`` (of the sampling distribution, per token; ``None`` for the teacher's
traces, ``--source teacher``), ``loss``, ``grad_norm``
(before clipping), ``lr`` and :data:`LOSS_STATS` (``kl`` among them), ``frac_wrong_up`` (wrong completions with
a positive weight: a format or graded reward above the group's mean), the wall-clock :data:`TIMING_METRICS`,
and, every ``eval_every`` steps (and at step 0), ``eval_accuracy_greedy`` / ``eval_accuracy_sampled`` on
held-out problems. With ``refresh_every > 1``, ``sampled_at`` (the step whose policy sampled the batch); with
``--algo ppo``, ``value_loss``, ``value_mean`` and ``explained_variance`` (its value head's).

Decisions, and why:

* **One sampled batch, μ updates.** A step samples ``prompts_per_step`` × ``num_generations`` completions
  and takes ``num_iterations`` (μ) optimizer steps on them. π_old is the policy that sampled, and before the
  first update it *is* the current policy, so its log-probs are the first update's forward pass, detached:
  no extra forward, and ρ = 1 exactly on the first update (TRL computes them with an extra pass).
* **Only rows with a weight are run.** Without a KL penalty (β = 0) a completion whose weight is 0 adds
  exactly 0 to the loss, so the update skips it (:func:`rows_in_update`); the loss is rescaled so that its value
  and gradient are those of the full batch (:func:`batch_share`). The same rescaling makes ``micro_batch_size`` (for GPU
  memory) change nothing but memory. The G completions of a prompt share one forward pass of the prompt
  (:func:`companion.rollout.per_token_logps`).
* **Data parallel is one sum.** Under ``accelerate launch`` each process samples its share of the step's prompts
  and the gradients are summed once per optimizer step (:class:`Processes`), with the whole batch's loss
  denominators: the update of the same batch in one process (``tests/test_data_parallel.py``).
* **PPO is the same loop with a weight per token.** ``--algo ppo`` adds a value head on the policy's trunk
  (:class:`companion.rollout.ValueHead`); phase 3 turns each terminal reward into per-token advantages by GAE on the
  sampler's values (:func:`companion.objectives.gae`), and phase 4 adds the head's squared error to the same
  clipped loss. It is chapter 9's one algorithm that breaks the uniform split of the reward (assumption A2).
* **Resume is exact.** N steps straight and N/2 + resume + N/2 give the same ``metrics.jsonl``, bit for bit
  on a CPU, timings aside (``tests/test_trainer.py``): the checkpoint holds every RNG state and the data
  position, evaluation samples with its own seed, and the problem order is a pure function of the seed.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from companion.config import (MAX_COMPLETION_LENGTH, add_dataclass_arguments, config_from_args, explicit_options,
                              load_config, need, save_config)
from companion.objectives import (NORMALIZERS, STD_KINDS, TRAINABLE, gae, policy_loss, resolve_normalizer,
                                  sample_weights, value_loss, weighted_nll, weighted_rows, whiten, whiten_sums,
                                  zero_spread_groups)
from companion.decode import check_prompts_fit
from companion.models import DTYPES
from companion.rollout import Rollout, ValueHead, generate, per_token_logps, per_token_values, teacher_rollout
from companion.planner import EVAL_BATCH_ROWS
from companion.runs import (BAD_INPUT, RunError, append_jsonl, open_run_dir, read_jsonl, torch_threads,
                            write_atomically)
from companion.verify import CORRECT_REWARD, is_correct

SCHEDULERS = ("constant", "linear", "cosine")
SOURCES = ("policy", "teacher")

LOSS_STATS = ("ratio_mean", "clip_ratio/low_mean", "clip_ratio/high_mean", "clip_ratio/region_mean", "kl")
"""Diagnostics of :func:`companion.objectives.policy_loss` in each record: ``None`` on a step where no completion
had a weight (nothing ran through the loss), and ``kl`` only with ``beta > 0``."""

GAP_STATS = ("sft_cosine", "sft_rel_diff")
"""With ``sft_gap_every``, on the steps it measures: the cosine between each update's gradient and the weighted-SFT
gradient of the same batch at the same weights (:func:`companion.objectives.weighted_nll`), and their relative L2
distance, each averaged over the step's ``num_iterations`` updates; ``None`` on a step where no completion had a
weight (the SFT gradient is zero). On-policy with β = 0 they are 1 and 0: chapter 2's collapse."""

TIMING_METRICS = ("step_time", "time_generate", "time_verify", "time_reference", "time_forward", "time_backward",
                  "time_eval", "gen_tokens_per_s", "tokens_per_s")
"""Metrics that measure the machine, not the run: the only fields that differ between identical runs."""


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run. Defaults are the CPU world: the tiny model on Countdown."""

    # what to train
    algo: str = field(default="grpo", metadata={"help": "weighting rule: " + ", ".join(TRAINABLE) + " (ppo: a learned "
                                                         "value head gives each token its own advantage)",
                                                 "choices": tuple(TRAINABLE)})
    task: str = field(default="countdown", metadata={"help": "task to train on: countdown, tinygsm or gsm8k"})
    model: str = field(default="tiny", metadata={"help": "'tiny', a local model directory, or a hub name like Qwen/Qwen2.5-0.5B"})
    lora: bool = field(default=False, metadata={"help": "train LoRA adapters instead of every parameter"})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank"})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA alpha (the update is scaled by alpha / r)"})
    load_in_4bit: bool = field(default=False, metadata={"help": "quantise the base to 4-bit nf4 (needs --lora)"})
    device: str = field(default="auto", metadata={"help": "'auto' (a GPU if there is one), 'cpu' or 'cuda'"})
    dtype: str = field(default="auto", metadata={
        "help": "weights' and 4-bit layers' compute dtype: 'auto' is float32 on a CPU, bfloat16 on a GPU that has "
                "it and float16 on one that does not (a T4); on a CPU a half dtype is taken with --load-in-4bit "
                "only, for the 4-bit layers (slow: about three times float32's step)", "choices": DTYPES})
    num_threads: int = field(default=0, metadata={"help": "torch CPU threads during the run (0 = leave as is); a tiny "
                                                          "model on a busy machine is fastest with 1"})
    num_processes: int = field(default=1, metadata={
        "help": "data-parallel processes, each sampling its share of a step's prompts: set by the launch "
                "(accelerate launch --multi_gpu --num_processes N -m companion.cli train ...); a run resumes only "
                "with the count it started with"})
    # the run
    out: str = field(default="runs/train", metadata={"help": "run directory: config, metrics.jsonl, checkpoint, policy"})
    steps: int = field(default=50, metadata={"help": "training steps (each samples one batch)"})
    seed: int = field(default=0, metadata={"help": "seed of the problem order, sampling and initialisation"})
    train_problems: int = field(default=2000, metadata={"help": "size of the training pool, reshuffled every epoch"})
    data_file: str = field(default="", metadata={
        "help": "gsm8k only: a local JSONL file (question, answer) of training problems instead of the hub's train "
                "split (GSM8K's own release has train.jsonl and test.jsonl)"})
    eval_data_file: str = field(default="", metadata={
        "help": "gsm8k only: a local JSONL file of held-out problems for --eval-every, instead of the hub's test split"})
    # 1. sample
    source: str = field(default="policy", metadata={
        "help": "who writes the completions: 'policy' samples them (RL and F-ISFT), 'teacher' is the task's exact "
                "solver (its clean traces: distillation, which is F-ISFT+ on completions that are all right)",
        "choices": SOURCES})
    prompts_per_step: int = field(default=8, metadata={"help": "distinct problems per step"})
    num_generations: int = field(default=8, metadata={"help": "completions sampled per problem (G)"})
    max_completion_length: int = field(default=MAX_COMPLETION_LENGTH, metadata={"help": "longest completion, in tokens"})
    temperature: float = field(default=1.0, metadata={"help": "sampling temperature (> 0)"})
    top_p: float = field(default=1.0, metadata={"help": "nucleus sampling mass (1 = off)"})
    refresh_every: int = field(default=1, metadata={
        "help": "sample the completions of the next K steps at once, with the policy of that moment, and train on "
                "them over those K steps: 1 is on-policy (every step samples its own), K >= steps one pool sampled "
                "by the initial policy (rejection sampling, then SFT on a static dataset; chapter 9). K > 1 needs an "
                "SFT rule (fisft_plus, fisft_pm)"})
    # 2. verify
    reward: str = field(default="", metadata={
        "help": "reward shape: '' is the task's own; countdown has format (1 / 0.1 well-formed / 0, TinyZero's, its "
                "own), binary (1 / 0) and graded (format plus credit for closeness to the target); the word "
                "problems have binary"})
    # 3. weight
    lam: float = field(default=1.0, metadata={"help": "fisft_pm: weight magnitude of a wrong completion"})
    threshold: float = field(default=CORRECT_REWARD, metadata={
        "help": "fisft_plus, fisft_pm: a completion counts as right for the weighting when its reward >= threshold "
                "(accuracy always counts reward 1.0)"})
    std: str = field(default="sample", metadata={"help": "grpo: group std with G-1 (sample, TRL) or G (population)", "choices": STD_KINDS})
    gamma: float = field(default=1.0, metadata={"help": "ppo: discount per token in the advantage estimate"})
    gae_lambda: float = field(default=0.95, metadata={
        "help": "ppo: GAE's lambda (1: the reward minus the value, Monte Carlo; 0: one-step temporal differences)"})
    value_coef: float = field(default=0.1, metadata={
        "help": "ppo: weight of the value head's squared error in the loss (it shares the policy's trunk)"})
    # 4. update
    normalizer: str = field(default="", metadata={"help": "length normaliser ('': the algorithm's own)",
                                                  "choices": ("",) + NORMALIZERS})
    beta: float = field(default=0.0, metadata={"help": "weight of the KL penalty to the reference (initial) policy"})
    epsilon: float = field(default=0.2, metadata={"help": "clip range of the ratio: [1 - epsilon, 1 + epsilon]"})
    num_iterations: int = field(default=1, metadata={"help": "optimizer updates per sampled batch (mu)"})
    learning_rate: float = field(default=1e-4, metadata={"help": "AdamW learning rate"})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay"})
    lr_scheduler: str = field(default="constant", metadata={"help": "learning-rate schedule after warmup", "choices": SCHEDULERS})
    warmup_steps: int = field(default=0, metadata={"help": "updates of linear warmup from 0"})
    max_grad_norm: float = field(default=1.0, metadata={"help": "clip the gradient to this global norm"})
    micro_batch_size: int = field(default=0, metadata={"help": "completions per forward/backward pass; lower it to fit GPU memory (0 = all)"})
    logit_chunk_size: int = field(default=0, metadata={
        "help": "completion tokens whose logits the update holds at once, the rest recomputed in the backward pass "
                "(the same update, less GPU memory with a large vocabulary; 0 = all)"})
    gradient_checkpointing: bool = field(default=False, metadata={
        "help": "recompute each block's activations in the backward pass instead of keeping them: less GPU memory "
                "for about a third more compute (each completion then runs its prompt again: transformers drops "
                "the shared prompt cache under checkpointing)"})
    # evaluation, checkpoints
    eval_every: int = field(default=10, metadata={"help": "evaluate on held-out problems every N steps (0 = never)"})
    eval_problems: int = field(default=100, metadata={"help": "held-out (test split) problems per evaluation"})
    eval_num_generations: int = field(default=4, metadata={"help": "sampled completions per held-out problem (greedy "
                                                                   "is one more)"})
    eval_batch_size: int = field(default=EVAL_BATCH_ROWS, metadata={
        "help": "held-out completions decoded together (the evaluation's memory grows with it; what is sampled "
                "does not change, up to float rounding)"})
    save_every: int = field(default=10, metadata={"help": "checkpoint every N steps (0 = only at the end)"})
    policy_every: int = field(default=0, metadata={"help": "also keep the policy every N steps, as policy-step<N> "
                                                           "(0 = only the final policy); chapter 7 evaluates them"})
    sft_gap_every: int = field(default=0, metadata={
        "help": "every N steps, also measure how far each update's gradient is from the weighted-SFT gradient of "
                "the same batch (chapter 2's collapse; one more forward and backward per update): sft_cosine and "
                "sft_rel_diff in the record (0 = never)"})

    def _check_data_files(self):
        given = [f"--{name.replace('_', '-')}" for name in ("data_file", "eval_data_file") if getattr(self, name)]
        verb = "read" if len(given) > 1 else "reads"
        need(not given or self.task == "gsm8k", f"{' and '.join(given)} {verb} GSM8K's problems from a file; "
                                                f"{self.task} problems are generated here (drop them, or use --task gsm8k)")
        for name in ("data_file", "eval_data_file"):
            path = getattr(self, name)
            need(not path or Path(path).is_file(), f"--{name.replace('_', '-')} {path}: no such file")
        need(not self.data_file or self.eval_data_file or self.eval_every == 0,
             "--data-file replaces the hub's training problems; evaluating during training needs held-out ones too: "
             "add --eval-data-file (GSM8K's test.jsonl, say), or --eval-every 0")
        need(not (self.data_file and self.eval_data_file)
             or Path(self.data_file).resolve() != Path(self.eval_data_file).resolve(),
             "--data-file and --eval-data-file are the same file: held-out problems must not be the training ones")

    def __post_init__(self):
        from companion.tasks import get_task

        get_task(self.task)  # raises with the list of known tasks
        need(self.algo in TRAINABLE, f"unknown algo {self.algo!r}; choose one of {', '.join(TRAINABLE)}")
        if self.algo == "ppo":
            need(0 <= self.gamma <= 1 and 0 <= self.gae_lambda <= 1,
                 f"gamma and gae_lambda must be in [0, 1], got {self.gamma} and {self.gae_lambda}")
            need(self.value_coef > 0, f"value_coef must be > 0 (ppo's value head learns from it), got {self.value_coef}")
        else:
            changed = [f"--{name.replace('_', '-')}" for name in ("gamma", "gae_lambda", "value_coef")
                       if getattr(self, name) != TrainConfig.__dataclass_fields__[name].default]
            need(not changed, f"{', '.join(changed)} set the value head of --algo ppo; {self.algo} has none (its "
                              f"weights come from the group's rewards): drop them, or use --algo ppo")
        need(self.source in SOURCES, f"source must be one of {', '.join(SOURCES)}, got {self.source!r}")
        if self.source == "teacher":
            from companion.traces import TASKS as TEACHER_TASKS

            need(self.task in TEACHER_TASKS, f"--source teacher needs a task with an exact solver "
                                             f"({', '.join(TEACHER_TASKS)}), got {self.task!r}")
            need(self.algo == "fisft_plus", f"--source teacher trains on the solver's traces, which are all right: "
                                            f"every rule but fisft_plus gives such a group weight 0 (use --algo "
                                            f"fisft_plus: weight 1 on every trace), got --algo {self.algo}")
        need(self.steps >= 1, f"steps must be >= 1, got {self.steps}")
        need(self.prompts_per_step >= 1, f"prompts_per_step must be >= 1, got {self.prompts_per_step}")
        need(self.num_generations >= 2, f"num_generations must be >= 2 (a group needs a reward spread), got {self.num_generations}")
        need(self.max_completion_length >= 1, f"max_completion_length must be >= 1, got {self.max_completion_length}")
        need(self.temperature > 0, f"temperature must be > 0 (greedy completions of a prompt are identical, so every "
                                   f"group would have zero spread), got {self.temperature}")
        need(0 < self.top_p <= 1, f"top_p must be in (0, 1], got {self.top_p}")
        from companion.tasks import reward_options

        reward_options(self.task, self.reward)  # raises with the task's reward shapes
        need(self.refresh_every >= 1, f"refresh_every must be >= 1 (1 = on-policy; K >= steps = one static pool), "
                                      f"got {self.refresh_every}")
        if self.refresh_every > 1:
            need(self.algo in ("fisft_plus", "fisft_pm"),
                 f"refresh_every > 1 trains on samples of an earlier policy, which only the SFT rules weight as they "
                 f"are (fisft_plus, fisft_pm): {self.algo}'s ratio and clip would need that policy's probabilities. "
                 f"Use --algo fisft_plus or --refresh-every 1")
            need(self.source == "policy", "refresh_every > 1 refreshes the policy's samples; the teacher's traces "
                                          "do not depend on the policy: leave --refresh-every at 1 with --source teacher")
        need(self.lam >= 0, f"lam must be >= 0, got {self.lam}")
        need(self.std in STD_KINDS, f"std must be one of {STD_KINDS}, got {self.std!r}")
        resolve_normalizer(self.algo, self.normalizer)  # raises with the known normalisers
        need(self.beta >= 0, f"beta must be >= 0, got {self.beta}")
        need(self.epsilon >= 0, f"epsilon must be >= 0, got {self.epsilon}")
        need(self.num_iterations >= 1, f"num_iterations must be >= 1, got {self.num_iterations}")
        need(self.learning_rate > 0, f"learning_rate must be > 0, got {self.learning_rate}")
        need(self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}")
        need(self.lr_scheduler in SCHEDULERS, f"lr_scheduler must be one of {SCHEDULERS}, got {self.lr_scheduler!r}")
        need(0 <= self.warmup_steps < self.total_updates,
             f"warmup_steps must be in [0, steps * num_iterations = {self.total_updates}), got {self.warmup_steps}")
        need(self.max_grad_norm > 0, f"max_grad_norm must be > 0, got {self.max_grad_norm}")
        need(self.logit_chunk_size >= 0, f"logit_chunk_size must be >= 0 (0 = all at once), got {self.logit_chunk_size}")
        need(self.micro_batch_size >= 0, f"micro_batch_size must be >= 0 (0 = the whole batch), got {self.micro_batch_size}")
        need(self.train_problems >= self.prompts_per_step,
             f"train_problems ({self.train_problems}) must be >= prompts_per_step ({self.prompts_per_step})")
        self._check_data_files()
        negative = [f"{name} must be >= 0 (0 turns it off), got {getattr(self, name)}"
                    for name in ("eval_every", "save_every", "policy_every", "sft_gap_every") if getattr(self, name) < 0]
        need(not negative, "; ".join(negative))
        need(self.eval_problems >= 1 and self.eval_num_generations >= 1 and self.eval_batch_size >= 1,
             "eval_problems, eval_num_generations and eval_batch_size must be >= 1")
        need(self.lora_r >= 1 and self.lora_alpha > 0, f"need lora_r >= 1 and lora_alpha > 0, got {self.lora_r}, {self.lora_alpha}")
        need(not self.load_in_4bit or self.lora, "4-bit weights cannot be trained: add --lora to --load-in-4bit")
        need(self.dtype in DTYPES, f"dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        need(self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:"),
             f"device must be 'auto', 'cpu' or 'cuda', got {self.device!r}")
        need(self.num_threads >= 0, f"num_threads must be >= 0 (0 = torch's default), got {self.num_threads}")
        need(self.num_processes >= 1, f"num_processes must be >= 1, got {self.num_processes}")
        need(bool(self.out), "out must name a run directory")

    @property
    def loss_normalizer(self) -> str:
        """The length normaliser in use: ``normalizer``, or the algorithm's default."""
        return resolve_normalizer(self.algo, self.normalizer)

    @property
    def completions_per_step(self) -> int:
        return self.prompts_per_step * self.num_generations

    @property
    def total_updates(self) -> int:
        return self.steps * self.num_iterations


class TrainingDiverged(RuntimeError):
    """The loss or the gradient stopped being finite; training stopped before applying the bad update."""


@dataclass
class TrainResult:
    """What :func:`train` returns: where the run lives, its metric records, and the trained policy."""

    out: Path
    metrics: list[dict]
    model: object
    tokenizer: object


# --------------------------------------------------------------------------------------------------
# Pieces of the loop
# --------------------------------------------------------------------------------------------------


class ProblemStream:
    """Training problems in a reproducible order: a fixed pool, reshuffled at every epoch.

    ``position`` (problems handed out so far) is all a checkpoint needs to continue the same stream.

    >>> stream = ProblemStream(["a", "b", "c"], seed=0)
    >>> first = stream.take(2) + stream.take(2)
    >>> again = ProblemStream(["a", "b", "c"], seed=0, position=2).take(2)
    >>> first[2:] == again, stream.position
    (True, 4)
    """

    def __init__(self, problems: list, *, seed: int, position: int = 0):
        self.problems, self.seed, self.position = problems, seed, position

    def _order(self, epoch: int) -> list[int]:
        order = list(range(len(self.problems)))
        random.Random(self.seed * 1_000_003 + epoch).shuffle(order)
        return order

    def take(self, n: int) -> list:
        batch = []
        for _ in range(n):
            epoch, index = divmod(self.position, len(self.problems))
            batch.append(self.problems[self._order(epoch)[index]])
            self.position += 1
        return batch


def lr_factor(update: int, *, total: int, warmup: int, kind: str) -> float:
    """Multiplier of the learning rate at optimizer update ``update`` (0-based): linear warmup, then a shape.

    >>> [lr_factor(u, total=4, warmup=2, kind="linear") for u in range(4)]
    [0.0, 0.5, 1.0, 0.5]
    >>> lr_factor(3, total=4, warmup=0, kind="constant")
    1.0
    """
    if update < warmup:
        return update / warmup
    progress = (update - warmup) / max(1, total - warmup)
    if kind == "linear":
        return 1.0 - progress
    if kind == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    return 1.0


def batch_share(normalizer: str, completion_mask: torch.Tensor, weights: torch.Tensor, rows: torch.Tensor,
                total: float | None = None) -> float:
    """The part of the full batch's loss denominator that ``rows`` carry.

    :func:`companion.objectives.policy_loss` averages over the rows it is given; multiplied by this share, the
    losses of disjoint row subsets add up to the loss of the whole batch (rows left out must add 0, i.e. have
    weight 0 and no KL term). (N, T), (N,), (n,) -> float. ``total``: the denominator of a batch larger than
    this one (:func:`share_denominator` summed over data-parallel processes); by default, this batch's own.

    >>> mask = torch.tensor([[1, 1, 0], [1, 0, 0], [1, 1, 1], [1, 0, 0]])
    >>> w = torch.tensor([1., 0., -1., 0.])
    >>> [round(batch_share(n, mask, w, torch.tensor([0, 2])), 4) for n in ("sequence", "token", "constant", "kept_token")]
    [0.5, 0.7143, 0.5, 1.0]
    """
    if normalizer in ("sequence", "constant"):
        return len(rows) / (completion_mask.shape[0] if total is None else total)
    counted = _counted(normalizer, completion_mask, weights)
    denominator = counted.sum() if total is None else torch.tensor(int(total), dtype=counted.dtype)
    return (counted[rows].sum() / denominator.clamp(min=1)).item()


def share_denominator(normalizer: str, completion_mask: torch.Tensor, weights: torch.Tensor) -> int:
    """The whole batch's loss denominator under ``normalizer``: its rows, its tokens, or the tokens of its weighted
    rows. Over data-parallel processes, the sum of theirs is the denominator of the batch they sample together."""
    if normalizer in ("sequence", "constant"):
        return completion_mask.shape[0]
    return int(_counted(normalizer, completion_mask, weights).sum().item())


def _counted(normalizer: str, mask: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    return mask if normalizer == "token" else mask * weighted_rows(weights).unsqueeze(1).to(mask.dtype)  # kept_token



class Processes:
    """The processes that train one run together: this one alone, or the data-parallel ones that ``accelerate
    launch`` (or ``torchrun``) started, one per GPU (gloo processes on a CPU).

    Each process samples its own share of a step's prompts and runs its share of the update; the gradients are
    summed over processes before clipping and the optimizer step, which every process then takes alike, so the
    weights stay the same everywhere. The communication is accelerate's (``reduce``, ``gather``, ``broadcast``).
    Why not DDP (``accelerator.prepare(model)``): the update runs only the rows with a weight (:func:`rows_in_update`),
    so processes run different numbers of micro-batches, and DDP's per-backward all-reduce would wait forever for
    the process with fewer; one sum of the gradients per optimizer step does not.
    """

    def __init__(self, world: int = 1, rank: int = 0, state=None):
        self.world, self.rank, self.state = world, rank, state

    @classmethod
    def launched(cls, device: torch.device) -> "Processes":
        """The processes of this launch: one, unless a launcher set ``WORLD_SIZE`` above 1."""
        if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
            return cls()
        from accelerate import PartialState

        state = PartialState(cpu=device.type == "cpu")
        return cls(state.num_processes, state.process_index, state)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def device(self) -> torch.device | None:
        """This process's GPU under a multi-GPU launch (each process its own), else None."""
        if self.state is None or self.state.device.type != "cuda":
            return None
        return self.state.device

    def sum(self, values: torch.Tensor) -> torch.Tensor:
        """The element-wise sum over processes (``values`` itself for one)."""
        if self.world == 1:
            return values
        from accelerate.utils import reduce

        return reduce(values, reduction="sum")

    def gather(self, values: torch.Tensor) -> torch.Tensor:
        """Every process's ``values`` (the same shape on each), concatenated along dim 0 in process order."""
        if self.world == 1:
            return values
        from accelerate.utils import gather

        return gather(values)

    def gather_object(self, value) -> list:
        if self.world == 1:
            return [value]
        from accelerate.utils import gather_object

        return gather_object([value])

    def broadcast_(self, tensors) -> None:
        """Overwrite each tensor with the main process's (in place)."""
        if self.world == 1:
            return
        from accelerate.utils import broadcast

        for t in tensors:
            t.data.copy_(broadcast(t.data.contiguous(), from_process=0))

    def sum_gradients_(self, params: list) -> None:
        """Replace each parameter's gradient by its sum over processes: one all-reduce of all of them."""
        if self.world == 1:
            return
        flat = self.sum(torch.cat([p.grad.reshape(-1) for p in params]))
        offset = 0
        for p in params:
            p.grad.copy_(flat[offset:offset + p.grad.numel()].view_as(p.grad))
            offset += p.grad.numel()

    def wait(self) -> None:
        if self.world > 1:
            self.state.wait_for_everyone()


SINGLE = Processes()


def check_processes(config: "TrainConfig", processes: Processes) -> "TrainConfig":
    """The config with the launch's process count, after checking that a step's prompts split evenly."""
    need(config.num_processes in (1, processes.world),
         f"the run is set for {config.num_processes} data-parallel processes (--num-processes, or the config.json "
         f"of a run being resumed) but this launch started {processes.world}: launch {config.num_processes} "
         f"(accelerate launch --multi_gpu --num_processes {config.num_processes} -m companion.cli train ...), or "
         f"leave --num-processes out of a new run (the launch sets it)")
    need(config.refresh_every == 1 or processes.world == 1,
         f"refresh_every > 1 runs in one process (its pool of samples is not split over processes): launch one "
         f"process, or use --refresh-every 1 across {processes.world}")
    need(config.prompts_per_step % processes.world == 0,
         f"prompts_per_step ({config.prompts_per_step}) must split evenly over the {processes.world} processes, "
         f"each sampling its own prompts: use a multiple of {processes.world}")
    return dataclasses.replace(config, num_processes=processes.world)


def _mean(values: torch.Tensor) -> float | None:
    return values.float().mean().item() if values.numel() else None


def heldout_accuracy(model, tokenizer, task, problems: list, *, max_completion_length: int, temperature: float = 1.0,
                     top_p: float = 1.0, num_generations: int = 4, seed: int = 0,
                     batch_size: int = EVAL_BATCH_ROWS) -> dict:
    """Accuracy on ``problems``: greedy (temperature 0) and sampled (``num_generations`` completions each), through
    the package's one evaluation path (:mod:`companion.evaluate`). Sampling uses its own seeded generators, so
    evaluating never moves the caller's random stream. ``batch_size``: completions decoded together."""
    from companion.evaluate import score_problems, summarize

    def summary(n: int, temp: float) -> dict:
        return summarize(score_problems(model, tokenizer, task, problems, num_generations=n, seed=seed,
                                        temperature=temp, top_p=top_p, max_completion_length=max_completion_length,
                                        batch_size=batch_size))

    greedy, sampled = summary(1, 0.0), summary(num_generations, temperature)
    return {
        "eval_accuracy_greedy": greedy["accuracy"],
        "eval_accuracy_sampled": sampled["accuracy"],
        "eval_reward_sampled": sampled["mean_reward"],
        "eval_length_greedy": greedy["length"]["mean"],
    }


def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: Path, *, model, optimizer, scheduler, step: int, data_position: int,
                    processes: Processes = SINGLE, pool: list | None = None, value_head=None) -> None:
    """Everything exact resume needs, written atomically (a crash mid-write leaves the previous checkpoint).
    Over several processes, every one must call it (each adds its RNG states); the main process writes.
    ``pool``: with ``refresh_every > 1``, the sampled batches not trained on yet; ``value_head``: ppo's."""
    from companion.models import trainable_state_dict

    rng = _rng_state()
    if processes.world > 1:
        rng = {"by_process": processes.gather_object(rng)}
    if not processes.is_main:
        return
    state = dict(step=step, data_position=data_position, model=trainable_state_dict(model),
                 optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(), rng=rng)
    if pool is not None:
        state["pool"] = pool
    if value_head is not None:
        state["value_head"] = {k: v.detach().clone() for k, v in value_head.state_dict().items()}
    partial = path.with_name(path.name + ".partial")
    torch.save(state, partial)
    partial.replace(path)


def load_checkpoint(path: Path, *, model, optimizer, scheduler, processes: Processes = SINGLE,
                    value_head=None) -> dict:
    """Restore a checkpoint written by :func:`save_checkpoint`; returns ``{"step", "data_position", "pool"}``."""
    state = torch.load(path, map_location="cpu", weights_only=False)  # our own file: RNG states are pickled
    saved = len(state["rng"]["by_process"]) if "by_process" in state["rng"] else 1
    if saved != processes.world:
        raise RunError(f"{path} was saved by {saved} process(es) and this launch has {processes.world}: each "
                       f"process resumes its own sampling stream, so resume with {saved}")
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    if set(state["model"]) != trainable:
        raise RunError(f"{path} holds weights for other parameters than this model trains "
                       "(full-parameter vs LoRA, or another model): resume with the run's own config")
    if (value_head is None) != ("value_head" not in state):
        raise RunError(f"{path} was saved by a run {'with' if 'value_head' in state else 'without'} a value head "
                       "(--algo ppo): resume with the run's own config")
    device = next(model.parameters()).device
    with torch.no_grad():
        params = dict(model.named_parameters())
        for name, value in state["model"].items():
            params[name].copy_(value.to(device))
    if value_head is not None:
        value_head.load_state_dict(state["value_head"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    _set_rng_state(state["rng"]["by_process"][processes.rank] if saved > 1 else state["rng"])
    return {"step": state["step"], "data_position": state["data_position"], "pool": state.get("pool", [])}


RUN_FILES = ("config.json", "metrics.jsonl", "checkpoint.pt", "policy")


def _prepare_run_dir(config: TrainConfig, *, resume: bool, overwrite: bool) -> Path:
    snapshots = tuple(p.name for p in Path(config.out).glob("policy-step*"))  # --policy-every's, replaced too
    out, _ = open_run_dir(config.out, dataclasses.asdict(config), RUN_FILES + snapshots, overwrite=overwrite,
                          resume=resume,
                          # the same directory, however its path is spelled; the evaluation's batch changes
                          # only its memory and float rounding
                          may_differ=("steps", "out", "eval_batch_size"),
                          defaults={f.name: f.default for f in dataclasses.fields(TrainConfig)
                                    if f.default is not dataclasses.MISSING})
    if resume and not (out / "checkpoint.pt").exists():
        raise RunError(f"nothing to resume in {out}: it has no checkpoint.pt (start a new run there with --overwrite)")
    return out


def memory_plan(config: TrainConfig, model_config, prompt_length: int):
    """:func:`companion.planner.plan` of one step of this run, for a model of ``model_config``'s shapes."""
    from companion.planner import ModelShape, plan

    return plan(ModelShape.from_config(model_config), prompts_per_step=config.prompts_per_step,
                num_generations=config.num_generations, prompt_length=prompt_length,
                completion_length=config.max_completion_length, micro_batch_size=config.micro_batch_size,
                load_in_4bit=config.load_in_4bit, lora_r=config.lora_r if config.lora else None,
                gradient_checkpointing=config.gradient_checkpointing, dtype_bytes=2,
                logit_chunk=config.logit_chunk_size, top_p=config.top_p,
                **(dict(eval_problems=config.eval_problems, eval_num_generations=config.eval_num_generations,
                        eval_batch_size=config.eval_batch_size) if config.eval_every else {}))


def _file_option(path: str) -> dict:
    return {"data_file": path} if path else {}


def run_problems(config: TrainConfig):
    """The run's task (with its reward shape), training pool and held-out problems (none without ``eval_every``);
    GSM8K's come from the hub, or from ``data_file`` and ``eval_data_file``."""
    from companion.tasks import get_task, reward_options

    task = get_task(config.task, **reward_options(config.task, config.reward))
    pool = task.generate(config.train_problems, seed=config.seed, split="train", **_file_option(config.data_file))
    held_out = (task.generate(config.eval_problems, seed=0, split="test", **_file_option(config.eval_data_file))
                if config.eval_every else [])
    return task, pool, held_out


def longest_prompt(config: TrainConfig, tokenizer) -> int:
    """Tokens in the longest prompt among (the first 200 of) this run's training problems: the prompt length
    :func:`memory_plan` is asked with."""
    from companion.tasks import get_task

    task = get_task(config.task)
    prompts = [task.prompt(p) for p in task.generate(min(config.train_problems, 200), seed=config.seed,
                                                     split="train", **_file_option(config.data_file))]
    return max(len(tokenizer(p, add_special_tokens=False)["input_ids"]) for p in prompts)


def check_gpu_memory(config: TrainConfig, free_bytes: int, *, gpu: str = "the GPU") -> None:
    """Stop before the weights load when the planner's estimate of a step does not fit in ``free_bytes``.

    ``free_bytes`` is what ``torch.cuda.mem_get_info`` reports, after this process's CUDA context exists, so the
    context (:data:`companion.planner.CONTEXT_BYTES`, part of the plan's peak) is not asked for a second time.
    Reads only the model's config and tokenizer (:func:`companion.models.read_model_files`); when they cannot be
    read here, the check is left to the loader, whose own error says what to do.
    """
    from companion.models import read_model_files
    from companion.planner import CONTEXT_BYTES, GIB, check_fits, largest_fitting_batch

    files = read_model_files(config.model)
    if files is None:
        return
    if files.lora_r is not None:  # saved adapters, trained further: plan them, on their base as it was saved
        config = dataclasses.replace(config, lora=True, lora_r=files.lora_r,
                                     load_in_4bit=config.load_in_4bit or files.load_in_4bit)
    prompt = longest_prompt(config, files.tokenizer)

    def planned(run: TrainConfig):
        estimate = memory_plan(run, files.config, prompt)
        return dataclasses.replace(estimate, overhead=estimate.overhead - CONTEXT_BYTES,
                                   peak=estimate.peak - CONTEXT_BYTES)  # the context is already there

    estimate = planned(config)
    what = (f"training {config.model} ({config.prompts_per_step} x {config.num_generations} completions of up to "
            f"{config.max_completion_length} tokens per step)")
    if estimate.peak > free_bytes and estimate.evaluation == max(estimate.parts.values()):
        fitting = largest_fitting_batch(
            lambda b: planned(dataclasses.replace(config, eval_batch_size=b)).peak <= free_bytes,
            start=config.eval_batch_size)
        if fitting:  # the evaluation's batch alone decides: say which one fits
            raise ValueError(f"{what} needs about {estimate.peak / GIB:.2f} GiB at its peak (the held-out evaluation, "
                             f"{config.eval_batch_size} completions at a time, is the largest part: "
                             f"{estimate.evaluation / GIB:.2f} GiB) and {gpu} has {free_bytes / GIB:.2f} GiB: use "
                             f"--eval-batch-size {fitting} (the same samples, decoded fewer at a time)")
        # no evaluation batch is enough: what else must change, as planned with the smallest one
        estimate, what = planned(dataclasses.replace(config, eval_batch_size=1)), what + " even with --eval-batch-size 1"
    check_fits(estimate, free_bytes, gpu=gpu, in_4bit=config.load_in_4bit, what=what)


def _policy(config: TrainConfig, model, tokenizer, device: torch.device | None = None):
    """The model to train: the one passed in, or the one ``config.model`` names (on ``device``, or the config's)."""
    from companion.models import LoraSettings, load_policy, resolve_device, resolve_dtype

    if model is None:
        device = device or resolve_device(config.device)
        # refused here, before anything loads
        dtype = resolve_dtype(config.dtype, device, load_in_4bit=config.load_in_4bit)
        if device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(device)
            check_gpu_memory(config, free, gpu=f"{torch.cuda.get_device_name(device)} (free memory)")
        lora = LoraSettings(r=config.lora_r, alpha=config.lora_alpha) if config.lora else None
        return load_policy(config.model, load_in_4bit=config.load_in_4bit, lora=lora, device=device, dtype=dtype)
    if tokenizer is None:
        raise ValueError("train(model=...) needs its tokenizer too")
    if config.device != "auto":
        model = model.to(config.device)
    return model, tokenizer


# --------------------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------------------


def train(config: TrainConfig, *, model=None, tokenizer=None, resume: bool = False, overwrite: bool = False,
          until_step: int | None = None, progress: bool = True) -> TrainResult:
    """Train a policy with ``config`` and write the run to ``config.out``.

    Args:
        config: the run (see :class:`TrainConfig`).
        model, tokenizer: a policy to train instead of loading ``config.model`` (the book passes its own).
        resume: continue the run in ``config.out`` from its checkpoint.
        overwrite: replace a run already in ``config.out`` (otherwise that is an error).
        until_step: stop after this step, checkpointing it, as if interrupted; ``resume`` continues.
        progress: show a tqdm bar.
    """
    with torch_threads(config.num_threads):
        return _train(config, model, tokenizer, resume=resume, overwrite=overwrite, until_step=until_step,
                      progress=progress)


def _train(config: TrainConfig, model, tokenizer, *, resume: bool, overwrite: bool, until_step: int | None,
           progress: bool) -> TrainResult:
    from companion.models import is_lora, resolve_device

    processes = Processes.launched(resolve_device(config.device) if model is None else next(model.parameters()).device)
    config = check_processes(config, processes)
    # First, so that problems that cannot be had (GSM8K with no hub) stop the run before it writes or loads
    # anything. No task draws from the global generators, so this changes no seeded stream.
    task, pool, eval_set = run_problems(config)
    if processes.is_main:
        out = _prepare_run_dir(config, resume=resume, overwrite=overwrite)
    processes.wait()
    out = Path(config.out)
    metrics_path, checkpoint_path = out / "metrics.jsonl", out / "checkpoint.pt"

    random.seed(config.seed)
    np.random.seed(config.seed)
    torch.manual_seed(config.seed)
    model, tokenizer = _policy(config, model, tokenizer, processes.device)
    if config.gradient_checkpointing:
        # Active only in train mode, so sampling (which decodes in eval mode, with its cache) is untouched.
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if is_lora(model):
            model.enable_input_require_grads()  # a frozen embedding's output must carry gradients into block 1
    device = next(model.parameters()).device
    # With LoRA the reference is the base with adapters off; otherwise a frozen copy of the initial weights.
    reference = None
    if config.beta > 0 and not is_lora(model):
        import copy

        reference = copy.deepcopy(model).eval().requires_grad_(False)

    stream = ProblemStream(pool, seed=config.seed)
    check_prompts_fit(model, tokenizer, [task.prompt(p) for p in stream.problems + eval_set],
                      config.max_completion_length)

    value_head = None
    if config.algo == "ppo":  # its critic, on the policy's trunk (float32, like the LoRA weights)
        value_head = ValueHead(model.config.hidden_size).to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    params += [] if value_head is None else list(value_head.parameters())
    processes.broadcast_(params)  # the same start everywhere, whatever each process's initialisation did
    if processes.world > 1:  # each process samples with its own stream (one process keeps the run's seed alone)
        torch.manual_seed(config.seed * processes.world + processes.rank)
    optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda u: lr_factor(
        u, total=config.total_updates, warmup=config.warmup_steps, kind=config.lr_scheduler))

    if processes.is_main:
        save_config(config, out / "config.json")  # only now: a run that failed to start leaves nothing to clobber
    start = 0
    pool: list[dict] = []  # refresh_every > 1: batches sampled ahead, each {"problems", "rollout", ..., "sampled_at"}
    if resume:
        state = load_checkpoint(checkpoint_path, model=model, optimizer=optimizer, scheduler=scheduler,
                                processes=processes, value_head=value_head)
        start, stream.position = state["step"], state["data_position"]
        pool = [dict(b, rollout=_rollout_to(b["rollout"], device), weights=b["weights"].to(device))
                for b in state["pool"]]
        if processes.is_main:
            # Records after the checkpoint belong to the interrupted attempt; the resumed run writes them again.
            kept = [r for r in read_jsonl(metrics_path) if r["step"] <= start]
            write_atomically(metrics_path, "".join(json.dumps(r, allow_nan=False) + "\n" for r in kept))
    elif config.eval_every and processes.is_main:
        _write_record(metrics_path, {"step": 0, **_evaluate(config, model, tokenizer, task, eval_set, step=0)})
    processes.wait()
    last_saved = start if resume else None

    G, normalizer = config.num_generations, config.loss_normalizer
    stop = config.steps if until_step is None else min(until_step, config.steps)
    bar = tqdm(total=config.steps, initial=start, desc=f"{config.algo} on {config.task}",
               disable=not (progress and processes.is_main))
    model.train()
    for step in range(start + 1, stop + 1):
        t_step = time.perf_counter()
        timing = dict.fromkeys(("time_reference", "time_forward", "time_backward", "time_eval"), 0.0)

        # 1-3. sample, verify, weight: this step's batch (with refresh_every > 1, taken from a pool sampled ahead)
        timing["time_generate"] = timing["time_verify"] = 0.0
        if config.refresh_every == 1:
            batch = _sample(config, model, tokenizer, task, stream, processes, device, timing, step=step)
            generated = batch["rollout"].completion_mask.sum()
        else:
            if not pool:  # sample the next K steps' batches with the policy of now
                pool = [_sample(config, model, tokenizer, task, stream, processes, device, timing, step=step)
                        for _ in range(min(config.refresh_every, config.steps - step + 1))]
                generated = sum(b["rollout"].completion_mask.sum() for b in pool)
            else:
                generated = None
            batch = pool.pop(0)
        rollout, rewards, weights = batch["rollout"], batch["rewards"], batch["weights"]
        returns, critic = None, {}
        if value_head is not None:  # 3'. ppo: per-token advantages from the sampler's values (GAE), whitened
            weights, returns, critic = _advantages(config, model, value_head, rollout, rewards, processes, timing)

        # 4. update: μ optimizer steps on the weighted log-likelihood of the batch (clipped, maybe KL-penalised)
        lr = scheduler.get_last_lr()[0]
        update = _update(config, model, reference, optimizer, scheduler, params, rollout, weights, normalizer,
                         timing, step=step, last_saved=last_saved, out=out, processes=processes,
                         value_head=value_head, returns=returns)

        timing["step_time"] = time.perf_counter() - t_step  # sample to update; evaluation is timed apart
        tokens = processes.sum(rollout.completion_mask.sum().reshape(1)).item()  # every process's
        timing["gen_tokens_per_s"] = (None if generated is None else
                                      processes.sum(generated.reshape(1)).item() / timing["time_generate"])
        timing["tokens_per_s"] = tokens / timing["step_time"]
        record = {"step": step, **_rollout_metrics(rollout, rewards, G, processes),
                  "frac_wrong_up": _wrong_up(rewards, weights, processes), **update, **critic, "lr": lr}
        if config.refresh_every > 1:
            record["sampled_at"] = batch["sampled_at"]
        if config.eval_every and (step % config.eval_every == 0 or step == config.steps) and processes.is_main:
            t = time.perf_counter()
            record.update(_evaluate(config, model, tokenizer, task, eval_set, step=step))
            timing["time_eval"] = time.perf_counter() - t
        record.update(timing)
        if processes.is_main:
            _write_record(metrics_path, record)
        if config.policy_every and step % config.policy_every == 0 and step < config.steps and processes.is_main:
            from companion.models import save_policy

            save_policy(model, tokenizer, out / f"policy-step{step}", base=config.model,
                        load_in_4bit=config.load_in_4bit)
        if (config.save_every and step % config.save_every == 0) or step == stop:
            save_checkpoint(checkpoint_path, model=model, optimizer=optimizer, scheduler=scheduler, step=step,
                            data_position=stream.position, processes=processes,
                            pool=pool if config.refresh_every > 1 else None, value_head=value_head)
            last_saved = step
        processes.wait()
        bar.update(1)
        bar.set_postfix(reward=f"{record['reward']:.3f}", acc=f"{record['accuracy']:.2f}",
                        zero_spread=f"{record['frac_zero_spread']:.2f}")
    bar.close()

    if stop == config.steps and processes.is_main:
        from companion.models import save_policy

        save_policy(model, tokenizer, out / "policy", base=config.model, load_in_4bit=config.load_in_4bit)
    processes.wait()
    return TrainResult(out=out, metrics=read_jsonl(metrics_path), model=model, tokenizer=tokenizer)


def _sample(config: TrainConfig, model, tokenizer, task, stream: ProblemStream, processes: Processes, device,
            timing: dict, *, step: int) -> dict:
    """Phases 1-3 for one step's prompts: G completions of each of this process's problems, with the current policy
    (or the teacher's), their rewards and weights. Adds to ``timing``'s ``time_generate`` and ``time_verify``."""
    G = config.num_generations
    share = config.prompts_per_step // processes.world  # this process's prompts of each step

    # 1. sample: G completions for each of this step's problems, with the current policy (or the teacher's)
    #    (over several processes, every one draws the step's problems and samples its own share of them)
    problems = stream.take(config.prompts_per_step)[processes.rank * share:(processes.rank + 1) * share]
    prompts = [task.prompt(p) for p in problems]
    t = time.perf_counter()
    if config.source == "teacher":
        rollout = teacher_rollout(tokenizer, config.task, problems, prompts, num_generations=G,
                                  max_completion_length=config.max_completion_length,
                                  seed=(config.seed * 1_000_003 + step) * processes.world + processes.rank,
                                  device=device)
    else:
        rollout = generate(model, tokenizer, prompts, num_generations=G,
                           max_completion_length=config.max_completion_length, temperature=config.temperature,
                           top_p=config.top_p)
    timing["time_generate"] += time.perf_counter() - t

    # 2. verify: one reward per completion, from the task's verifier
    t = time.perf_counter()
    rewards = torch.tensor([task.reward(text, problems[i // G]) for i, text in enumerate(rollout.texts)])
    timing["time_verify"] += time.perf_counter() - t

    # 3. weight: the algorithm turns each group's rewards into per-completion weights (ppo: the rewards themselves,
    #    which the value head then spreads over the tokens, :func:`_advantages`)
    if config.algo == "ppo":
        weights = rewards.float().to(device)
    else:
        weights = sample_weights(rewards, G, algo=config.algo, lam=config.lam, threshold=config.threshold,
                                 std=config.std).to(device)  # (B*G,)
    return {"problems": problems, "rollout": rollout, "rewards": rewards, "weights": weights, "sampled_at": step}


def _rollout_to(rollout: Rollout, device) -> Rollout:
    """A rollout (from a checkpoint's pool) with its tensors on ``device``."""
    return dataclasses.replace(rollout, **{f.name: getattr(rollout, f.name).to(device)
                                           for f in dataclasses.fields(rollout)
                                           if isinstance(getattr(rollout, f.name), torch.Tensor)})


def _wrong_up(rewards: torch.Tensor, weights: torch.Tensor, processes: Processes = SINGLE) -> float | None:
    """Share of the wrong completions whose weight is positive (per-token weights: whose weights sum to more than
    0): answers the update makes more likely although they are wrong (a graded or format reward above the group's
    mean; 0 under F-ISFT's rules and binary rewards). None when no completion was wrong."""
    wrong = torch.tensor([not is_correct(r) for r in rewards.tolist()], device=weights.device)
    up = weights > 0 if weights.dim() == 1 else weights.sum(dim=1) > 0  # per token (ppo): pushed up on the whole
    counts = torch.stack([(wrong & up).sum(), wrong.sum()]).double()
    up, total = processes.sum(counts).tolist() if processes.world > 1 else counts.tolist()
    return up / total if total else None


def _advantages(config: TrainConfig, model, value_head, rollout: Rollout, rewards: torch.Tensor,
                processes: Processes, timing: dict) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Phase 3 of ppo: the sampler's values V(s_t) (one forward, no gradient), GAE advantages and value targets
    (:func:`companion.objectives.gae`), the advantages whitened over every process's tokens. Returns the per-token
    weights (N, T), the targets (N, T), and ``value_mean`` and ``explained_variance`` (of the targets by the values,
    over this process's tokens) for the record."""
    mask = rollout.completion_mask
    size = config.micro_batch_size or mask.shape[0]
    t = time.perf_counter()
    with torch.no_grad():
        values = torch.cat([per_token_values(model, value_head, rollout.prompt_ids[i:i + size],
                                             rollout.prompt_mask[i:i + size], rollout.completion_ids[i:i + size],
                                             mask[i:i + size]).float() for i in range(0, mask.shape[0], size)])
    timing["time_reference"] += time.perf_counter() - t
    advantages, returns = gae(rewards.to(values.device), values, mask, gamma=config.gamma, lam=config.gae_lambda)
    sums = whiten_sums(advantages, mask)
    if processes.world > 1:
        sums = tuple(processes.sum(torch.tensor(sums, dtype=torch.float64, device=mask.device)).tolist())
    real = mask.bool()
    target, predicted = returns[real], values[real]
    residual = (target - predicted).var(correction=0) if target.numel() > 1 else torch.tensor(0.0)
    spread = target.var(correction=0) if target.numel() > 1 else torch.tensor(0.0)
    stats = {"value_mean": predicted.mean().item(),
             "explained_variance": (1 - residual / spread).item() if spread > 0 else None}
    return whiten(advantages, mask, total=sums), returns, stats


def _update(config, model, reference, optimizer, scheduler, params, rollout: Rollout, weights, normalizer, timing,
            *, step: int, last_saved: int | None, out: Path, processes: Processes = SINGLE, value_head=None,
            returns: torch.Tensor | None = None) -> dict:
    """Phase 4: ``num_iterations`` optimizer steps on one sampled batch (over several processes, each one's share
    of it: the shares and the gradients are those of the whole batch). With ppo's ``value_head``, its loss toward
    ``returns`` (N, T) is added, scaled by ``value_coef``. Returns the update's metrics."""
    from companion.models import is_lora

    mask = rollout.completion_mask  # (N, T)
    rows = (rows_in_update(weights, config.beta) if value_head is None  # ppo's critic learns on every row
            else torch.arange(mask.shape[0], device=mask.device))
    size = config.micro_batch_size or max(len(rows), 1)
    chunks = [rows[i:i + size] for i in range(0, len(rows), size)]
    total = None
    if processes.world > 1:  # the loss denominator of the batch all processes sampled together
        total = processes.sum(torch.tensor([share_denominator(normalizer, mask, weights)],
                                           dtype=torch.float64, device=mask.device)).item()
    shares = [batch_share(normalizer, mask, weights, chunk, total) for chunk in chunks]

    def inputs(chunk):
        return (rollout.prompt_ids[chunk], rollout.prompt_mask[chunk], rollout.completion_ids[chunk], mask[chunk])

    # Under gradient checkpointing transformers drops the past_key_values of a checkpointed block (train mode, even
    # without gradients), so a group's shared prompt cache would silently vanish: run each prompt with its row.
    share = not config.gradient_checkpointing

    refs = [None] * len(chunks)
    if config.beta > 0:
        t = time.perf_counter()
        with torch.no_grad():
            for i, chunk in enumerate(chunks):
                if reference is not None:
                    refs[i] = per_token_logps(reference, *inputs(chunk), temperature=config.temperature,
                                              share_prompts=share, logit_chunk=config.logit_chunk_size)
                elif is_lora(model):
                    with model.disable_adapter():
                        refs[i] = per_token_logps(model, *inputs(chunk), temperature=config.temperature,
                                                  share_prompts=share, logit_chunk=config.logit_chunk_size)
        timing["time_reference"] += time.perf_counter() - t

    olds = [None] * len(chunks)  # π_old: the first iteration's log-probs, detached (the policy that sampled)
    # policy_loss's diagnostics, token-weighted over chunks and averaged over iterations; None when no token ran
    totals: dict[str, float | None] = {"loss": 0.0, **dict.fromkeys(LOSS_STATS)}
    if value_head is not None:
        totals["value_loss"] = 0.0
    measure_gap = bool(config.sft_gap_every) and step % config.sft_gap_every == 0
    gaps = []
    grad_norm = torch.tensor(0.0)
    for iteration in range(config.num_iterations):
        # Zeros, not None: a batch where nothing has weight still steps AdamW (with a zero gradient), as the
        # full-batch loss would, instead of silently skipping the parameters.
        for p in params:
            p.grad = torch.zeros_like(p) if p.grad is None else p.grad.zero_()
        loss_value, stats_sum = 0.0, {}
        for i, chunk in enumerate(chunks):
            t = time.perf_counter()
            logps = per_token_logps(model, *inputs(chunk), temperature=config.temperature,
                                    share_prompts=share, logit_chunk=config.logit_chunk_size)  # (n, T)
            if iteration == 0 and config.num_iterations > 1:
                olds[i] = logps.detach()
            loss, stats = policy_loss(logps, olds[i] if iteration else None, weights[chunk], mask[chunk],
                                      epsilon=config.epsilon, beta=config.beta, ref_per_token_logps=refs[i],
                                      normalizer=normalizer, max_completion_length=config.max_completion_length)
            if value_head is not None:
                critic = value_loss(per_token_values(model, value_head, *inputs(chunk)), returns[chunk], mask[chunk],
                                    normalizer=normalizer, max_completion_length=config.max_completion_length)
                loss = loss + config.value_coef * critic
                stats = {**stats, "value_loss": critic.item()}
            timing["time_forward"] += time.perf_counter() - t
            if not torch.isfinite(loss):
                _diverged(f"the loss is {loss.item()}", step=step, last_saved=last_saved, out=out, config=config)
            t = time.perf_counter()
            (loss * shares[i]).backward()
            timing["time_backward"] += time.perf_counter() - t
            loss_value += loss.item() * shares[i]
            token_share = mask[chunk].sum().item() / max(mask[rows].sum().item(), 1)
            for key, value in stats.items():
                stats_sum[key] = stats_sum.get(key, 0.0) + value * token_share
        t = time.perf_counter()
        processes.sum_gradients_(params)  # every process's share of the batch: the whole batch's gradient
        loss_value, stats_sum = _across(processes, loss_value, stats_sum, mask[rows].sum().item())
        if measure_gap:
            def sft_loss(i, chunk):
                logps = per_token_logps(model, *inputs(chunk), temperature=config.temperature, share_prompts=share,
                                        logit_chunk=config.logit_chunk_size)
                return weighted_nll(logps, weights[chunk], mask[chunk], normalizer=normalizer,
                                    max_completion_length=config.max_completion_length) * shares[i]

            gaps.append(sft_gap(params, [lambda i=i, c=c: sft_loss(i, c) for i, c in enumerate(chunks)], processes))
        grad_norm = torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
        if not torch.isfinite(grad_norm):
            _diverged(f"the gradient norm is {grad_norm.item()}", step=step, last_saved=last_saved, out=out, config=config)
        optimizer.step()
        scheduler.step()
        timing["time_backward"] += time.perf_counter() - t
        for key, value in {"loss": loss_value, **stats_sum}.items():
            totals[key] = (totals[key] or 0.0) + value / config.num_iterations
    if measure_gap:
        measured = [g for g in gaps if g is not None]
        totals.update({key: (sum(g[j] for g in measured) / len(measured) if measured else None)
                       for j, key in enumerate(GAP_STATS)})
    frac_weighted = weighted_rows(weights).float().mean().item()
    if processes.world > 1:  # every process has as many completions
        frac_weighted = processes.sum(torch.tensor([frac_weighted], device=weights.device)).item() / processes.world
    return {**totals, "grad_norm": grad_norm.item(), "frac_weighted": frac_weighted}


def sft_gap(params: list, losses: list, processes: Processes = SINGLE) -> tuple[float, float] | None:
    """How far the gradient now in ``params``' ``.grad`` (an update's, of the whole batch) is from the gradient of
    ``losses`` (callables, one per micro-batch, each returning its scaled weighted-SFT loss) at the same weights:
    ``(cosine, relative L2 distance)``, or None when the SFT loss has no gradient (no completion has a weight). The update's gradient is put back."""
    update = torch.cat([p.grad.reshape(-1) for p in params])  # a copy
    for p in params:
        p.grad.zero_()
    for loss in losses:
        loss().backward()
    processes.sum_gradients_(params)
    sft = torch.cat([p.grad.reshape(-1) for p in params]).double()
    offset = 0
    for p in params:
        p.grad.copy_(update[offset:offset + p.grad.numel()].view_as(p.grad))
        offset += p.grad.numel()
    update = update.double()
    if not sft.any():
        return None  # no completion has a weight: the SFT gradient is zero, there is nothing to compare with
    if not update.any():
        return 0.0, 1.0
    cosine = torch.nn.functional.cosine_similarity(update, sft, dim=0).item()
    return cosine, ((update - sft).norm() / sft.norm()).item()


def _across(processes: Processes, loss_value: float, stats_sum: dict, tokens: float) -> tuple[float, dict]:
    """One iteration's loss and token-weighted diagnostics of the whole batch, from each process's share: the loss
    shares add up, the diagnostics average weighted by the tokens each process ran (absent where none ran)."""
    if processes.world == 1:
        return loss_value, stats_sum
    keys = LOSS_STATS + ("value_loss",)
    local = [loss_value, tokens] + [stats_sum.get(k, 0.0) * tokens for k in keys] + [float(k in stats_sum) for k in keys]
    summed = processes.sum(torch.tensor(local, dtype=torch.float64)).tolist()
    loss, tokens_all = summed[0], summed[1]
    weighted, present = summed[2:2 + len(keys)], summed[2 + len(keys):]
    stats = {k: w / tokens_all for k, w, n in zip(keys, weighted, present) if n > 0 and tokens_all > 0}
    return loss, stats


def rows_in_update(weights: torch.Tensor, beta: float) -> torch.Tensor:
    """The rows the update runs: without a KL term (β = 0) a zero-weight completion adds exactly 0 to the loss and
    its gradient, so only the others; every row when β > 0. (N,) or (N, T) per-token -> (n,) row indices.

    >>> rows_in_update(torch.tensor([0.5, 0.0, -1.0]), beta=0.0).tolist(), rows_in_update(torch.zeros(2), 0.1).tolist()
    ([0, 2], [0, 1])
    """
    rows = torch.arange(len(weights), device=weights.device)
    return rows if beta > 0 else rows[weighted_rows(weights)]


def _diverged(what: str, *, step: int, last_saved: int | None, out: Path, config: TrainConfig):
    kept = (f"the last good checkpoint ({out / 'checkpoint.pt'}, step {last_saved}) is untouched; continue from it with "
            f"`companion train --resume {out}`" if last_saved else "no checkpoint was saved yet")
    raise TrainingDiverged(
        f"step {step}: {what}, so training stopped before applying the update. {kept}. Try a lower --learning-rate "
        f"(now {config.learning_rate}) or --max-grad-norm (now {config.max_grad_norm}).")


def _rollout_metrics(rollout: Rollout, rewards: torch.Tensor, num_generations: int,
                     processes: Processes = SINGLE) -> dict:
    """What the sampled batch says about the policy: reward, accuracy, lengths of right and wrong answers (over
    several processes, of every process's samples)."""
    mask = rollout.completion_mask
    if processes.world > 1:
        device = mask.device
        rewards = processes.gather(rewards.to(device)).cpu()
        lengths = processes.gather(rollout.lengths.float()).cpu()
        truncated = processes.gather(rollout.truncated.to(device).float()).cpu()  # gloo gathers no bools
        entropy = None
        if rollout.entropies is not None:
            sums = processes.sum(torch.stack([(rollout.entropies * mask).sum().double(), mask.sum().double()]))
            entropy = (sums[0] / sums[1].clamp(min=1)).item()
        return _batch_metrics(rewards, lengths, truncated, entropy, num_generations)
    entropy = None if rollout.entropies is None else (  # the teacher's traces: no sampling distribution
        (rollout.entropies * mask).sum() / mask.sum().clamp(min=1)).item()
    return _batch_metrics(rewards, rollout.lengths.cpu().float(), rollout.truncated, entropy, num_generations)


def _batch_metrics(rewards, lengths, truncated, entropy, num_generations: int) -> dict:
    correct = torch.tensor([is_correct(r) for r in rewards.tolist()])  # (N,)
    return {
        "reward": rewards.mean().item(),
        "reward_std": rewards.std().item(),
        "accuracy": correct.float().mean().item(),
        "frac_zero_spread": zero_spread_groups(rewards, num_generations).float().mean().item(),
        "length": lengths.mean().item(),
        "length_correct": _mean(lengths[correct]),
        "length_wrong": _mean(lengths[~correct]),
        "frac_truncated": truncated.float().mean().item(),
        "entropy": entropy,
    }


def _evaluate(config: TrainConfig, model, tokenizer, task, problems, *, step: int) -> dict:
    return heldout_accuracy(model, tokenizer, task, problems, max_completion_length=config.max_completion_length,
                            temperature=config.temperature, top_p=config.top_p,
                            num_generations=config.eval_num_generations, seed=config.seed * 1_000_003 + step,
                            batch_size=config.eval_batch_size)


def _write_record(path: Path, record: dict) -> None:
    with path.open("a") as f:
        append_jsonl(f, record)


def read_metrics(out: str | Path) -> list[dict]:
    """The per-step records of the run in ``out`` (``metrics.jsonl``), in order."""
    return read_jsonl(Path(out) / "metrics.jsonl")


# --------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="companion train",
        description="Post-train a policy with grpo, dr_grpo, fisft_plus or fisft_pm: sample, verify, weight, update.",
    )
    add_dataclass_arguments(parser, TrainConfig)
    parser.add_argument("--resume", metavar="DIR", help="continue the run in DIR from its checkpoint (its config is "
                                                        "reused; only --steps may change)")
    parser.add_argument("--overwrite", action="store_true", help="replace a run already in --out")
    parser.add_argument("--until-step", type=int, metavar="N", help="stop after step N, checkpointing it, as if "
                                                                    "interrupted (continue later with --resume)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def main(argv: list[str] | None = None) -> int:
    from companion.tasks.gsm8k import GSM8KUnavailable

    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    try:
        if args.resume:
            # The run's own config.json defines it; the command line may only extend it (--steps).
            given = explicit_options(TrainConfig, argv)
            if given - {"steps"}:
                flags = ", ".join("--" + name.replace("_", "-") for name in sorted(given - {"steps"}))
                raise RunError(f"--resume reuses {args.resume}/config.json: drop {flags} (only --steps may change)")
            saved = Path(args.resume) / "config.json"
            if not saved.exists():
                raise RunError(f"nothing to resume: {args.resume} holds no config.json")
            changes = {"out": args.resume, **({"steps": args.steps} if "steps" in given else {})}
            config = dataclasses.replace(load_config(TrainConfig, saved), **changes)
        else:
            config = config_from_args(TrainConfig, args)
        if args.until_step is not None and args.until_step < 1:
            raise ValueError(f"--until-step must be >= 1, got {args.until_step}")
        result = train(config, resume=bool(args.resume), overwrite=args.overwrite, until_step=args.until_step,
                       progress=not args.quiet)
    except (ValueError, OSError, GSM8KUnavailable) as err:  # RunError among them: options, a run directory or
        print(f"companion train: error: {err}", file=sys.stderr)  # problems that cannot be had
        return BAD_INPUT
    except TrainingDiverged as err:
        print(f"companion train: error: {err}", file=sys.stderr)
        return 1
    last = result.metrics[-1] if result.metrics else {}
    summary = ", ".join(f"{k}={last[k]:.3f}" for k in ("reward", "accuracy", "eval_accuracy_greedy")
                        if last.get(k) is not None)
    if os.environ.get("RANK", "0") == "0":  # one line per run, not per data-parallel process
        print(f"run in {result.out} (step {last.get('step', 0)} of {config.steps}{': ' + summary if summary else ''})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
