"""Print chapter 6's comparison as Markdown tables: final held-out pass@1 per task and algorithm (and chapter 7's
distilled model, scored the same way), mean ± sd over the seeds, the multiple of the base model's pass@1 (measured
with 256 samples per problem) with the 95% interval of its mean over seeds, and the mean length of right and wrong
answers; then the verdicts on the accuracy claims, each difference with its 95% interval; then why Dr. GRPO lags on
Countdown: each one-change variant of the ``drgrpo`` experiment against the comparison's GRPO and Dr. GRPO::

    .venv/bin/python scripts/comparison_table.py            # the README's tables
"""

from __future__ import annotations

from companion import experiments
from companion.stats import interval_text
from companion.viz.base_model import TASK_TITLES
from companion.viz.compare import ALGO_NAMES, accuracy_claims, base_evaluations, comparison, dr_grpo_lags, final_table

CLAIMS = {1: "GRPO ≈ F-ISFT±", 2: "F-ISFT+ lags", "dr": "Dr. GRPO vs GRPO"}


def main() -> None:
    compare = experiments.load_results("compare")
    base = base_evaluations(experiments.load_results("boundary"))
    rows = final_table(compare + experiments.load_results("distill"), base)
    print("| task | algorithm | pass@1, mean ± sd (seeds) | × base [95% CI] | tokens, right / wrong | cut off |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        seeds = ", ".join(f"{v:.3f}" for v in row["per_seed"])
        print(f"| {TASK_TITLES[row['task']]} | {ALGO_NAMES[row['algo']]} | {row['pass@1']:.3f} ± {row['sd']:.3f} "
              f"({seeds}) | {interval_text(*row['ratio'][:3], digits=2, signed=False)} | {row['length_right']:.0f} / "
              f"{row['length_wrong']:.0f} | {row['truncated']:.1%} |")
    print()
    for row in rows:
        if row["algo"] == "grpo":
            ratios = ", ".join(f"{x:.2f}" for x in row["per_seed_ratio"])
            print(f"GRPO / base on {TASK_TITLES[row['task']]}, seed by seed: {ratios}")
    runs = [r for r in compare if r["algo"] != "base"]
    claims = accuracy_claims(runs) + [comparison(runs, task, "dr_grpo", "grpo", claim="dr")
                                      for task in ("countdown", "tinygsm")]
    print()
    print("| task | claim | difference [95% CI] | verdict |")
    print("|---|---|---|---|")
    for c in claims:
        print(f"| {TASK_TITLES[c['task']]} | {CLAIMS[c['claim']]} | "
              f"{interval_text(c['difference'], c['low'], c['high'])} | {c['verdict'].split(':')[0]} |")
    lags = dr_grpo_lags(experiments.load_results("drgrpo"), runs)
    print()
    print("| Countdown, one change | pass@1, mean ± sd (seeds) | vs GRPO [95% CI] | vs Dr. GRPO [95% CI] |")
    print("|---|---|---|---|")
    for name, change in experiments.DR_GRPO_CHANGES.items():
        row = lags[name]
        versus = [f"{interval_text(*c.difference[:3])} {c.outcome}" for c in row["vs"].values()]
        print(f"| {change} | {row['pass@1']:.3f} ± {row['sd']:.3f} "
              f"({', '.join(f'{v:.3f}' for v in row['per_seed'])}) | {' | '.join(versus)} |")


if __name__ == "__main__":
    main()
