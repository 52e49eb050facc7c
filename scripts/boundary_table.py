"""Print chapter 7's pass@k summary as a Markdown table: per task and sampling, each model's pass@1 and pass@256 on
the 200 held-out problems (n = 256; Countdown's hard tier too: the base and the model distilled on that tier), the
first k at which the base model's curve is above it (strictly: a tie at 1 is
not an overtaking; with its 95% interval, "never" when the base is not ahead at any k up to 256), and ΔSE = base pass@256 − pass@1::

    .venv/bin/python scripts/boundary_table.py            # the README's table
"""

from __future__ import annotations

from companion import experiments
from companion.viz import boundary
from companion.viz.base_model import TASK_TITLES


def main() -> None:
    results = experiments.load_results("boundary")
    hard = [r for r in experiments.load_results("hard") if r["algo"] in ("base", "distill")]
    print("| task | sampling | model | pass@1 | pass@256 | base ahead from k (95%) | ΔSE |")
    print("|---|---|---|---|---|---|---|")
    for task, title, found in (("countdown", TASK_TITLES["countdown"], results),
                               ("tinygsm", TASK_TITLES["tinygsm"], results),
                               ("countdown", "Countdown, hard tier", hard)):
        for temperature, label in ((0.6, "T 0.6, top-p 0.95"), (1.0, "T 1")):
            records = boundary.select(found, task, temperature)
            if "base" not in records:
                continue
            curve = boundary.curves(records, ks=[1, 256], n_bootstrap=0)
            crossings = {r["model"]: r for r in boundary.crossovers(records)}
            for model in records:
                c = crossings.get(model)
                where = "" if c is None else "never" if c["low"] is None else (
                    f"{c['crossover'] or 'never'} ({c['low']}-{c['high'] or 'never'})")
                delta = "" if c is None else f"{c['delta_se']:.3f}"
                print(f"| {title} | {label} | {boundary.MODEL_NAMES[model]} | "
                      f"{curve[model][1].estimate:.3f} | {curve[model][256].estimate:.3f} | {where} | {delta} |")


if __name__ == "__main__":
    main()
