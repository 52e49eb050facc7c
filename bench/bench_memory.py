"""The planner's memory model against the memory a training step's tensors really take, measured on the CPU.

Chapter 8's planner (:func:`companion.planner.plan`) estimates a step's peak GPU memory from shapes alone. Where a
CUDA GPU is at hand, ``bench/bench_gpu.py`` checks its total against ``torch.cuda.max_memory_reserved``. This
bench checks the part that does not need one: the tensors. It runs real steps of ``companion.trainer.train`` on
the CPU under :class:`TensorMemory` (a dispatch mode that follows every tensor storage the step creates or
touches: weights, adapters, their gradients and AdamW's moments, the rollout, the KV cache, activations and
temporaries; torch's own ``MemTracker`` refuses a model with frozen parameters) and compares its peak with the
planner's *allocated* bytes: weights + trainable state + the largest of sampling, the update and the held-out
evaluation. It does the same for ``companion eval`` (:func:`companion.evaluate.evaluate`) against
:func:`companion.planner.plan_eval`. The CUDA context and the allocator's slack (``overhead``) are left out on both
sides; the CPU has neither.

The model is a random-init Qwen2 with the real 151,936-row vocabulary (the logits are most of a step's memory)
and a small body, so a step takes seconds on two cores. Every config changes one thing the planner says memory
grows with: the micro-batch, gradient checkpointing, the logit chunk, the completion length, the dtype, 4-bit.
A random model runs to the length cap, so every completion is as long as the planner assumes, and its flat
distributions send every row of the fast sampler's top-p through the sorting fallback: the worst case.

Two things differ from a GPU, and both are kernels, not tensors: the CPU's attention kernel and the 4-bit
layers' CPU path (bitsandbytes) may keep different temporaries than CUDA's.

    python bench/bench_memory.py                 # every config (about 10 minutes, 1 thread) -> data/memory/cpu.json
    python bench/bench_memory.py --only fp32-base --out /tmp/m.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

SHAPE = dict(name="qwen2-vocab-small-body", hidden_size=256, intermediate_size=1024, num_hidden_layers=4,
             num_attention_heads=4, num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True)
"""Qwen2.5's vocabulary, grouped-query attention and tied embeddings around a small body (widths multiples of 64
for bitsandbytes' CPU path)."""

BASE = dict(task="countdown", algo="grpo", lora=True, lora_r=16, load_in_4bit=False, gradient_checkpointing=False,
            micro_batch_size=0, logit_chunk_size=0, prompts_per_step=2, num_generations=4,
            max_completion_length=32, learning_rate=1e-5, dtype="float32", fast_sampler=True)
"""The first config: 8 completions of 32 tokens in one pass, float32, LoRA r 16, no memory savers, the trainer's
default (fast) sampler."""

HELD_OUT = dict(eval_every=1, eval_problems=8, eval_num_generations=4, gradient_checkpointing=True,
                micro_batch_size=2, logit_chunk_size=8)
"""A run that evaluates 8 held-out problems x 4 completions (32 rows, four times a step's) at steps 0, 1 and 2, with
the memory savers on, so that the evaluation is the peak."""

CONFIGS = {
    "fp32-base": {},
    "fp32-micro2": dict(micro_batch_size=2),
    "fp32-chunk8": dict(logit_chunk_size=8),
    "fp32-checkpointing": dict(gradient_checkpointing=True, micro_batch_size=2, logit_chunk_size=8),
    "fp32-long": dict(max_completion_length=96, micro_batch_size=2, logit_chunk_size=16),
    "fp32-sampling": dict(prompts_per_step=4, num_generations=8, max_completion_length=16, micro_batch_size=4,
                          logit_chunk_size=4, gradient_checkpointing=True),
    "fp32-sampling-exact": dict(prompts_per_step=4, num_generations=8, max_completion_length=16, micro_batch_size=4,
                                logit_chunk_size=4, gradient_checkpointing=True, fast_sampler=False),
    "fp32-sampling-top-p": dict(prompts_per_step=4, num_generations=8, max_completion_length=16, micro_batch_size=4,
                                logit_chunk_size=4, gradient_checkpointing=True, top_p=0.9),
    "bf16-base": dict(dtype="bfloat16"),
    "bf16-recipe": dict(dtype="bfloat16", gradient_checkpointing=True, micro_batch_size=2, logit_chunk_size=8),
    "4bit-recipe": dict(dtype="float32", load_in_4bit=True, gradient_checkpointing=True, micro_batch_size=2,
                        logit_chunk_size=8),
    "fp32-heldout": dict(HELD_OUT),
    "fp32-heldout-batch16": dict(HELD_OUT, eval_batch_size=16),
}
"""Each config is BASE with these changes."""

