"""What the tiny model's size, thread count and prompt sharing cost per pretraining step.

The measurements behind the defaults of ``companion.pretrain.PretrainConfig``: CPU seconds per optimizer step
(process time, which a busy shared machine inflates less than wall time) for a few model sizes, with one and
two torch threads, with and without running each prompt once for its group of traces.

    python bench/bench_pretrain.py                     # the default grid, a few minutes
    python bench/bench_pretrain.py --sizes 96,3,384 128,3,384 --steps 5
    python bench/bench_pretrain.py --sizes 96,3,384 --threads 2 --batch-size 8 --steps 40 --traces-per-problem 1 2
"""

from __future__ import annotations

import argparse
import random
import time

import torch

from companion import pretrain, tiny
from companion.rollout import per_token_logps


def step_cost(sizes: dict, corpus, *, threads: int, shared: bool, steps: int, batch_size: int) -> tuple[float, float]:
    """(CPU seconds, wall seconds) per AdamW step, after one warm-up step."""
    torch.set_num_threads(threads)
    tokenizer = tiny.build_tokenizer()
    model = tiny.random_model(tokenizer, **sizes)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    encoded = pretrain.encode_corpus(tokenizer, corpus, tiny.DEFAULT_CONTEXT)
    k = len(corpus[0].completions)
    batches = pretrain._batches(encoded, batch_size // k, random.Random(0))
    for i, indices in enumerate(batches[:steps + 1]):
        if i == 1:
            cpu, wall = time.process_time(), time.perf_counter()
        prompt_ids, prompt_mask, completion_ids, completion_mask = pretrain._collate(encoded, indices, tokenizer.pad_token_id)
        logps = per_token_logps(model, prompt_ids, prompt_mask, completion_ids, completion_mask, share_prompts=shared)
        loss = -(logps * completion_mask).sum() / completion_mask.sum()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return (time.process_time() - cpu) / steps, (time.perf_counter() - wall) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=["64,2,256", "96,3,384", "128,3,384", "128,4,512", "192,4,768"],
                        help="hidden,layers,intermediate triples")
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--traces-per-problem", nargs="+", type=int, default=[1],
                        help="noisy traces per problem in a batch (PretrainConfig.traces_per_problem); with 1 there "
                             "is nothing to share and the shared path only adds its cost")
    args = parser.parse_args()
    corpora = {k: pretrain.build_corpus(pretrain.PretrainConfig(num_examples=args.batch_size * (args.steps + 1) * 4,
                                                        traces_per_problem=k))
               for k in args.traces_per_problem}
    print(f"{'size':>12} {'params':>9} {'threads':>7} {'traces':>6} {'shared':>6} {'cpu s/step':>10} {'wall s/step':>11}")
    for spec in args.sizes:
        hidden, layers, intermediate = map(int, spec.split(","))
        sizes = dict(hidden_size=hidden, num_hidden_layers=layers, intermediate_size=intermediate,
                     num_attention_heads=4, num_key_value_heads=2)
        params = sum(p.numel() for p in tiny.random_model(tiny.build_tokenizer(), **sizes).parameters())
        for threads in args.threads:
            for k, corpus in corpora.items():
                for shared in (False, True):
                    cpu, wall = step_cost(sizes, corpus, threads=threads, shared=shared, steps=args.steps,
                                          batch_size=args.batch_size)
                    print(f"{spec:>12} {params:>9,} {threads:>7} {k:>6} {str(shared):>6} {cpu:>10.3f} {wall:>11.3f}",
                          flush=True)


if __name__ == "__main__":
    main()
