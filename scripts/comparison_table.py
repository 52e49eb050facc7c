"""Print chapter 6's comparison as a Markdown table: final held-out pass@1 per task and algorithm (and chapter 7's
distilled model, scored the same way), mean ± sd over the seeds, the multiple of the base model's pass@1, and the
mean length of right and wrong answers::

    .venv/bin/python scripts/comparison_table.py            # the README's table
"""

from __future__ import annotations

import json

from companion import experiments
from companion.tiny import tiny_dir
from companion.viz.base_model import TASK_TITLES
from companion.viz.compare import ALGO_NAMES, final_table


def main() -> None:
    base = json.loads((tiny_dir() / "metrics.json").read_text())
    rows = final_table(experiments.load_results("compare") + experiments.load_results("distill"), base)
    print("| task | algorithm | pass@1, mean ± sd (seeds) | × base | tokens, right / wrong | cut off |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        seeds = ", ".join(f"{v:.3f}" for v in row["per_seed"])
        print(f"| {TASK_TITLES[row['task']]} | {ALGO_NAMES[row['algo']]} | {row['pass@1']:.3f} ± {row['sd']:.3f} "
              f"({seeds}) | {row['pass@1'] / row['base_pass@1']:.2f} | {row['length_right']:.0f} / "
              f"{row['length_wrong']:.0f} | {row['truncated']:.1%} |")


if __name__ == "__main__":
    main()