EVAL_BASE = dict(task="countdown", problems=4, num_generations=16, batch_size=32, max_completion_length=32,
                 temperature=1.0, top_p=0.95, fast_sampler=True)
"""The first ``companion eval`` config: 4 problems x 16 samples of 32 tokens, 32 samples per batch, the fast
sampler at its default top-p."""

EVAL_CONFIGS = {
    "eval-fast": {},
    "eval-slow": dict(fast_sampler=False),
    "eval-fast-top-p-1": dict(top_p=1.0),
    "eval-fast-batch64": dict(batch_size=64),
}
"""``companion eval`` configs: EVAL_BASE with these changes."""

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


class TensorMemory:
    """Bytes of the tensor storages alive, and their peak: every storage an operation returns while this is
    entered (a ``TorchDispatchMode``), plus those passed to :meth:`track` (a model's weights, made before).
    A storage counts once however many views share it, and stops counting when it is freed.
    :meth:`phase` starts a named window whose own peak is kept in ``phases``."""

    def __init__(self):
        import torch
        from torch.utils._python_dispatch import TorchDispatchMode
        from torch.utils._pytree import tree_leaves
        from torch.utils.weak import WeakIdKeyDictionary

        self.current = self.peak = 0
        self.phases: dict[str, int] = {}
        self._phase = None
        self._seen = WeakIdKeyDictionary()
        track = self.track

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                out = func(*args, **(kwargs or {}))
                track(*(t for t in tree_leaves(out) if isinstance(t, torch.Tensor)))
                return out

        self._mode = Mode()

    def track(self, *tensors) -> None:
        import weakref

        for t in tensors:
            if t.device.type == "meta":
                continue
            storage = t.untyped_storage()
            size = storage.nbytes()
            if size == 0 or storage in self._seen:
                continue
            self._seen[storage] = size
            weakref.finalize(storage, self._free, size)
            self.current += size
        self.peak = max(self.peak, self.current)
        if self._phase is not None:
            self.phases[self._phase] = max(self.phases.get(self._phase, 0), self.current)

    def _free(self, size: int) -> None:
        self.current -= size

    def phase(self, name: str | None) -> None:
        """Count the peak from here on (also) under ``name``; None ends the window."""
        self._phase = name
        if name is not None:
            self.phases[name] = max(self.phases.get(name, 0), self.current)

    def __enter__(self):
        self._mode.__enter__()
        return self

    def __exit__(self, *exc):
        return self._mode.__exit__(*exc)


ALL_CONFIGS = [*CONFIGS, *EVAL_CONFIGS]


def settings_of(name: str) -> dict:
    if name in CONFIGS:
        return {**BASE, **CONFIGS[name]}
    if name in EVAL_CONFIGS:
        return {**EVAL_BASE, **EVAL_CONFIGS[name]}
    raise ValueError(f"unknown config {name!r}: choose from {sorted(ALL_CONFIGS)}")


