"""Speed of ``companion eval``'s sampler on the tiny base model, on this CPU.

Reports samples/s and tokens/s (completion tokens, EOS included) for:

1. four ways to sample the same problems: ``model.generate``-style rollouts
   (:func:`companion.rollout.generate`), the eval sampler re-encoding the prompt for every sample, the eval
   sampler without dropping finished rows, and the eval sampler as ``companion eval`` runs it;
2. the eval sampler's batch size (samples decoded together) and torch's thread count;
3. a real chunk of ``companion eval --num-generations 256`` (a few Countdown problems, through :func:`evaluate`), and the
   time that extrapolates to for 200 problems.

Wall time is what a user waits; CPU time (this process's user + system time) is less disturbed when other
processes share the cores, so both are printed, each the best of ``--repeats`` runs. With no tiny checkpoint built yet, a random model of the
tiny model's size stands in: it rarely emits EOS, so most completions run to the length cap.

    python bench/bench_eval.py                          # the tiny base model ("tiny"), 2 problems x 256
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


def report(label: str, result: tuple[float, float, int, int]) -> None:
    wall, cpu, samples, tokens = result
    print(f"  {label:<48s} {samples / wall:7.1f} samples/s {tokens / wall:8.0f} tokens/s   "
          f"(wall {wall:6.1f} s, CPU {cpu:6.1f} s, {tokens / samples:5.1f} tokens/sample)", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny", help="'tiny', a model directory, or a hub name")
    parser.add_argument("--problems", type=int, default=2, help="Countdown problems per comparison")
    parser.add_argument("--n", type=int, default=256, help="samples per problem")
    parser.add_argument("--max-completion-length", type=int, default=200)
    parser.add_argument("--temperature", type=float, default=0.6)
    parser.add_argument("--top-p", type=float, default=0.95)
    parser.add_argument("--threads", type=int, default=1, help="torch threads for sections 1 and 3")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[64, 128, 256, 512, 1024])
    parser.add_argument("--chunk-problems", type=int, default=3, help="problems of the real eval chunk (section 3)")
    parser.add_argument("--repeats", type=int, default=2, help="runs per measurement; the best time is kept")
    parser.add_argument("--skip", nargs="*", default=[], choices=["variants", "batch", "threads", "chunk"])
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

    def ours(batch_size: int = 256):
        results = sampler.sample_completions(model, tokenizer, prompts, args.n, seeds=seeds, batch_size=batch_size,
                                             **sampling)
        return sum(len(r) for r in results), sum(c.length for r in results for c in r)

    if "variants" not in args.skip:
        print(f"\n1. four samplers, batches of 256 samples, {args.threads} thread(s)")

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
                                                 batch_size=256, **sampling)
            return len(results), sum(r[0].length for r in results)

        def without_dropping():
            with never_drop_rows():
                return ours()

        with torch_threads(args.threads):
            report("rollout.generate (the trainers' sampler)", timed(rollouts, args.repeats))
            report("eval sampler, prompt encoded for every sample", timed(prompt_per_sample, args.repeats))
            report("eval sampler, finished rows kept", timed(without_dropping, args.repeats))
            report("eval sampler (companion eval)", timed(ours, args.repeats))

    if "batch" not in args.skip:
        print(f"\n2a. eval sampler by batch size, {args.threads} thread(s)")
        with torch_threads(args.threads):
            for batch_size in args.batch_sizes:
                report(f"batch_size {batch_size}", timed(lambda: ours(batch_size), args.repeats))
    if "threads" not in args.skip:
        print("\n2b. eval sampler by torch threads, batch_size 256")
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
                  f"{config.batch_size}, {args.threads} thread(s)), through evaluate()")
            start = time.perf_counter()
            summary = evaluate(config, model=model, tokenizer=tokenizer, progress=False)
            elapsed = time.perf_counter() - start
        per_problem = elapsed / args.chunk_problems
        print(f"  {summary['samples']} samples in {elapsed:.1f} s: {summary['samples_per_s']:.1f} samples/s, "
              f"{summary['tokens_per_s']:.0f} tokens/s, {summary['length']['mean']:.1f} tokens/sample, "
              f"{summary['truncated_fraction']:.1%} cut at the length cap")
        print(f"  n = {args.n} on 200 problems: about {200 * per_problem / 60:.0f} min "
              f"({per_problem:.1f} s per problem, scoring and writing included)")
    print("\nThe cores are shared with other processes: compare rows of one run, not runs of different days.")


if __name__ == "__main__":
    main()
