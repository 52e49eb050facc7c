"""Where a tiny base model fails at Countdown: copying the numbers, the arithmetic, or the verdict.

Samples completions of held-out Countdown problems from a checkpoint (the shipped one by default) and reads
them back with :func:`companion.traces.audit_countdown`: the share of steps whose operands are among the values
left, of results that are right, of ``yes``/``no`` verdicts that are right, and pass@1. The noisy solver the
model imitates scores 1, 1 - slip and 1 on the first three::

    .venv/bin/python scripts/audit_countdown.py                      # data/tiny-base, 60 problems x 16 samples
    .venv/bin/python scripts/audit_countdown.py --model runs/my-base --problems 200 --num-generations 64
"""

from __future__ import annotations

import argparse
import json

from companion import traces
from companion.evaluate import score_problems
from companion.pretrain import PretrainConfig, heldout_problems, set_float_path
from companion.runs import torch_threads
from companion.tasks import get_task
from companion.tiny import load_tiny, tiny_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="checkpoint directory (default: the shipped data/tiny-base)")
    parser.add_argument("--problems", type=int, default=60, help="held-out problems (the pretraining eval's first ones)")
    parser.add_argument("--num-generations", type=int, default=16, help="samples per problem, at temperature 1")
    parser.add_argument("--max-completion-length", type=int, default=PretrainConfig.max_completion_length,
                        help="tokens per completion at most (default: the pretraining eval's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-threads", type=int, default=2)
    args = parser.parse_args()
    if args.problems < 1 or args.num_generations < 1:
        parser.error("--problems and --num-generations must be at least 1")

    set_float_path(PretrainConfig.instruction_set)  # sample on the kernels the model was built with, on any x86 CPU
    model, tokenizer = load_tiny(args.model)
    problems = heldout_problems("countdown", args.problems)
    with torch_threads(args.num_threads):
        rows = score_problems(model, tokenizer, get_task("countdown"), problems, num_generations=args.num_generations,
                              seed=args.seed, max_completion_length=args.max_completion_length, temperature=1.0,
                              save_completions=True)
    audit = traces.audit_countdown([c for r in rows for c in r["completions"]],
                                   [r["problem"] for r in rows for _ in r["completions"]])
    audit["pass@1"] = round(sum(r["num_correct"] for r in rows) / (len(rows) * args.num_generations), 4)
    audit["model"] = str(tiny_dir(args.model))
    print(json.dumps(audit, indent=2))


if __name__ == "__main__":
    main()
