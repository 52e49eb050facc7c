"""Speed of ``companion eval``'s sampler on the tiny base model, on this CPU.

Reports samples/s and tokens/s (completion tokens, EOS included) for:

1. six ways to sample the same problems: ``model.generate``-style rollouts (:func:`companion.rollout.generate`),
   the eval sampler re-encoding the prompt for every sample, the eval sampler without dropping finished rows, the
   eval sampler's default path (transformers' attention, a sorted nucleus: ``companion eval --no-fast-sampler``,
   what ``companion eval`` ran before the fast path, at its old default batch of 512), and the fast path
   (:func:`companion.decode.decode` with ``fast``) at the same batch and at ``companion eval``'s CPU default of
   1024; the last three are timed in alternation (A B C A B C ...), best of ``--repeats`` each;
2. the eval sampler's batch size (samples decoded together), both paths, and torch's thread count;
3. a real chunk of ``companion eval --num-generations 256`` (a few Countdown problems, through :func:`evaluate`), and the
   time that extrapolates to for 200 problems;
4. the machine's limit: this CPU's float32 matrix-multiply rate on one thread, the model's FLOPs per sampled token,
   and the tokens/s those allow, against what the sampler reaches.

Wall time is what a user waits; CPU time (this process's user + system time) is less disturbed when other
processes share the cores, so both are printed, each the best of ``--repeats`` runs. With no tiny checkpoint built yet, a random model of the
tiny model's size stands in: it rarely emits EOS, so most completions run to the length cap.

    python bench/bench_eval.py                          # the tiny base model ("tiny"), 8 problems x 256
    python bench/bench_eval.py --model DIR --problems 4 --chunk-problems 5
"""

from __future__ import annotations

import argparse
import tempfile
import time
from contextlib import contextmanager

import torch

from companion import decode, sampler
from companion.evaluate import EvalConfig, evaluate, problem_seed
from companion.rollout import generate
from companion.runs import torch_threads
from companion.tasks import get_task


def load_model(name: str):
    """The model to time, and a description of it."""
    from companion.tiny import tiny_dir

    if name != "tiny" or (tiny_dir() / "config.json").exists():
        from companion.models import load_policy

        model, tokenizer = load_policy(name, device="cpu")
        return model.eval(), tokenizer, f"{name} ({tiny_dir() if name == 'tiny' else name})"
    from companion.pretrain import PretrainConfig
    from companion.tiny import build_tokenizer, random_model

    defaults = PretrainConfig()
    tokenizer = build_tokenizer()
    model = random_model(tokenizer, hidden_size=defaults.hidden_size, num_hidden_layers=defaults.num_hidden_layers,
                         num_attention_heads=defaults.num_attention_heads, intermediate_size=defaults.intermediate_size,
                         num_key_value_heads=defaults.num_key_value_heads, max_position_embeddings=defaults.context)
    return model.eval(), tokenizer, "a RANDOM model of the tiny model's size (no checkpoint built yet)"


@contextmanager
def never_drop_rows():
    previous = decode.COMPACT_FRACTION
    decode.COMPACT_FRACTION = float("inf")
    try:
        yield
    finally:
        decode.COMPACT_FRACTION = previous


def timed(run, repeats: int) -> tuple[float, float, int, int]:
    """(wall s, CPU s, samples, tokens) of ``run()``, which returns (samples, tokens); the best wall and the best
    CPU time of ``repeats`` runs (other processes only ever add time)."""
    walls, cpus = [], []
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        samples, tokens = run()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return min(walls), min(cpus), samples, tokens


def alternated(runs, repeats: int) -> list[tuple[float, float, int, int]]:
    """:func:`timed` for several ``runs``, taken in turn ``repeats`` times (A B A B ...): a slow spell of the machine
    then falls on all of them, not on one."""
    results = [[] for _ in runs]
    for _ in range(repeats):
        for result, run in zip(results, runs):
            result.append(timed(run, 1))
    return [(min(r[0] for r in rs), min(r[1] for r in rs), rs[0][2], rs[0][3]) for rs in results]


