"""Print chapter 8's tiny-world answer to whether the GPU recipe's path trains, as a Markdown table: GRPO on the
word problems with full parameters (chapter 6's runs), LoRA, LoRA on a 4-bit base, and LoRA on a 4-bit base whose
layers compute in fp16 (the ``precision`` runs); per path the final pass@1 on the 200 held-out problems (n = 16,
T = 1, float32 compute), mean and standard deviation over the seeds, the difference from full parameters with its
Welch 95% interval over the seeds and the verdict (:func:`companion.stats.compare`), the last in-training held-out evaluation (in the run's own compute dtype)
and the mean seconds per step the runs recorded::

    .venv/bin/python scripts/precision_table.py          # the README's table
"""

from __future__ import annotations

from companion import experiments
from companion.stats import interval_text
from companion.viz import gpu


def main() -> None:
    runs = experiments.load_results("compare") + experiments.load_results("precision")
    rows = gpu.precision_rows(runs)
    print(f"| training path | pass@1, mean ± sd (seeds) | vs full [95% CI] | verdict | held-out at step {rows[0]['eval_step']}, "
          "sampled / greedy | s per step |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        seeds = ", ".join(f"{v:.3f}" for v in row["per_seed"])
        diff = "" if "vs_full" not in row else interval_text(*row["vs_full_interval"][:3])
        print(f"| {row['label']} | {row['pass1']:.3f} ± {row['sd']:.3f} ({seeds}) | {diff} | {row.get('outcome', '')} | "
              f"{row['heldout_sampled']:.3f} / {row['heldout_greedy']:.3f} | {row['step_time']:.1f} |")


if __name__ == "__main__":
    main()
