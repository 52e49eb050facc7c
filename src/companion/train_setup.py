"""A training run set up: :class:`Training`, everything a step needs, made once by :func:`start_run` (or picked up
from the run's checkpoint), and what goes into it: the run directory, the problems, the policy (after checking that
it fits the GPU), the batch source, the algorithm, the reference policy of the KL term, and the optimizer with its
schedule. :mod:`companion.trainer` runs the steps.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import math
import random
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from companion.algorithms import algorithm_for
from companion.batches import ProblemStream, batch_source
from companion.checkpoint import load_checkpoint, save_checkpoint, usable_checkpoint
from companion.config import need, save_config
from companion.decode import check_prompts_fit
from companion.parallel import Processes, check_processes
from companion.records import heldout_metrics, write_record
from companion.rollout import per_token_logps
from companion.runs import RunError, available_memory, open_run_dir, read_jsonl, run_lock, write_atomically
from companion.train_config import TrainConfig

MODEL_SOURCE = "model_source.json"
KEPT = ("checkpoint.pt", "checkpoint.previous.pt", "checkpoint.collapsed.pt", "policy")
"""What a run keeps that a later command can go on from; a run directory without any of them has nothing to resume."""
RUN_FILES = ("config.json", "metrics.jsonl", MODEL_SOURCE) + KEPT
OTHER_RUNS = {"problems.jsonl": "companion eval", "summary.json": "companion eval", "model.json": "companion eval",
              "pretrain_config.json": "companion pretrain"}
"""Files that mark a directory as another command's run, which a training run must not mix with (nor delete)."""


def prepare_run_dir(config: TrainConfig, *, resume: bool, overwrite: bool) -> bool:
    """Claim ``config.out`` for this run: a new run, or the one ``resume`` continues (its config must match, and its
    checkpoint and records be there). A run that stopped before its first checkpoint has nothing to resume and is
    started again, whatever was asked. Returns whether the run resumes."""
    out = Path(config.out)
    other = sorted({command for name, command in OTHER_RUNS.items() if (out / name).exists()})
    if other:
        raise RunError(f"{out} holds a {' and a '.join(other)} run: choose another --out (--overwrite replaces only a "
                       "training run)")
    if (out / "config.json").exists() and not any((out / n).exists() for n in KEPT) and not overwrite:
        print(f"{out} holds a run that stopped before its first checkpoint (nothing to resume): starting it again",
              file=sys.stderr)
        overwrite, resume = True, False
    snapshots = tuple(p.name for p in out.glob("policy-step*"))  # --policy-every's, replaced too
    _, resuming = open_run_dir(out, dataclasses.asdict(config), RUN_FILES + snapshots, overwrite=overwrite,
                               resume=resume,
                               # the same directory, however its path is spelled; the evaluation's batch changes
                               # only its memory and float rounding
                               may_differ=("steps", "out", "eval_batch_size"),
                               defaults={**{f.name: f.default for f in dataclasses.fields(TrainConfig)
                                            if f.default is not dataclasses.MISSING}, **TrainConfig.LEGACY})
    if resume:
        _, step, _ = usable_checkpoint(out)
        need(config.steps >= step, f"{out} is at step {step}: --steps {config.steps} would end before it; pass "
                                   f"--steps {step} or more to train further")
        missing = set(range(1, step + 1)) - {r["step"] for r in read_jsonl(out / "metrics.jsonl")}
        if missing:
            raise RunError(f"{out}/metrics.jsonl lacks the records of steps {_ranges(missing)} (deleted or edited?): "
                           "resuming would leave the run's history without them. Restore the file, or start the run "
                           "again with --overwrite")
    return resume


def _ranges(steps: set[int]) -> str:
    """Steps as ranges.

    >>> _ranges({1, 2, 3, 7})
    '1-3, 7'
    """
    ordered = sorted(steps)
    runs, start, previous = [], ordered[0], ordered[0]
    for step in ordered[1:] + [None]:
        if step != previous + 1:
            runs.append(f"{start}-{previous}" if previous > start else str(start))
            start = step
        previous = step if step is not None else previous
    return ", ".join(runs)


def _file_option(path: str) -> dict:
    return {"data_file": path} if path else {}


