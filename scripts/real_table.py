"""Print chapter 10's committed runs as a Markdown table: per trained run of the experiment ``real`` (SmolLM2-135M-
Instruct with LoRA on the word problems), its rule, seed and learning rate, its final policy's held-out pass@1 on the
200 problems (n = 8, T = 1) with its bootstrap interval over problems, the length of right and wrong answers, the
share cut off at 256 tokens, and the run's wall time; then the base model's evaluation when it is committed::

    .venv/bin/python scripts/real_table.py            # the README's table
"""

from __future__ import annotations

from companion import experiments
from companion.viz import real
from companion.viz.compare import ALGO_NAMES


def main() -> None:
    results = experiments.load_results("real")
    trained = sorted((r for r in results if r["config"] is not None),
                     key=lambda r: (r["learning_rate"] != experiments.REAL_RATE, r["learning_rate"],
                                    list(ALGO_NAMES).index(r["algo"]), r["seed"]))  # the chosen rate first
    print("| rule | seed | learning rate | held-out pass@1 (95% CI) | tokens right / wrong | cut off | minutes |")
    print("|---|---|---|---|---|---|---|")
    for run in trained:
        row = real.run_row(run)
        lengths = " / ".join("–" if v is None else f"{v:.0f}" for v in (row["length_right"], row["length_wrong"]))
        print(f"| {ALGO_NAMES[row['algo']]} | {row['seed']} | {row['learning_rate']:g} | {row['pass1']:.3f} "
              f"({row['low']:.3f}-{row['high']:.3f}) | {lengths} | {row['truncated']:.1%} | {row['minutes']:.0f} |")
    for run in (r for r in results if r["algo"] == "base"):
        first = run["summary"]["pass_at_k"][0]
        print(f"| base model | – | – | {first['estimate']:.3f} ({first['low']:.3f}-{first['high']:.3f}), "
              f"n = {run['num_generations']} | – | {run['summary']['truncated_fraction']:.1%} | – |")


if __name__ == "__main__":
    main()
