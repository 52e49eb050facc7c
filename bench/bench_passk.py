"""pass@k curve speed: 200 problems × n = 1024 samples with a 1000-resample bootstrap.

The target is well under 2 s (the book recomputes curves for several models in a cell); the counts are
problems of spread-out difficulty, a fifth never solved. Prints the best and median wall time.

    python bench/bench_passk.py
    python bench/bench_passk.py --problems 500 --n 4096 --bootstrap 2000 --repeats 5
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from companion.passk import pass_at_k_curve


def mixed_counts(num_problems: int, n: int, seed: int) -> np.ndarray:
    """Correct-sample counts of problems with Beta(0.5, 1) success rates, a fifth of them unsolvable."""
    rng = np.random.default_rng(seed)
    p = rng.beta(0.5, 1.0, size=num_problems) * (rng.random(num_problems) > 0.2)
    return rng.binomial(n, p)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problems", type=int, default=200)
    parser.add_argument("--n", type=int, default=1024, help="samples per problem")
    parser.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    counts = mixed_counts(args.problems, args.n, seed=0)
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        curve = pass_at_k_curve(counts, args.n, n_bootstrap=args.bootstrap)
        times.append(time.perf_counter() - start)
    print(f"pass_at_k_curve: {args.problems} problems, n = {args.n}, {args.bootstrap} bootstrap resamples, "
          f"{len(curve)} values of k")
    print(f"  best {min(times):.4f} s, median {statistics.median(times):.4f} s over {args.repeats} runs (target < 2 s)")


if __name__ == "__main__":
    main()