def matmul_rate(shape: tuple[int, int, int], seconds: float = 1.0) -> float:
    """float32 FLOP/s of ``(m, k) @ (k, n)`` on the current thread count, best of repeated timings."""
    m, k, n = shape
    a, b = torch.randn(m, k), torch.randn(k, n)
    best, deadline = float("inf"), time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        start = time.perf_counter()
        for _ in range(10):
            a @ b
        best = min(best, (time.perf_counter() - start) / 10)
    return 2 * m * k * n / best


def flops_per_token(model, context: float) -> float:
    """Forward FLOPs of one decoded token: 2 per weight of every matrix (embedding lookup excluded, the output
    head included) plus the attention over ``context`` earlier tokens (scores and weighted sum, every layer)."""
    config = model.config
    matrices = sum(p.numel() for name, p in model.named_parameters() if p.ndim == 2 and "embed_tokens" not in name)
    if getattr(config, "tie_word_embeddings", False):
        matrices += model.get_output_embeddings().weight.numel()
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    attention = 4 * config.num_hidden_layers * config.num_attention_heads * head_dim * context
    return 2 * matrices + attention


def report(label: str, result: tuple[float, float, int, int]) -> None:
    wall, cpu, samples, tokens = result
    print(f"  {label:<48s} {samples / wall:7.1f} samples/s {tokens / wall:8.0f} tokens/s   "
          f"(wall {wall:6.1f} s, CPU {cpu:6.1f} s, {tokens / samples:5.1f} tokens/sample)", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny", help="'tiny', a model directory, or a hub name")
    parser.add_argument("--problems", type=int, default=8, help="Countdown problems per comparison (8 x 256: two batches of 1024)")
    parser.add_argument("--n", type=int, default=256, help="samples per problem")
    parser.add_argument("--max-completion-length", type=int, default=200)
    parser.add_argument("--temperature", type=float, default=0.6)
    parser.add_argument("--top-p", type=float, default=0.95)
    parser.add_argument("--threads", type=int, default=1, help="torch threads for sections 1 and 3")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[256, 512, 1024, 2048])
    parser.add_argument("--chunk-problems", type=int, default=3, help="problems of the real eval chunk (section 3)")
    parser.add_argument("--repeats", type=int, default=2, help="runs per measurement; the best time is kept")
    parser.add_argument("--skip", nargs="*", default=[], choices=["variants", "batch", "threads", "chunk", "limit"])
    args = parser.parse_args()

    model, tokenizer, description = load_model(args.model)
    task = get_task("countdown")
    problems = task.generate(args.problems, seed=0, split="test")
    prompts = [task.prompt(p) for p in problems]
    seeds = [problem_seed(0, i) for i in range(len(prompts))]
    sampling = dict(max_completion_length=args.max_completion_length, temperature=args.temperature, top_p=args.top_p)
    print(f"model: {description}, {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters")
    print(f"{args.problems} Countdown test problems x n = {args.n}, T = {args.temperature}, top-p = {args.top_p}, "
          f"max_completion_length = {args.max_completion_length}; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads by default")

    def ours(batch_size: int = 1024, fast: bool = True):
        results = sampler.sample_completions(model, tokenizer, prompts, args.n, seeds=seeds, batch_size=batch_size,
                                             fast=fast, **sampling)
        return sum(len(r) for r in results), sum(c.length for r in results for c in r)

    if "variants" not in args.skip:
        print(f"\n1. six samplers, batches of 256 samples unless said, {args.threads} thread(s)")

        def rollouts():
            per_call = max(1, 256 // args.n)
            samples = tokens = 0
            for start in range(0, len(prompts), per_call):
                rollout = generate(model, tokenizer, prompts[start:start + per_call], num_generations=args.n,
                                   seed=start, return_logps=False, **sampling)
                samples, tokens = samples + len(rollout.texts), tokens + int(rollout.lengths.sum())
            return samples, tokens

        def prompt_per_sample():
            repeated = [p for p in prompts for _ in range(args.n)]
            results = sampler.sample_completions(model, tokenizer, repeated, 1, seeds=list(range(len(repeated))),
                                                 batch_size=256, fast=False, **sampling)
            return len(results), sum(r[0].length for r in results)

        def without_dropping():
            with never_drop_rows():
                return ours(512, fast=False)

        with torch_threads(args.threads):
            report("rollout.generate (the trainers' sampler)", timed(rollouts, args.repeats))
            report("eval sampler, prompt encoded for every sample", timed(prompt_per_sample, args.repeats))
            report("eval sampler, finished rows kept", timed(without_dropping, args.repeats))
            before, same_batch, after = alternated([lambda: ours(512, fast=False), lambda: ours(512), ours],
                                                   args.repeats)
            report("eval sampler, default path, batch 512 (before)", before)
            report("eval sampler, fast path, batch 512", same_batch)
            report("eval sampler, fast path, batch 1024 (companion eval)", after)
            for label, result in (("at the same batch of 512", same_batch), ("as companion eval runs", after)):
                print(f"  fast path against the default path, {label}: {before[0] / result[0]:.2f}x samples/s "
                      f"(wall), {before[1] / result[1]:.2f}x (CPU)")

    if "batch" not in args.skip:
        print(f"\n2a. eval sampler by batch size, {args.threads} thread(s)")
        with torch_threads(args.threads):
            for batch_size in args.batch_sizes:
                for fast in (False, True):
                    report(f"batch_size {batch_size}, {'fast' if fast else 'default'} path",
                           timed(lambda: ours(batch_size, fast), args.repeats))
    if "threads" not in args.skip:
        print("\n2b. eval sampler by torch threads, fast path, batch_size 1024")
        for count in sorted({1, 2, torch.get_num_threads()}):
            with torch_threads(count):
                report(f"{count} thread(s)", timed(ours, args.repeats))

    if "chunk" not in args.skip:
        with tempfile.TemporaryDirectory() as out:
            config = EvalConfig(model=args.model, problems=args.chunk_problems, num_generations=args.n,
                                num_threads=args.threads,
                                temperature=args.temperature, top_p=args.top_p,
                                max_completion_length=args.max_completion_length, out=out)
            print(f"\n3. companion eval --num-generations {args.n} on {args.chunk_problems} problems (batch_size "
                  f"{config.rows_per_batch('cpu')}, {args.threads} thread(s)), through evaluate()")
            start = time.perf_counter()
            summary = evaluate(config, model=model, tokenizer=tokenizer, progress=False)
            elapsed = time.perf_counter() - start
        per_problem = elapsed / args.chunk_problems
        print(f"  {summary['samples']} samples in {elapsed:.1f} s: {summary['samples_per_s']:.1f} samples/s, "
              f"{summary['tokens_per_s']:.0f} tokens/s, {summary['length']['mean']:.1f} tokens/sample, "
              f"{summary['truncated_fraction']:.1%} cut at the length cap")
        print(f"  n = {args.n} on 200 problems: about {200 * per_problem / 60:.0f} min "
              f"({per_problem:.1f} s per problem, scoring and writing included)")
    if "limit" not in args.skip:
        with torch_threads(args.threads):
            shapes = {"decode-step shape (512 x 128) @ (128 x 384)": (512, 128, 384),
                      "large (1024 x 1024) @ (1024 x 1024)": (1024, 1024, 1024)}
            rates = {label: matmul_rate(shape) for label, shape in shapes.items()}
            start = time.perf_counter()
            samples, tokens = ours()
            reached = tokens / (time.perf_counter() - start)
        prompt_tokens = sum(len(tokenizer(p, add_special_tokens=False)["input_ids"]) for p in prompts) / len(prompts)
        per_token = flops_per_token(model, context=prompt_tokens + tokens / samples / 2)
        print(f"\n4. the machine's limit, {args.threads} thread(s): {per_token / 1e6:.2f} MFLOP per sampled token "
              f"(weights, and attention over a mean context of {prompt_tokens + tokens / samples / 2:.0f} tokens)")
        for label, rate in rates.items():
            print(f"  matmul {label}: {rate / 1e9:6.1f} GFLOP/s -> at most {rate / per_token:7.0f} tokens/s")
        print(f"  the sampler reached {reached:.0f} tokens/s: {reached * per_token / 1e9:.1f} GFLOP/s, "
              f"{reached / (max(rates.values()) / per_token):.0%} of the best matmul rate")
    print("\nThe cores are shared with other processes: compare rows of one run, not runs of different days.")


if __name__ == "__main__":
    main()
