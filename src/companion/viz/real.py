"""Figures and tables for chapter 10: SmolLM2-135M-Instruct, a model nobody here trained, under chapter 6's rules.

Every function takes the records of :func:`companion.experiments.load_results` ``("real")``; nothing here trains or
samples. The recipe sweep's runs are GRPO at seed 0, one per learning rate of
:data:`companion.experiments.REAL_RATES`.
"""

from __future__ import annotations

from statistics import mean

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from companion.viz.base_model import _layout
from companion.viz.compare import heldout_curve, smoothed

RATE_COLORS = ("#264653", "#e76f51", "#2a9d8f", "#e9c46a")
WINDOW = 5
"""Steps in the trailing mean of the sweep's per-step curves: a step is 64 completions, and a run 50 steps."""


def sweep_runs(results: list[dict], rates: tuple[float, ...]) -> dict[float, dict]:
    """The sweep's runs by learning rate (GRPO, seed 0, trained), of those committed."""
    found = {r["learning_rate"]: r for r in results
             if r["config"] is not None and r["algo"] == "grpo" and r["seed"] == 0}
    return {rate: found[rate] for rate in rates if rate in found}


def minutes(run: dict) -> float:
    """A trained run's wall time: its steps (in-training evaluations included) and its final evaluation's sampling."""
    return (sum(r.get("step_time", 0.0) for r in run["records"]) + run["summary"]["sampling_seconds"]) / 60


def run_row(run: dict, base: dict | None = None) -> dict:
    """One trained run in numbers: its final policy's held-out pass@1 with its bootstrap interval over problems, its
    ratio to ``base``'s pass@1 (the base model's evaluation on the same problems, if given), the in-training
    held-out accuracy (sampled) at each evaluation, lengths of right and wrong answers and the cut-off share in the
    final evaluation, the batches' mean length over the first and the last :data:`WINDOW` steps, and the minutes."""
    summary, first = run["summary"], run["summary"]["pass_at_k"][0]
    lengths = [r["length"] for r in run["records"] if r.get("length") is not None]
    row = {"algo": run["algo"], "seed": run["seed"], "learning_rate": run["learning_rate"],
           "pass1": first["estimate"], "low": first["low"], "high": first["high"],
           "n": run["num_generations"], "curve": dict(zip(*heldout_curve(run))),
           "length_right": summary["length_correct"].get("mean"),
           "length_wrong": summary["length_wrong"].get("mean"), "truncated": summary["truncated_fraction"],
           "batch_length_first": mean(lengths[:WINDOW]), "batch_length_last": mean(lengths[-WINDOW:]),
           "minutes": minutes(run)}
    if base is not None:
        row["ratio"] = first["estimate"] / base["summary"]["pass_at_k"][0]["estimate"]
    return row


def sweep_rows(runs: dict[float, dict], base: dict | None = None) -> list[dict]:
    """One :func:`run_row` per swept learning rate, in the sweep's order."""
    return [run_row(run, base) for run in runs.values()]


def sweep_figure(runs: dict[float, dict]) -> go.Figure:
    """Per swept learning rate, over training: the batch's accuracy and its mean completion length
    (:data:`WINDOW`-step means), the share cut off at the limit, and the held-out accuracy as markers."""
    fig = make_subplots(rows=3, cols=1, shared_xaxes=True, vertical_spacing=0.08, row_heights=[0.4, 0.35, 0.25],
                        subplot_titles=["accuracy: batch (line), held-out (markers)", "completion length (tokens)",
                                        "cut off at the limit"])
    for (rate, run), color in zip(runs.items(), RATE_COLORS):
        name = f"lr {rate:g}"
        for row, key in ((1, "accuracy"), (2, "length"), (3, "frac_truncated")):
            steps, values = smoothed(run["records"], key, WINDOW)
            fig.add_trace(go.Scatter(x=steps, y=values, mode="lines", name=name, legendgroup=name,
                                     showlegend=row == 1, line=dict(color=color, width=2),
                                     hovertemplate=f"{name}: %{{y:.3f}} at step %{{x}}<extra></extra>"),
                          row=row, col=1)
        steps, values = heldout_curve(run)
        fig.add_trace(go.Scatter(x=steps, y=values, mode="markers", name=f"{name}, held-out", legendgroup=name,
                                 showlegend=False, marker=dict(color=color, size=9, symbol="diamond"),
                                 hovertemplate=f"{name}, held-out: %{{y:.3f}} at step %{{x}}<extra></extra>"),
                      row=1, col=1)
    fig.update_yaxes(rangemode="tozero")
    fig.update_xaxes(title_text="training step", row=3, col=1)
    return _layout(fig, "SmolLM2-135M-Instruct, GRPO on the word problems: the recipe sweep", 640)


def rule_runs(results: list[dict], rate: float) -> list[dict]:
    """The trained runs at learning rate ``rate`` (the sweep's choice), every rule and seed: the records that
    chapter 6's functions (:mod:`companion.viz.compare`) read as a comparison. The sweep's other rates are left out,
    and so are the evaluation-only records (the base, and the seed-0 policies sampled again at n = 64)."""
    return [r for r in results if r["config"] is not None and r["learning_rate"] == rate]


def passk_records(results: list[dict], n: int) -> dict[str, dict]:
    """The models evaluated with ``n`` samples a problem at T = 1 (the base, and each rule's seed-0 policy), by model
    in the book's order: the records of chapter 7's pass@k curves (:mod:`companion.viz.boundary`)."""
    from companion.viz.boundary import select

    return select([r for r in results if r["num_generations"] == n],
                  next((r["task"] for r in results), ""), 1.0)
