"""The one training loop: 1. sample → 2. verify → 3. weight → 4. update, for every algorithm of the book.

:func:`step` is the whole step: the four phases of chapter 6, each a function below it. :func:`train` runs the steps
of a run that :func:`companion.train_setup.start_run` set up, with a held-out evaluation every ``eval_every`` steps,
a record per step in ``metrics.jsonl`` (:mod:`companion.records`) and a checkpoint every ``save_every`` steps.
What differs between runs was chosen once, when the run started, and the step reads the same for all of them:
**who writes the completions** is a batch source (:mod:`companion.batches`: the policy, the exact solver, or a pool
sampled every K steps); **how rewards become weights** is an algorithm (:mod:`companion.algorithms`: a group rule of
:data:`companion.objectives.ALGORITHMS`, or PPO's per-token advantages, :mod:`companion.ppo`); **the loss** is
:func:`companion.objectives.policy_loss` for all of them, with a KL term toward a reference policy when β > 0.

Decisions, and why:

* **One sampled batch, μ updates.** π_old is the policy that sampled, and before the first update it *is* the
  current policy, so its log-probs are the first update's forward pass, detached: no extra forward, and ρ = 1
  exactly on the first update (TRL computes them with an extra pass).
* **Only rows with a weight are run**, without a KL term: a completion of weight 0 adds exactly 0 to the loss. Each
  micro-batch's loss is scaled by its part of the whole batch's loss denominator
  (:func:`companion.objectives.loss_denominators`, taken once per step), so value and gradient are the full batch's,
  whatever the rows skipped, the ``micro_batch_size`` or the number of processes.
* **Data parallel is one sum** of the gradients per optimizer step (:mod:`companion.parallel`).
* **Resume is exact.** N steps straight and N/2 + resume + N/2 give the same ``metrics.jsonl``, bit for bit on a
  CPU, timings aside (``tests/test_trainer.py``).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from companion.batches import Samples
from companion.objectives import loss_denominators, policy_loss, weighted_nll
from companion.checkpoint import roll_back
from companion.records import Clock, UpdateLog, batch_metrics, collapse, sft_gap, weight_metrics, write_record
from companion.rollout import per_token_logps
from companion.runs import auto_threads, read_jsonl, torch_threads
from companion.train_config import TrainConfig
from companion.train_setup import Training, parameters_of, start_run


class TrainingDiverged(RuntimeError):
    """The loss or the gradient stopped being finite; training stopped before applying the bad update."""


class TrainingCollapsed(TrainingDiverged):
    """The policy collapsed (:func:`companion.records.collapse`); training stopped, its checkpoint from before."""


@dataclass
class MicroBatch:
    """Rows of the batch that one forward and backward pass runs (``micro_batch_size`` of them at most)."""

    rows: torch.Tensor  # (n,) their indices in the batch
    inputs: tuple  # prompt ids, prompt mask, completion ids, completion mask of those rows
    weights: torch.Tensor  # (n,) or (n, T)
    scale: float  # the part of the whole batch's loss denominator these rows carry

    @property
    def mask(self) -> torch.Tensor:  # (n, T)
        return self.inputs[3]


# --------------------------------------------------------------------------------------------------
# The step
# --------------------------------------------------------------------------------------------------


def step(run: Training, number: int) -> dict:
    """Training step ``number``: the four phases, and the step's record."""
    clock = Clock()
    with clock("time_generate"):
        batch = sample(run, number)  # 1. sample
    with clock("time_verify"):
        rewards = verify(run.task, batch)  # 2. verify
    with clock("time_reference"):
        weights, weight_record = weight(run, batch, rewards)  # 3. weight
    lr = run.scheduler.get_last_lr()[0]
    update_record = update(run, batch, weights, clock, number)  # 4. update
    return {"step": number, **step_record(run, batch, rewards, weights), **update_record, **weight_record,
            "lr": lr, **batch.record, **clock.stop(**token_counts(run, batch))}


def sample(run: Training, number: int) -> Samples:
    """1. sample: G completions of each of this step's problems, from the run's batch source."""
    return run.source.sample(number)