def run_problems(config: TrainConfig):
    """The run's task (with its reward shape), training pool and held-out problems (none without ``eval_every``);
    GSM8K's come from the hub, or from ``data_file`` and ``eval_data_file``."""
    from companion.tasks import get_task, reward_options, tier_options

    task = get_task(config.task, **reward_options(config.task, config.reward), **tier_options(config.task, config.tier))
    pool = task.generate(config.train_problems, seed=config.seed, split="train", **_file_option(config.data_file))
    held_out = (task.generate(config.eval_problems, seed=0, split="test", **_file_option(config.eval_data_file))
                if config.eval_every else [])
    return task, pool, held_out


# --- does it fit the GPU? ----------------------------------------------------------------------------------------


def memory_plan(config: TrainConfig, model_config, prompt_length: int, dtype_bytes: int = 2):
    """:func:`companion.planner.plan` of one step of this run, for a model of ``model_config``'s shapes
    (``dtype_bytes``: the compute dtype's, 2 on a GPU, 4 for float32 on a CPU)."""
    from companion.planner import ModelShape, plan

    return plan(ModelShape.from_config(model_config), prompts_per_step=config.prompts_per_step,
                num_generations=config.num_generations, prompt_length=prompt_length,
                completion_length=config.max_completion_length, micro_batch_size=config.micro_batch_size,
                load_in_4bit=config.load_in_4bit, lora_r=config.lora_r if config.lora else None,
                gradient_checkpointing=config.gradient_checkpointing, dtype_bytes=dtype_bytes,
                logit_chunk=config.logit_chunk_size, top_p=config.top_p, fast=config.fast_sampler,
                **(dict(eval_problems=config.eval_problems, eval_num_generations=config.eval_num_generations,
                        eval_batch_size=config.eval_batch_size) if config.eval_every else {}))


def longest_prompt(config: TrainConfig, tokenizer, problems: list[dict] | None = None) -> int:
    """Tokens in the longest prompt among the first 200 of this run's training problems (``problems``, or drawn
    again): the prompt length :func:`memory_plan` is asked with."""
    from companion.evaluate import longest_prompt as longest
    from companion.tasks import get_task, tier_options

    task = get_task(config.task, **tier_options(config.task, config.tier))
    problems = problems or task.generate(min(config.train_problems, 200), seed=config.seed, split="train",
                                         **_file_option(config.data_file))
    return longest(config, task, problems[:200], tokenizer)


def check_gpu_memory(config: TrainConfig, free_bytes: int, *, gpu: str = "the GPU", files=None,
                     problems: list[dict] | None = None, dtype_bytes: int = 2) -> None:
    """Stop before the weights load when the planner's estimate of a step does not fit in ``free_bytes``.

    ``free_bytes`` is what ``torch.cuda.mem_get_info`` reports, after this process's CUDA context exists, so the
    context (:data:`companion.planner.CONTEXT_BYTES`, part of the plan's peak) is not asked for a second time.
    Reads only the model's config and tokenizer (``files``, or :func:`companion.models.read_model_files`); when they
    cannot be read here, the check is left to the loader, whose own error says what to do. ``problems``: the run's
    training problems, when they are at hand (:func:`longest_prompt`); ``dtype_bytes``: the weights' and compute's
    (2 in half precision, 4 when a full-parameter run keeps float32).
    """
    from companion.models import read_model_files
    from companion.planner import CONTEXT_BYTES, GIB, check_fits, largest_fitting_batch

    files = files or read_model_files(config.model)
    if files is None:
        return
    if files.lora_r is not None:  # saved adapters, trained further: plan them, on their base as it was saved
        config = dataclasses.replace(config, lora=True, lora_r=files.lora_r,
                                     load_in_4bit=config.load_in_4bit or files.load_in_4bit)
    prompt = longest_prompt(config, files.tokenizer, problems)

    def planned(run: TrainConfig):
        estimate = memory_plan(run, files.config, prompt, dtype_bytes)
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