def planned(settings: dict, shape, prompt_length: int) -> dict:
    """The planner's parts (bytes) for ``settings`` (a training or an evaluation config) on a model of ``shape``
    (a :class:`companion.planner.ModelShape`) and its allocated total (the peak without ``overhead``)."""
    from companion.planner import EVAL_BATCH_ROWS, plan, plan_eval

    if "problems" in settings:  # companion eval: the model as loaded here (float32, no adapters)
        estimate = plan_eval(shape, batch_size=settings["batch_size"], num_generations=settings["num_generations"],
                             prompt_length=prompt_length, completion_length=settings["max_completion_length"],
                             dtype_bytes=4, fast=settings["fast_sampler"], top_p=settings["top_p"])
    else:
        evaluating = settings.get("eval_every", 0)
        estimate = plan(shape, prompts_per_step=settings["prompts_per_step"],
                        num_generations=settings["num_generations"], prompt_length=prompt_length,
                        completion_length=settings["max_completion_length"],
                        micro_batch_size=settings["micro_batch_size"], load_in_4bit=settings["load_in_4bit"],
                        lora_r=settings["lora_r"] if settings["lora"] else None,
                        gradient_checkpointing=settings["gradient_checkpointing"],
                        dtype_bytes=DTYPE_BYTES[settings["dtype"]], logit_chunk=settings["logit_chunk_size"],
                        top_p=settings.get("top_p", 1.0), fast=settings.get("fast_sampler", True),
                        eval_problems=settings.get("eval_problems", 0) if evaluating else 0,
                        eval_num_generations=settings.get("eval_num_generations", 0) if evaluating else 0,
                        eval_batch_size=settings.get("eval_batch_size", EVAL_BATCH_ROWS))
    parts = {k: getattr(estimate, k) for k in ("weights", "trainable", "sampling", "update", "evaluation")}
    return {**parts, "allocated": estimate.allocated}


def measure(model_dir: str, name: str, *, steps: int = 2) -> dict:
    """Train ``steps`` steps of config ``name`` from ``model_dir`` on the CPU under :class:`TensorMemory`: the
    peak bytes of the whole run, of the weights, and of each phase (sampling, the update), with the planner's
    estimate for the same config."""
    import torch
    from transformers import AutoConfig

    from bench_gpu import coin_flip_reward
    from companion.models import LoraSettings, load_policy
    from companion.planner import ModelShape
    from companion.tasks import CountdownTask
    from companion.train_setup import longest_prompt
    from companion.trainer import TrainConfig, train

    if name in EVAL_CONFIGS:
        return measure_eval(model_dir, name)
    settings = settings_of(name)
    dtype = getattr(torch, settings["dtype"])
    lora = LoraSettings(r=settings["lora_r"]) if settings["lora"] else None
    model, tokenizer = load_policy(model_dir, load_in_4bit=settings["load_in_4bit"], lora=lora, device="cpu",
                                   dtype=dtype)
    weights = sum(t.untyped_storage().nbytes() for t in {id(t): t for t in (*model.parameters(),
                                                                            *model.buffers())}.values())
    with tempfile.TemporaryDirectory() as out:
        config = TrainConfig(model=model_dir, steps=steps, save_every=0, out=out, device="cpu", num_threads=1,
                             **{"eval_every": 0, **settings})
        prompt = longest_prompt(config, tokenizer)
        estimate = planned(settings, ModelShape.from_config(AutoConfig.from_pretrained(model_dir)), prompt)
        memory = TensorMemory()
        memory.track(*model.parameters(), *model.buffers())
        t0 = time.perf_counter()
        reward, CountdownTask.reward = CountdownTask.reward, coin_flip_reward  # every group has a spread, so
        try:  # every completion goes through the update
            with memory, _phases(memory):
                run = train(config, model=model, tokenizer=tokenizer, progress=False)
        finally:
            CountdownTask.reward = reward
        wall = time.perf_counter() - t0
    measured = {"peak": memory.peak, "weights": weights, **memory.phases}
    lengths = [r["length"] for r in run.metrics if r.get("step", 0) > 0]
    return {"config": name, "settings": settings, "longest_prompt": prompt, "wall_s": round(wall, 1),
            "mean_length": sum(lengths) / len(lengths), "measured": measured, "planned": estimate,
            "ratio": memory.peak / estimate["allocated"]}


