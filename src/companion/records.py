"""What a training run writes about each step: one JSON record per line of ``metrics.jsonl``.

A record holds:

* what the sampled batch says about the policy (:func:`batch_metrics`): ``reward``, ``reward_std``,
  ``accuracy`` (share of correct completions, :func:`companion.verify.is_correct`), ``frac_zero_spread``
  (groups whose rewards are all equal: they get no weight), ``length``, ``length_correct`` and ``length_wrong``
  (mean tokens, EOS included; ``None`` when there is none), ``frac_truncated`` (cut by ``max_completion_length``),
  ``entropy`` (of the sampling distribution, per token; ``None`` for the teacher's traces);
* what the weights did (:func:`weight_metrics`): ``frac_weighted`` (completions with a non-zero weight) and
  ``frac_wrong_up`` (wrong completions with a positive weight: a format or graded reward above the group's mean);
* the update's (:class:`UpdateLog`): ``loss``, ``grad_norm`` (before clipping), :data:`LOSS_STATS`, with ppo
  ``value_loss``, and with ``sft_gap_every`` :data:`GAP_STATS`; its algorithm's own (ppo: ``value_mean``,
  ``explained_variance``); ``lr``; with ``refresh_every > 1``, ``sampled_at``;
* every ``eval_every`` steps (and at step 0) the held-out evaluation (:func:`heldout_metrics`);
* the wall-clock :data:`TIMING_METRICS` (:class:`Clock`).
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from pathlib import Path

import torch

from companion.objectives import weighted_rows, zero_spread_groups
from companion.parallel import SINGLE, Processes
from companion.planner import EVAL_BATCH_ROWS
from companion.runs import append_jsonl, read_jsonl
from companion.verify import is_correct

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


class Clock:
    """Wall-clock seconds per phase of one step (:data:`TIMING_METRICS`): ``with clock("time_forward"): ...``."""

    def __init__(self):
        self.start = time.perf_counter()
        self.times = dict.fromkeys(TIMING_METRICS[1:7], 0.0)

    @contextmanager
    def __call__(self, name: str):
        t = time.perf_counter()
        try:
            yield
        finally:
            self.times[name] = self.times.get(name, 0.0) + time.perf_counter() - t

    def stop(self, *, generated: int, trained: int) -> dict:
        """The step's timings, sampling to update (evaluation is timed apart): ``generated`` completion tokens
        were sampled (0 when the batch came from a pool), ``trained`` were in the batch."""
        seconds = time.perf_counter() - self.start
        return {"step_time": seconds, **self.times, "tokens_per_s": trained / seconds,
                "gen_tokens_per_s": generated / self.times["time_generate"] if generated else None}


def _mean(values: torch.Tensor) -> float | None:
    return values.float().mean().item() if values.numel() else None


def batch_metrics(rollout, rewards: torch.Tensor, num_generations: int, processes: Processes = SINGLE) -> dict:
    """What the sampled batch says about the policy (over several processes, of every process's samples)."""
    mask = rollout.completion_mask
    rewards = processes.gather(rewards.to(mask.device)).cpu()
    lengths = processes.gather(rollout.lengths.float()).cpu()
    truncated = processes.gather(rollout.truncated.to(mask.device).float()).cpu()  # gloo gathers no bools
    entropy = None
    if rollout.entropies is not None:  # None for the teacher's traces: no sampling distribution
        sums = processes.sum(torch.stack([(rollout.entropies * mask).sum(), mask.sum().float()]))
        entropy = (sums[0] / sums[1].clamp(min=1)).item()
    correct = torch.tensor([is_correct(r) for r in rewards.tolist()])  # (N,)
    return {
        "reward": rewards.mean().item(),
        "reward_std": rewards.std().item(),
        "accuracy": correct.float().mean().item(),
        "frac_zero_spread": zero_spread_groups(rewards, num_generations).float().mean().item(),
        "length": lengths.mean().item(),
        "length_correct": _mean(lengths[correct]),
        "length_wrong": _mean(lengths[~correct]),
        "frac_truncated": truncated.mean().item(),
        "entropy": entropy,
    }


def weight_metrics(rewards: torch.Tensor, weights: torch.Tensor, processes: Processes = SINGLE) -> dict:
    """``frac_weighted``: completions with a non-zero weight; ``frac_wrong_up``: the share of the wrong completions
    whose weight is positive (per-token weights: whose weights sum to more than 0), answers the update makes more
    likely although they are wrong (None when no completion was wrong)."""
    wrong = torch.tensor([not is_correct(r) for r in rewards.tolist()], device=weights.device)
    up = weights > 0 if weights.dim() == 1 else weights.sum(dim=1) > 0  # per token (ppo): pushed up on the whole
    up, total = processes.sum(torch.stack([(wrong & up).sum(), wrong.sum()]).double()).tolist()
    weighted = processes.sum(weighted_rows(weights).float().sum())
    return {"frac_weighted": (weighted / (len(weights) * processes.world)).item(),
            "frac_wrong_up": up / total if total else None}


class UpdateLog:
    """The update's record: its micro-batches' losses (each scaled by its part of the batch) summed, the loss's
    diagnostics weighted by the tokens each micro-batch ran, both averaged over the ``iterations`` optimizer updates
    of the batch and over every process's share; ``None`` for a diagnostic where no token ran."""

    def __init__(self, iterations: int, tokens: float, processes: Processes = SINGLE, keys: tuple = ()):
        self.iterations, self.tokens, self.processes = iterations, tokens, processes
        self.keys = LOSS_STATS + tuple(keys)
        self.totals: dict[str, float | None] = {"loss": 0.0, **dict.fromkeys(LOSS_STATS)}
        self.loss, self.stats = 0.0, {}

    def add(self, loss: torch.Tensor, stats: dict, scale: float, tokens: float) -> None:
        self.loss += loss.item() * scale
        for key, value in stats.items():
            self.stats[key] = self.stats.get(key, 0.0) + value * (tokens / max(self.tokens, 1))

    def end_iteration(self) -> None:
        loss, stats = self.processes.token_mean(self.loss, self.stats, self.tokens, self.keys)
        for key, value in {"loss": loss, **stats}.items():
            self.totals[key] = (self.totals.get(key) or 0.0) + value / self.iterations
        self.loss, self.stats = 0.0, {}

    def result(self, grad_norm: torch.Tensor, gaps: list) -> dict:
        measured = [g for g in gaps if g is not None]
        gap = ({key: (sum(g[j] for g in measured) / len(measured) if measured else None)
                for j, key in enumerate(GAP_STATS)} if gaps else {})
        return {**self.totals, **gap, "grad_norm": grad_norm.item()}


def heldout_metrics(model, tokenizer, task, problems: list, *, max_completion_length: int, temperature: float = 1.0,
                    top_p: float = 1.0, num_generations: int = 4, seed: int = 0,
                    batch_size: int = EVAL_BATCH_ROWS, prompt_style: str = "base", fast: bool = False,
                    progress: str = "") -> dict:
    """Accuracy, reward and greedy length on held-out ``problems``: greedy (temperature 0) and sampled
    (``num_generations`` completions each), through the package's one evaluation path (:mod:`companion.evaluate`).
    Sampling uses its own seeded generators, so evaluating never moves the caller's random stream. ``batch_size``:
    completions decoded together; ``fast``: the fast sampler (:mod:`companion.sampler`); ``progress``: a progress bar
    with this title (none when empty)."""
    from companion.evaluate import sampling_progress, score_problems, summarize

    with sampling_progress(len(problems) * (1 + num_generations), desc=progress, disable=not progress) as done:
        def summary(n: int, temp: float) -> dict:
            return summarize(score_problems(model, tokenizer, task, problems, num_generations=n, seed=seed,
                                            temperature=temp, top_p=top_p, max_completion_length=max_completion_length,
                                            batch_size=batch_size, prompt_style=prompt_style, fast=fast,
                                            on_progress=done))

        greedy, sampled = summary(1, 0.0), summary(num_generations, temperature)
    return {
        "eval_accuracy_greedy": greedy["accuracy"],
        "eval_accuracy_sampled": sampled["accuracy"],
        "eval_reward_sampled": sampled["mean_reward"],
        "eval_length_greedy": greedy["length"]["mean"],
    }


def sft_gap(params: list, losses: list, processes: Processes = SINGLE) -> tuple[float, float] | None:
    """How far the gradient now in ``params``' ``.grad`` (an update's, of the whole batch) is from the gradient of
    ``losses`` (callables, one per micro-batch, each returning its scaled weighted-SFT loss) at the same weights:
    ``(cosine, relative L2 distance)``, or None when the SFT loss has no gradient (no completion has a weight).
    The update's gradient is put back."""
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


COLLAPSE_ENTROPY = 1e-3
"""Entropy per token (nats) below which a policy samples, in effect, one completion per prompt."""


def collapse(record: dict) -> str | None:
    """Why the policy has collapsed, read from its step's record, or None: it samples (in effect) one completion per
    prompt (entropy below :data:`COLLAPSE_ENTROPY`), none of them right, and nothing will move it again: the update
    had no gradient at all, or every completion ran into the length cap. (A policy that is always right and
    certain is done, not collapsed; the teacher's traces have no entropy and are never judged.)

    >>> collapse({"entropy": 2e-5, "accuracy": 0.0, "grad_norm": 0.0, "frac_truncated": 0.0})
    'entropy 2e-05 nats per token, accuracy 0, a gradient of exactly 0'
    >>> collapse({"entropy": 2e-5, "accuracy": 1.0, "grad_norm": 0.0, "frac_truncated": 0.0}) is None
    True
    """
    entropy = record.get("entropy")
    if entropy is None or entropy >= COLLAPSE_ENTROPY or record["accuracy"] > 0:
        return None
    if record["grad_norm"] == 0:
        return f"entropy {entropy:.2g} nats per token, accuracy 0, a gradient of exactly 0"
    if record["frac_truncated"] == 1:
        return f"entropy {entropy:.2g} nats per token, accuracy 0, every completion cut at the length cap"
    return None


def write_record(path: Path, record: dict) -> None:
    with path.open("a") as f:
        append_jsonl(f, record)


def read_metrics(out: str | Path) -> list[dict]:
    """The per-step records of the run in ``out`` (``metrics.jsonl``), in order."""
    return read_jsonl(Path(out) / "metrics.jsonl")