def check_cpu_memory(config: TrainConfig, problems: list[dict] | None = None) -> None:
    """On a CPU, stop before the weights load when the planner's estimate of a step (in float32) exceeds the memory
    the machine has free, saying what to change; left to the loader when the model's files cannot be read here."""
    from companion.models import read_model_files
    from companion.planner import CONTEXT_BYTES, check_fits

    free = available_memory()
    files = read_model_files(config.model) if free else None
    if files is None:
        return
    estimate = memory_plan(config, files.config, longest_prompt(config, files.tokenizer, problems), dtype_bytes=4)
    estimate = dataclasses.replace(estimate, peak=estimate.peak - CONTEXT_BYTES)  # no CUDA context on a CPU
    check_fits(estimate, free, gpu="this machine (free memory)", in_4bit=config.load_in_4bit,
               what=f"training {config.model} ({config.prompts_per_step} x {config.num_generations} completions of "
                    f"up to {config.max_completion_length} tokens per step)")


# --- the policy, and the reference of the KL term ------------------------------------------------------------------


def parameters_of(config: TrainConfig, model=None) -> int:
    """The parameter count of ``model``, or of the model ``config.model`` names (read from its config, 0 when it
    cannot be read here): what :func:`companion.runs.auto_threads` chooses by."""
    from companion.models import read_model_files
    from companion.planner import ModelShape

    if model is not None:
        return sum(p.numel() for p in model.parameters())
    files = read_model_files(config.model)
    return ModelShape.from_config(files.config).parameters if files else 0


def check_memory(config: TrainConfig, device: torch.device, problems: list[dict]) -> None:
    """Stop before anything is written or loaded when a step of the run (on its training ``problems``) would not fit
    the device's free memory (a GPU's, or on a CPU the machine's), saying what to change (:func:`check_gpu_memory`,
    :func:`check_cpu_memory`)."""
    from companion.models import gpu_budget, resolve_dtype

    dtype = resolve_dtype(config.dtype, device, load_in_4bit=config.load_in_4bit, trains_weights=not config.lora)
    budget = gpu_budget(config.model, device)
    if budget is not None:
        check_gpu_memory(config, budget.free_bytes, gpu=budget.gpu, files=budget.files, problems=problems,
                         dtype_bytes=dtype.itemsize)
    elif device.type == "cpu":
        check_cpu_memory(config, problems)


def load_model(config: TrainConfig, model=None, tokenizer=None, device: torch.device | None = None):
    """The model to train: the one passed in, or the one ``config.model`` names (on ``device``, or the config's)."""
    from companion.models import LoraSettings, load_policy, resolve_device, resolve_dtype

    if model is None:
        device = device or resolve_device(config.device)
        dtype = resolve_dtype(config.dtype, device, load_in_4bit=config.load_in_4bit, trains_weights=not config.lora)
        lora = LoraSettings(r=config.lora_r, alpha=config.lora_alpha) if config.lora else None
        return load_policy(config.model, load_in_4bit=config.load_in_4bit, lora=lora, device=device, dtype=dtype)
    need(tokenizer is not None, "train(model=...) needs its tokenizer too")
    return (model if config.device == "auto" else model.to(config.device)), tokenizer


class Reference:
    """π_ref of the KL penalty, the initial policy: a frozen copy of its weights (full-parameter training), or the
    model itself with its LoRA adapters switched off (the base is frozen). Without a KL term (β = 0) there is none,
    and :meth:`logps` gives None. With ``ref_reset_every``, :meth:`reset` makes the frozen copy the policy of that
    moment, and checkpoints carry it (:attr:`state`)."""

    def __init__(self, config: TrainConfig, model):
        from companion.models import is_lora

        self.lora = config.beta > 0 and is_lora(model)
        self.frozen = copy.deepcopy(model).eval().requires_grad_(False) if config.beta > 0 and not self.lora else None
        self.model = model if config.beta > 0 else None
        self.resets = config.ref_reset_every > 0

    @torch.no_grad()
    def reset(self, model, optimizer) -> None:
        """ProRL's reference reset: the KL now pulls toward ``model`` as it is, and AdamW's moments start again."""
        self.frozen.load_state_dict(model.state_dict())
        optimizer.state.clear()

    @property
    def state(self) -> dict | None:
        """What a checkpoint keeps: the reference's weights once resets move it (else it is the initial policy)."""
        return {"reference": self.frozen.state_dict()} if self.resets else None

    def load_state(self, state: dict) -> None:
        if self.resets:
            self.frozen.load_state_dict(state["reference"])

    @torch.no_grad()
    def logps(self, inputs: tuple, **options) -> torch.Tensor | None:
        """log π_ref of the completion tokens of ``inputs`` (:func:`companion.rollout.per_token_logps`'s)."""
        if self.frozen is not None:
            return per_token_logps(self.frozen, *inputs, **options)
        if self.lora:
            with self.model.disable_adapter():
                return per_token_logps(self.model, *inputs, **options)
        return None


