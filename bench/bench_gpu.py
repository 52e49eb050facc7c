"""GRPO steps of Qwen2.5-0.5B and -1.5B shapes in 4-bit with LoRA on a CUDA GPU: peak memory, seconds per step and
generation tokens per second, against the planner's estimate (chapter 8).

Memory and time depend on a model's shapes, not on its weights' values, so the models are random-init Qwen2s of
the exact shapes in :data:`companion.planner.MODELS` (151,936-row vocabulary, grouped-query attention, tied
embeddings), written to a directory and trained from it through ``companion.trainer.train`` as chapter 8's
recipe runs them: 4-bit nf4 + LoRA r 16, gradient checkpointing, micro-batches of 4, the head in chunks of 64,
8 Countdown prompts x 8 completions of up to 512 tokens. No hub is needed. Two things differ from a real run:

* the tokenizer is the tiny model's byte-level one, padded with filler tokens to the real vocabulary
  (:func:`companion.tiny.build_tokenizer`), so prompts are one token per character;
* a random model almost never samples its EOS, so every completion runs to the length cap (a real run's are
  shorter): the worst case. Its reward is a coin flip per completion (a hash of its text), so groups have a
  spread and every completion goes through the update, the worst case there too.

Once per model it also times ``companion eval``'s sampler (the fast shared-prompt path, without 4-bit, as
``companion eval`` loads a model): 8 problems x 16 samples of up to 512 tokens, one batch.

Each (model, dtype) runs in its own process (a fresh CUDA context, so the peaks do not mix); the first step is
warm-up and is left out of the medians. The JSON is rewritten after each run, so a run cut short keeps what
finished. An error (a dtype mismatch, say) is recorded with the run, not raised.

    python bench/bench_gpu.py --out bench/gpu.json                  # on a CUDA machine
    python bench/bench_gpu.py --smoke --out /tmp/gpu-smoke.json     # tiny shapes on the CPU: the plumbing

``scripts/gpu_bench.sh`` has the command that runs it on a lent GPU machine with no network.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RECIPE = dict(task="countdown", algo="grpo", lora=True, load_in_4bit=True, gradient_checkpointing=True,
              micro_batch_size=4, logit_chunk_size=64, prompts_per_step=8, num_generations=8,
              max_completion_length=512, learning_rate=1e-5)
"""Chapter 8's recipe (its first command), on Countdown, whose prompts need no download."""
SMOKE = dict(RECIPE, micro_batch_size=2, logit_chunk_size=8, prompts_per_step=2, num_generations=4,
             max_completion_length=16)
SMOKE_SHAPE = dict(name="smoke", hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                   num_key_value_heads=2, vocab_size=1024, tie_word_embeddings=True)
"""Widths that are multiples of 64, as bitsandbytes' CPU path needs."""
EVAL = dict(problems=8, num_generations=16, max_completion_length=512)
"""``companion eval``'s sampler at chapter 7's temperature and top-p (its defaults): 128 samples, one batch."""
SMOKE_EVAL = dict(problems=2, num_generations=4, max_completion_length=16)
DEFAULT_MODELS = ("Qwen/Qwen2.5-0.5B", "Qwen/Qwen2.5-1.5B")
DEFAULT_DTYPES = ("bfloat16", "float16")


def write_model(shape, path: Path, *, seed: int = 0) -> Path:
    """A random-init Qwen2 of ``shape`` (a :class:`companion.planner.ModelShape`) and its tokenizer, saved to
    ``path`` (bf16 safetensors on a GPU machine, float32 otherwise)."""
    import torch
    from transformers import AutoModelForCausalLM, Qwen2Config

    from companion.tiny import build_tokenizer

    tokenizer = build_tokenizer(model_max_length=4096, vocab_size=shape.vocab_size)
    config = Qwen2Config(vocab_size=shape.vocab_size, hidden_size=shape.hidden_size,
                         intermediate_size=shape.intermediate_size, num_hidden_layers=shape.num_hidden_layers,
                         num_attention_heads=shape.num_attention_heads,
                         num_key_value_heads=shape.num_key_value_heads, tie_word_embeddings=shape.tie_word_embeddings,
                         max_position_embeddings=4096, rope_theta=1_000_000.0, pad_token_id=tokenizer.pad_token_id,
                         eos_token_id=tokenizer.eos_token_id, bos_token_id=None)
    on_gpu = torch.cuda.is_available()
    torch.manual_seed(seed)
    with torch.device("cuda" if on_gpu else "cpu"):  # initialising 1.5B weights on the GPU takes seconds
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16 if on_gpu else torch.float32)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    del model
    if on_gpu:
        torch.cuda.empty_cache()
    return path


def coin_flip_reward(self, completion: str, problem) -> float:
    """1 or 0 by a hash of the completion's text: about half of each group, whatever a random model writes."""
    return float(hashlib.sha256(completion.encode()).digest()[0] & 1)