def verify(task, batch: Samples) -> torch.Tensor:
    """2. verify: one reward per completion, from the task's verifier. -> (B*G,)"""
    G = batch.rollout.num_generations
    return torch.tensor([task.reward(text, batch.problems[i // G]) for i, text in enumerate(batch.rollout.texts)])


def weight(run: Training, batch: Samples, rewards: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """3. weight: the algorithm turns the rewards into a weight per completion (B*G,), or per token (B*G, T)."""
    return run.algorithm.weights(run.model, batch.rollout, rewards, run.processes)


def update(run: Training, batch: Samples, weights: torch.Tensor, clock: Clock, number: int) -> dict:
    """4. update: μ optimizer steps on the weighted, clipped log-likelihood of the batch (KL-penalised with β > 0)."""
    c, model = run.config, run.model
    micro_batches = micro_batches_of(run, batch, weights)
    with clock("time_reference"):
        refs = [run.reference.logps(mb.inputs, **run.logp_options) for mb in micro_batches]
    olds = [None] * len(micro_batches)  # π_old: the first iteration's log-probs, detached (the policy that sampled)
    log = UpdateLog(c.num_iterations, sum(int(mb.mask.sum()) for mb in micro_batches), run.processes,
                    run.algorithm.record_keys)
    gaps, grad_norm = [], torch.tensor(0.0)
    for iteration in range(c.num_iterations):
        zero_grad(run.params)
        for i, mb in enumerate(micro_batches):
            with clock("time_forward"):
                logps = per_token_logps(model, *mb.inputs, **run.logp_options)  # (n, T)
                if iteration == 0 and c.num_iterations > 1:
                    olds[i] = logps.detach()
                loss, stats = policy_loss(logps, olds[i] if iteration else None, mb.weights, mb.mask,
                                          epsilon=c.epsilon, beta=c.beta, ref_per_token_logps=refs[i],
                                          normalizer=c.loss_normalizer, max_completion_length=c.max_completion_length)
                extra, extra_stats = run.algorithm.extra_loss(model, mb)  # ppo: its critic's loss
                loss = loss + extra
            check_finite(run, loss, "the loss", number)
            with clock("time_backward"):
                (loss * mb.scale).backward()
            log.add(loss, {**stats, **extra_stats}, mb.scale, int(mb.mask.sum()))
        with clock("time_backward"):
            run.processes.sum_gradients_(run.params)  # every process's share of the batch: the whole batch's
            log.end_iteration()
            if c.sft_gap_every and number % c.sft_gap_every == 0:
                gaps.append(sft_gap(run.params, [lambda mb=mb: sft_loss(run, mb) for mb in micro_batches],
                                    run.processes))
            grad_norm = torch.nn.utils.clip_grad_norm_(run.params, c.max_grad_norm)
            check_finite(run, grad_norm, "the gradient norm", number)
            run.optimizer.step()
            run.scheduler.step()
    return log.result(grad_norm, gaps)


# --------------------------------------------------------------------------------------------------
# Pieces of the step
# --------------------------------------------------------------------------------------------------


def micro_batches_of(run: Training, batch: Samples, weights: torch.Tensor) -> list[MicroBatch]:
    """The rows the update runs (the algorithm's choice), ``micro_batch_size`` at a time, each with its part of the
    whole batch's loss denominator: the denominator is taken once, over every process's rows.

    In several passes, rows of similar length share one (sorted by completion length), and each pass is cut to its
    longest completion: a pass of short answers no longer runs the padding of the batch's longest. The sum over the
    passes is the same loss. In one pass (``micro_batch_size`` 0, every committed tiny-world run) nothing moves."""
    rollout, c = batch.rollout, run.config
    rows = run.algorithm.rows(weights, c.beta)
    size = c.micro_batch_size or max(len(rows), 1)
    counts = loss_denominators(c.loss_normalizer, rollout.completion_mask, weights)  # (B*G,)
    total = run.processes.sum(counts.sum()).clamp(min=1)
    lengths = rollout.lengths  # (B*G,)
    several = size < len(rows)
    if several:
        rows = rows[torch.argsort(lengths[rows], stable=True)]
    chunks = [rows[i:i + size] for i in range(0, len(rows), size)]
    return [micro_batch(rollout, chunk, weights, (counts[chunk].sum() / total).item(),
                        width=int(lengths[chunk].max()) if several else None) for chunk in chunks]


def micro_batch(rollout, chunk: torch.Tensor, weights: torch.Tensor, scale: float, *,
                width: int | None = None) -> MicroBatch:
    """The micro-batch of rows ``chunk``, its completions (and per-token weights) cut to ``width`` tokens (None: the
    rollout's width)."""
    prompt_ids, prompt_mask, ids, mask = rollout.model_inputs(chunk)
    chunk_weights = weights[chunk]  # (n,) or (n, T)
    if width is not None:
        ids, mask = ids[:, :width], mask[:, :width]
        chunk_weights = chunk_weights[:, :width] if chunk_weights.dim() == 2 else chunk_weights
    return MicroBatch(chunk, (prompt_ids, prompt_mask, ids, mask), chunk_weights, scale)


def zero_grad(params: list) -> None:
    """Zeros, not None: a batch where nothing has weight still steps AdamW (with a zero gradient), as the full-batch
    loss would, instead of silently skipping the parameters."""
    for p in params:
        p.grad = torch.zeros_like(p) if p.grad is None else p.grad.zero_()


def sft_loss(run: Training, mb: MicroBatch) -> torch.Tensor:
    """The weighted-SFT loss of a micro-batch at the update's weights, scaled like its policy loss (chapter 2)."""
    c = run.config
    logps = per_token_logps(run.model, *mb.inputs, **run.logp_options)
    return weighted_nll(logps, mb.weights, mb.mask, normalizer=c.loss_normalizer,
                        max_completion_length=c.max_completion_length) * mb.scale


def check_finite(run: Training, value: torch.Tensor, what: str, number: int) -> None:
    """Stop before applying an update whose loss or gradient is not finite; the last checkpoint is kept."""
    if torch.isfinite(value):
        return
    checkpoint = run.out / "checkpoint.pt"
    kept = (f"the last good checkpoint ({checkpoint}, step {run.last_saved}) is untouched; continue from it with "
            f"`companion train --resume {run.out}`" if run.last_saved else "no checkpoint was saved yet")
    raise TrainingDiverged(
        f"step {number}: {what} is {value.item()}, so training stopped before applying the update. {kept}. Try a "
        f"lower --learning-rate (now {run.config.learning_rate}) or --max-grad-norm (now {run.config.max_grad_norm}).")


def step_record(run: Training, batch: Samples, rewards: torch.Tensor, weights: torch.Tensor) -> dict:
    """What the batch says about the policy, and what the weights did to it (of every process's samples)."""
    return {**batch_metrics(batch.rollout, rewards, run.config.num_generations, run.processes),
            **weight_metrics(rewards, weights, run.processes)}


def token_counts(run: Training, batch: Samples) -> dict:
    """Completion tokens sampled for this step and trained on in it, over every process: the step's speed."""
    counts = torch.tensor([batch.generated_tokens, int(batch.rollout.completion_mask.sum())], dtype=torch.float64)
    generated, trained = run.processes.sum(counts.to(batch.rollout.completion_mask.device)).tolist()
    return {"generated": generated, "trained": trained}


# --------------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------------


@dataclass
class TrainResult:
    """What :func:`train` returns: where the run lives, its metric records, and the trained policy."""

    out: Path
    metrics: list[dict]
    model: object
    tokenizer: object


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
    with torch_threads(config.num_threads or auto_threads(parameters_of(config, model))), \
            contextlib.ExitStack() as held:
        run, start = start_run(config, model, tokenizer, resume=resume, overwrite=overwrite, held=held,
                               progress=progress)
        c, main_process = run.config, run.processes.is_main
        stop = c.steps if until_step is None else min(until_step, c.steps)
        bar = tqdm(total=c.steps, initial=start, desc=f"{c.algo} on {c.task}", disable=not (progress and main_process))
        run.model.train()
        for number in range(start + 1, stop + 1):
            record = step(run, number)
            if c.ref_reset_every and number % c.ref_reset_every == 0:
                run.reference.reset(run.model, run.optimizer)  # ProRL: the KL now pulls toward this policy
            if c.eval_every and (number % c.eval_every == 0 or number == c.steps) and main_process:
                record.update(timed_evaluation(run, number))
            if main_process:
                write_record(run.out / "metrics.jsonl", record)
            stop_if_collapsed(run, record)
            if c.policy_every and number % c.policy_every == 0 and number < c.steps and main_process:
                run.save_policy(f"policy-step{number}")
            if (c.save_every and number % c.save_every == 0) or number == stop:
                run.checkpoint(number)
            run.processes.wait()
            bar.update(1)
            bar.set_postfix(reward=f"{record['reward']:.3f}", acc=f"{record['accuracy']:.2f}",
                            zero_spread=f"{record['frac_zero_spread']:.2f}")
        bar.close()
        if stop == c.steps and main_process:
            run.save_policy("policy")
        run.processes.wait()
        return TrainResult(out=run.out, metrics=read_jsonl(run.out / "metrics.jsonl"), model=run.model,
                           tokenizer=run.tokenizer)


def stop_if_collapsed(run: Training, record: dict) -> None:
    """Stop a run whose policy collapsed (its record says so), keeping the last checkpoint from before the update
    that broke it: a checkpoint of the step just before holds that update, so the one before it comes back."""
    reason = collapse(record)
    if reason is None:
        return
    number, saved = record["step"], run.last_saved
    if saved == number - 1 and run.processes.is_main:
        kept = roll_back(run.out)
    else:
        kept = (f"{run.out / 'checkpoint.pt'} (step {saved}) is from before it" if saved
                else "no checkpoint was saved yet")
    raise TrainingCollapsed(
        f"step {number}: the policy collapsed ({reason}), so training stopped: nothing it samples can be rewarded "
        f"or move it again. {kept[0].upper() + kept[1:]}. Try a lower --learning-rate (now {run.config.learning_rate}).")


def timed_evaluation(run: Training, number: int) -> dict:
    """The held-out evaluation after step ``number``, with the seconds it took (``time_eval``)."""
    clock = Clock()
    with clock("time_eval"):
        record = run.evaluate(number)
    return {**record, "time_eval": clock.times["time_eval"]}