# --- the optimizer -------------------------------------------------------------------------------------------------


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


def optimizer_for(config: TrainConfig, params: list):
    """AdamW over ``params`` and its learning-rate schedule (warmup, then ``lr_scheduler``), stepped per update."""
    optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda u: lr_factor(
        u, total=config.total_updates, warmup=config.warmup_steps, kind=config.lr_scheduler))
    return optimizer, scheduler


# --- the run ----------------------------------------------------------------------------------------------------------


@dataclass
class Training:
    """A run in progress: everything a step needs, set up once by :func:`start_run`."""

    config: TrainConfig
    model: object
    tokenizer: object
    task: object
    held_out: list  # the problems of the evaluation every eval_every steps
    stream: ProblemStream  # the training problems, in the run's order
    source: object  # phase 1: who writes the completions (companion.batches)
    algorithm: object  # phase 3: how rewards become weights, and which parameters train (companion.algorithms)
    reference: Reference  # π_ref of the KL term (none with β = 0)
    params: list
    optimizer: torch.optim.Optimizer
    scheduler: object
    processes: Processes
    out: Path
    last_saved: int | None = None  # the step of the last checkpoint

    @property
    def logp_options(self) -> dict:
        """How the update computes log-probs: at the sampling temperature, each group's prompt run once unless
        gradient checkpointing is on (transformers drops a checkpointed block's cache in train mode, so a shared
        prompt cache would silently vanish: each prompt then runs with its row), ``logit_chunk_size`` at a time."""
        c = self.config
        return dict(temperature=c.temperature, share_prompts=not c.gradient_checkpointing,
                    logit_chunk=c.logit_chunk_size)

    def evaluate(self, number: int, *, progress: bool = False) -> dict:
        """Accuracy on the held-out problems, sampled with a seed of the run's and step ``number``'s own (with
        ``progress``, a bar while it samples)."""
        c = self.config
        return heldout_metrics(self.model, self.tokenizer, self.task, self.held_out,
                               max_completion_length=c.max_completion_length, temperature=c.temperature,
                               top_p=c.top_p, num_generations=c.eval_num_generations, seed=c.seed * 1_000_003 + number,
                               batch_size=c.eval_batch_size, prompt_style=c.prompt_style, fast=c.fast_sampler,
                               progress=f"held-out evaluation, step {number}" if progress else "")

    def checkpoint(self, number: int) -> None:
        """Save everything exact resume needs after step ``number`` (:func:`companion.checkpoint.save_checkpoint`)."""
        save_checkpoint(self.out / "checkpoint.pt", model=self.model, optimizer=self.optimizer,
                        scheduler=self.scheduler, step=number, data_position=self.stream.position,
                        processes=self.processes, parts={**(self.source.state or {}), **(self.algorithm.state or {}),
                                                         **(self.reference.state or {})})
        self.last_saved = number

    def save_policy(self, name: str) -> None:
        """The policy as it is now, in ``out/name`` (:func:`companion.models.save_policy`)."""
        from companion.models import save_policy

        save_policy(self.model, self.tokenizer, self.out / name, base=self.config.model,
                    load_in_4bit=self.config.load_in_4bit)