def measure_one(model_dir: str, dtype: str, steps: int, settings: dict) -> dict:
    """Train ``steps`` steps of ``settings`` from ``model_dir`` in ``dtype``; the run's times, memory and plan."""
    import torch
    from transformers import AutoConfig, AutoTokenizer

    from companion.tasks import CountdownTask
    from companion.train_setup import longest_prompt, memory_plan
    from companion.trainer import TrainConfig, train

    CountdownTask.reward = coin_flip_reward
    on_gpu = torch.cuda.is_available()
    with tempfile.TemporaryDirectory() as out:
        config = TrainConfig(model=model_dir, dtype=dtype, steps=steps, eval_every=0, save_every=0, out=out,
                             device="cuda" if on_gpu else "cpu", **settings)
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        prompt = longest_prompt(config, tokenizer)
        estimate = memory_plan(config, AutoConfig.from_pretrained(model_dir), prompt)
        if on_gpu:
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        run = train(config, progress=False)
        wall = time.perf_counter() - t0
        changed = _adapters_moved(run.model)
    steps_ = [r for r in run.metrics if r.get("step", 0) > 0]
    timed = steps_[1:] or steps_  # the first step is warm-up
    keys = ("step_time", "time_generate", "time_forward", "time_backward", "length", "loss", "frac_truncated")
    return {
        "steps": [{k: r.get(k) for k in ("step",) + keys} for r in steps_],
        "median_step_s": statistics.median(r["step_time"] for r in timed),
        "median_generate_s": statistics.median(r["time_generate"] for r in timed),
        "median_update_s": statistics.median(r["time_forward"] + r["time_backward"] for r in timed),
        "generated_tokens_per_s": statistics.median(r["gen_tokens_per_s"] for r in timed),
        "wall_s": wall,
        "finite": all(math.isfinite(r["loss"]) for r in steps_),
        "adapters_moved": changed,
        "longest_prompt": prompt,
        "peak_reserved_gib": torch.cuda.max_memory_reserved() / 2**30 if on_gpu else None,
        "peak_allocated_gib": torch.cuda.max_memory_allocated() / 2**30 if on_gpu else None,
        "planned_gib": estimate.gib(),
    }


def measure_eval(model_dir: str, settings: dict) -> dict:
    """``companion eval``'s sampler (the fast, shared-prompt path) on ``settings["problems"]`` Countdown problems x
    ``num_generations``, loaded as ``companion eval`` loads a model (no 4-bit; bf16 on a GPU that has it, else fp16;
    float32 on a CPU): samples and tokens per second, and the peak memory."""
    import torch

    from companion.evaluate import EvalConfig, evaluate

    on_gpu = torch.cuda.is_available()
    with tempfile.TemporaryDirectory() as out:
        config = EvalConfig(model=model_dir, task="countdown", out=out, device="cuda" if on_gpu else "cpu", **settings)
        if on_gpu:
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        summary = evaluate(config, progress=False)
        wall = time.perf_counter() - t0
    samples = summary["num_problems"] * summary["num_generations"]
    return {"samples": samples, "wall_s": wall, "samples_per_s": summary["samples_per_s"],
            "tokens_per_s": summary["samples_per_s"] * summary["tokens"] / samples,
            "mean_length": summary["tokens"] / samples,
            "peak_reserved_gib": torch.cuda.max_memory_reserved() / 2**30 if on_gpu else None,
            "planned_peak_gib": _planned_eval(config) / 2**30}


def _planned_eval(config) -> int:
    """The planner's peak for ``config``'s evaluation (:func:`companion.evaluate.batch_plan`), at the batch it ran on
    a GPU: ``GPU_BATCH_SIZE`` samples, or all of them if fewer."""
    from companion.evaluate import GPU_BATCH_SIZE, batch_plan, longest_prompt
    from companion.models import read_model_files
    from companion.tasks import get_task

    files = read_model_files(config.model)
    task = get_task(config.task)
    problems = task.generate(config.problems, seed=config.problem_seed, split=config.split)
    longest = longest_prompt(config, task, problems, files.tokenizer)
    return batch_plan(config, files, longest, min(GPU_BATCH_SIZE, config.problems * config.num_generations)).peak


def _adapters_moved(model) -> bool:
    """Whether any LoRA B matrix left its zero initialisation (the update reached the adapters)."""
    return any(p.detach().abs().max().item() > 0 for n, p in model.named_parameters() if "lora_B" in n)


def _child(args) -> None:
    settings = json.loads(args.settings)
    try:
        if args.eval:
            result = measure_eval(args.model_dir, settings)
        else:
            result = measure_one(args.model_dir, args.dtype, args.steps, settings)
    except Exception as err:  # recorded with the run: a dtype mismatch is a finding, not a crash of the bench
        result = {"error": f"{type(err).__name__}: {err}"}
    print("RESULT " + json.dumps(result), flush=True)


