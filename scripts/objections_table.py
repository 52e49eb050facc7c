"""Print chapter 9's results as a Markdown table: per task, each condition of the objection experiments (and
chapter 6's baselines it is judged against), its final pass@1 on the 200 held-out problems (n = 16, T = 1), mean
and standard deviation over the seeds, the difference from the same algorithm's baseline with its Welch 95%
interval over the seeds, and the mean lengths of right and wrong answers in that evaluation::

    .venv/bin/python scripts/objections_table.py          # the README's table
"""

from __future__ import annotations

from companion import experiments
from companion.stats import interval_text
from companion.viz import objections as viz
from companion.viz.base_model import TASK_TITLES

OBJECTIONS = ("kl", "iterations", "refresh", "rewards", "ppo")
ALGOS = {"tinygsm": ("grpo", "fisft_plus", "fisft_pm"), "countdown": ("grpo", "dr_grpo", "fisft_pm", "ppo")}
"""Per task, the algorithms whose conditions the chapter studies (with their chapter 6 baselines)."""


def main() -> None:
    runs = experiments.load_results("compare")
    for name in OBJECTIONS:
        runs += experiments.load_results(name)
    print("| task | condition | seeds | pass@1 (sd) | vs baseline [95% CI] | tokens right / wrong |")
    print("|---|---|---|---|---|---|")
    for task, algos in ALGOS.items():
        for row in viz.condition_rows(runs, task, algos):
            diff = "" if "vs_baseline" not in row else interval_text(*row["vs_baseline_interval"][:3])
            right = "-" if row["length_right"] is None else f"{row['length_right']:.0f}"  # none right
            print(f"| {TASK_TITLES[task]} | {row['label']} | {row['seeds']} | {row['pass1']:.3f} ({row['sd']:.3f}) | "
                  f"{diff} | {right} / {row['length_wrong']:.0f} |")


if __name__ == "__main__":
    main()