def start_run(config: TrainConfig, model=None, tokenizer=None, *, resume: bool = False, overwrite: bool = False,
              held: contextlib.ExitStack, progress: bool = False) -> tuple[Training, int]:
    """Set a run up (or pick it up from its checkpoint); returns it and the last step it has done. The run's
    directory is locked (:func:`companion.runs.run_lock`) until ``held`` closes; ``progress``: a bar for the held-out
    evaluation of step 0, the first thing a new run does."""
    from companion.models import resolve_device

    processes = Processes.launched(resolve_device(config.device) if model is None else next(model.parameters()).device)
    config = check_processes(config, processes)
    # First, so that problems that cannot be had (GSM8K with no hub) stop the run before it writes or loads
    # anything. No task draws from the global generators, so this changes no seeded stream.
    task, pool, held_out = run_problems(config)
    if model is None:
        check_memory(config, processes.device or resolve_device(config.device), pool)
    if processes.is_main:
        held.enter_context(run_lock(config.out, "companion train"))
        resume = prepare_run_dir(config, resume=resume, overwrite=overwrite)
    resume = processes.gather_object(resume)[0]  # every process resumes, or not, as the main one found
    random.seed(config.seed)
    np.random.seed(config.seed)
    torch.manual_seed(config.seed)
    model, tokenizer = load_model(config, model, tokenizer, processes.device)
    enable_gradient_checkpointing(config, model)
    reference = Reference(config, model)  # with LoRA the base with adapters off; else a frozen copy (β > 0)
    stream = ProblemStream(pool, seed=config.seed)
    check_prompts_fit(model, tokenizer, [task.prompt(p, style=config.prompt_style, tokenizer=tokenizer)
                                         for p in stream.problems + held_out], config.max_completion_length)
    algorithm = algorithm_for(config, model)
    params = algorithm.parameters(model)
    processes.broadcast_(params)  # the same start everywhere, whatever each process's initialisation did
    if processes.world > 1:  # each process samples with its own stream (one process keeps the run's seed alone)
        torch.manual_seed(config.seed * processes.world + processes.rank)
    optimizer, scheduler = optimizer_for(config, params)
    source = batch_source(config, model, tokenizer, task, stream, processes)
    run = Training(config, model, tokenizer, task, held_out, stream, source, algorithm, reference, params, optimizer,
                   scheduler, processes, Path(config.out))
    if processes.is_main:
        save_config(config, run.out / "config.json")  # only now: a run that failed to start leaves nothing to clobber
        record_source(config, run.out)
    start = resume_run(run) if resume else 0
    if not resume and config.eval_every and processes.is_main:
        write_record(run.out / "metrics.jsonl", {"step": 0, **run.evaluate(0, progress=progress)})
    processes.wait()
    return run, start


def record_source(config: TrainConfig, out: Path) -> None:
    """For a model known by name, where its weights came from (``model_source.json``: the GGUF file and the sha256 of
    it and of the converted weights), so that a run says which weights it started from."""
    from companion.named_models import is_named, provenance

    if is_named(config.model):
        write_atomically(out / MODEL_SOURCE, json.dumps(provenance(config.model), indent=2) + "\n")


def enable_gradient_checkpointing(config: TrainConfig, model) -> None:
    """Recompute each block's activations in the backward pass (``gradient_checkpointing``). Active only in train
    mode, so sampling (which decodes in eval mode, with its cache) is untouched."""
    from companion.models import is_lora

    if not config.gradient_checkpointing:
        return
    model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    if is_lora(model):
        model.enable_input_require_grads()  # a frozen embedding's output must carry gradients into block 1


def resume_run(run: Training) -> int:
    """Restore the run's checkpoint (the previous one when the last cannot be read); records written after it belong
    to the interrupted attempt and are dropped (the resumed run writes them again). Returns the checkpoint's step."""
    path, _, note = usable_checkpoint(run.out)
    if note and run.processes.is_main:
        print(note, file=sys.stderr)
    parts = tuple(run.source.state or ()) + tuple(run.algorithm.state or ()) + tuple(run.reference.state or ())
    state = load_checkpoint(path, model=run.model, optimizer=run.optimizer, scheduler=run.scheduler,
                            processes=run.processes, parts=parts)
    run.stream.position = state["data_position"]
    run.source.load_state(state, next(run.model.parameters()).device)
    run.algorithm.load_state(state)
    run.reference.load_state(state)
    run.last_saved = state["step"]
    if run.processes.is_main:
        metrics = run.out / "metrics.jsonl"
        kept = [r for r in read_jsonl(metrics) if r["step"] <= state["step"]]
        write_atomically(metrics, "".join(json.dumps(r, allow_nan=False) + "\n" for r in kept))
    return state["step"]