def _environment() -> dict:
    import importlib.metadata as md

    import torch

    env = {"python": sys.version.split()[0], "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
           "cuda": torch.version.cuda}
    for name in ("torch", "transformers", "peft", "bitsandbytes", "accelerate"):
        try:
            env[name] = md.version(name)
        except md.PackageNotFoundError:
            env[name] = None
    return env


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="JSON file to (re)write after each run")
    parser.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS), help="names in companion.planner.MODELS")
    parser.add_argument("--dtypes", nargs="+", default=list(DEFAULT_DTYPES), help="compute dtypes to run each model in")
    parser.add_argument("--steps", type=int, default=3, help="training steps per run (the first is warm-up)")
    parser.add_argument("--timeout", type=float, default=240, help="seconds one run may take before it is stopped")
    parser.add_argument("--smoke", action="store_true", help="tiny shapes on the CPU (float32): the plumbing only")
    parser.add_argument("--no-eval", dest="with_eval", action="store_false",
                        help="skip the measurement of companion eval's sampler (once per model, in its default dtype)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--eval", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", help=argparse.SUPPRESS)
    parser.add_argument("--dtype", help=argparse.SUPPRESS)
    parser.add_argument("--settings", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        _child(args)
        return 0

    from companion.planner import MODELS, ModelShape

    if args.steps < 2:
        parser.error("--steps must be at least 2: the first step is warm-up")
    if args.smoke:
        shapes, dtypes, settings = [ModelShape(**SMOKE_SHAPE)], ["float32"], SMOKE
        eval_settings = SMOKE_EVAL
    else:
        eval_settings = EVAL
        unknown = [m for m in args.models if m not in MODELS]
        if unknown:
            parser.error(f"unknown model(s) {unknown}: choose from {sorted(MODELS)}")
        shapes, dtypes, settings = [MODELS[m] for m in args.models], args.dtypes, RECIPE
    out = Path(args.out)
    from companion.planner import CONTEXT_BYTES

    report = {"environment": _environment(), "settings": settings, "steps": args.steps,
              "note": "planned_gib's peak counts the CUDA context (companion.planner.CONTEXT_BYTES, "
                      f"{CONTEXT_BYTES / 2**30:g} GiB), which torch's max_memory_reserved does not",
              "runs": []}
    with tempfile.TemporaryDirectory() as work:
        for shape in shapes:
            t = time.perf_counter()
            model_dir = write_model(shape, Path(work) / shape.name.replace("/", "--"))
            print(f"{shape.name}: random weights written in {time.perf_counter() - t:.0f} s", flush=True)
            for dtype in dtypes:
                entry = {"model": shape.name, "dtype": dtype, **_run_child(model_dir, dtype, args, settings)}
                report["runs"].append(entry)
                out.write_text(json.dumps(report, indent=1) + "\n")
                print(_summary(entry), flush=True)
            if args.with_eval:
                entry = {"model": shape.name, "dtype": "auto",
                         **_run_child(model_dir, "auto", args, eval_settings, evaluation=True)}
                report.setdefault("evals", []).append(entry)
                out.write_text(json.dumps(report, indent=1) + "\n")
                print(_eval_summary(entry), flush=True)
    return 0


def _run_child(model_dir: Path, dtype: str, args, settings: dict, *, evaluation: bool = False) -> dict:
    command = [sys.executable, __file__, "--child", "--out", "-", "--model-dir", str(model_dir), "--dtype", dtype,
               "--steps", str(args.steps), "--settings", json.dumps(settings)] + (["--eval"] if evaluation else [])
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=args.timeout, env=os.environ.copy())
    except subprocess.TimeoutExpired:
        return {"error": f"stopped after {args.timeout:.0f} s (--timeout)"}
    for line in done.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    return {"error": f"exit {done.returncode}: {done.stderr.strip()[-2000:]}"}


def _eval_summary(entry: dict) -> str:
    head = f"{entry['model']} {entry['dtype']}, companion eval:"
    if "error" in entry:
        return f"{head} {entry['error']}"
    peak = "" if entry["peak_reserved_gib"] is None else f", peak reserved {entry['peak_reserved_gib']:.2f} GiB"
    return (f"{head} {entry['samples']} samples of {entry['mean_length']:.0f} tokens, {entry['samples_per_s']:.1f} "
            f"samples/s, {entry['tokens_per_s']:.0f} tokens/s{peak}, planned {entry['planned_peak_gib']:.2f} GiB")


def _summary(entry: dict) -> str:
    head = f"{entry['model']} {entry['dtype']}:"
    if "error" in entry:
        return f"{head} {entry['error']}"
    peak = entry["peak_reserved_gib"]
    measured = "" if peak is None else f"peak reserved {peak:.2f} GiB, "
    return (f"{head} {entry['median_step_s']:.1f} s/step (sampling {entry['median_generate_s']:.1f} s, update "
            f"{entry['median_update_s']:.1f} s), {entry['generated_tokens_per_s']:.0f} generated tokens/s, "
            f"{measured}planned {entry['planned_gib']['peak']:.2f} GiB, finite={entry['finite']}, "
            f"adapters moved={entry['adapters_moved']}")


if __name__ == "__main__":
    sys.exit(main())