def measure_eval(model_dir: str, name: str) -> dict:
    """Run ``companion eval``'s :func:`companion.evaluate.evaluate` for config ``name`` from ``model_dir`` on the CPU
    under :class:`TensorMemory` (the weights loaded before it, as ``measure`` does): the peak bytes, the weights',
    and the sampling phase's, with :func:`companion.planner.plan_eval`'s estimate."""
    from transformers import AutoConfig

    from companion.evaluate import EvalConfig, evaluate, load_results, longest_prompt
    from companion.models import load_policy
    from companion.planner import ModelShape
    from companion.tasks import get_task

    settings = settings_of(name)
    model, tokenizer = load_policy(model_dir, device="cpu")
    weights = sum(t.untyped_storage().nbytes() for t in {id(t): t for t in (*model.parameters(),
                                                                            *model.buffers())}.values())
    with tempfile.TemporaryDirectory() as out:
        config = EvalConfig(model=model_dir, device="cpu", num_threads=1, out=out, **settings)
        task = get_task(config.task)
        problems = task.generate(config.problems, seed=config.problem_seed, split=config.split)
        prompt = longest_prompt(config, task, problems, tokenizer)
        estimate = planned(settings, ModelShape.from_config(AutoConfig.from_pretrained(model_dir)), prompt)
        memory = TensorMemory()
        memory.track(*model.parameters(), *model.buffers())
        t0 = time.perf_counter()
        with memory, _phases(memory, scoring=True):
            evaluate(config, model=model, tokenizer=tokenizer, progress=False)
        wall = time.perf_counter() - t0
        rows = load_results(out).rows
    lengths = [n for r in rows for n in r["lengths"]]
    measured = {"peak": memory.peak, "weights": weights, **memory.phases}
    return {"config": name, "settings": settings, "longest_prompt": prompt, "wall_s": round(wall, 1),
            "mean_length": sum(lengths) / len(lengths), "measured": measured, "planned": estimate,
            "ratio": memory.peak / estimate["allocated"]}


@contextlib.contextmanager
def _phases(memory: TensorMemory, *, scoring: bool = False):
    """Name the phases in ``memory`` while entered: the trainer's sampling, update and held-out evaluation, or with
    ``scoring``, ``companion eval``'s sampling (the held-out evaluation samples through the same function)."""
    from companion import evaluate, trainer
    from companion.train_setup import Training

    sample, update, held_out, score = trainer.sample, trainer.update, Training.evaluate, evaluate.score_problems

    def phased(name, fn):
        def run(*args, **kwargs):
            memory.phase(name)
            try:
                return fn(*args, **kwargs)
            finally:
                memory.phase(None)
        return run

    if scoring:
        evaluate.score_problems = phased("sampling", score)
    else:
        trainer.sample, trainer.update = phased("sampling", sample), phased("update", update)
        Training.evaluate = phased("evaluation", held_out)
    try:
        yield
    finally:
        trainer.sample, trainer.update, Training.evaluate, evaluate.score_problems = sample, update, held_out, score


def write_model(shape, path: Path) -> Path:
    """A random-init Qwen2 of ``shape`` (a :class:`companion.planner.ModelShape`) and its tokenizer, in ``path``."""
    from bench_gpu import write_model

    return write_model(shape, path)


def write_shape(path: Path) -> Path:
    """:data:`SHAPE`'s model, in ``path``."""
    from companion.planner import ModelShape

    return write_model(ModelShape(**SHAPE), path)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="data/memory/cpu.json",
                        help="JSON file to (re)write after each config (default: the committed one, which chapter 8 "
                             "reads)")
    parser.add_argument("--only", nargs="+", default=ALL_CONFIGS, metavar="CONFIG",
                        help=f"configs to run (default: all of {', '.join(ALL_CONFIGS)})")
    parser.add_argument("--steps", type=int, default=2, help="training steps per config (default 2: the second "
                                                             "step has AdamW's moments as well)")
    args = parser.parse_args(argv)
    unknown = [c for c in args.only if c not in ALL_CONFIGS]
    if unknown:
        parser.error(f"unknown config(s) {unknown}: choose from {sorted(ALL_CONFIGS)}")
    if args.steps < 1:
        parser.error("--steps must be at least 1")
    import torch

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    command = "python bench/bench_memory.py" + ("" if args.only == ALL_CONFIGS else " --only " + " ".join(args.only))
    report = {"shape": SHAPE, "base": BASE, "eval_base": EVAL_BASE, "steps": args.steps, "torch": torch.__version__,
              "command": command, "runs": []}
    with tempfile.TemporaryDirectory() as work:
        model_dir = str(write_shape(Path(work) / "model"))
        for name in args.only:
            entry = measure(model_dir, name, steps=args.steps)
            report["runs"].append(entry)
            out.write_text(json.dumps(report, indent=1) + "\n")
            m, p = entry["measured"]["peak"], entry["planned"]["allocated"]
            print(f"{name:20s} measured {m / 2**20:8.1f} MiB  planned {p / 2**20:8.1f} MiB  "
                  f"ratio {entry['ratio']:.2f}  ({entry['wall_s']:.0f} s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
