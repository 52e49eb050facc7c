"""Figures and tables for chapter 9: the reviewers' objections to the collapse, tested with the same loop.

Every function takes records of :func:`companion.experiments.load_results`: chapter 6's comparison (β = 0, μ = 1,
the baseline) together with chapter 9's ``kl`` and ``iterations`` experiments. A *condition* is one algorithm with
one KL weight β and one number of updates per batch μ; its runs are its seeds. Nothing here trains or samples.
"""

from __future__ import annotations

import math
from statistics import mean, stdev

import plotly.graph_objects as go

from companion.viz.base_model import _layout
from companion.viz.compare import ALGO_COLORS, ALGO_NAMES, _band, distinguishable, smoothed

DASHES = (None, "dash", "dot", "dashdot")


def condition(run: dict) -> tuple[str, float, int]:
    """``(algo, beta, num_iterations)`` of a run."""
    return run["algo"], float(run.get("beta") or 0.0), int(run.get("num_iterations") or 1)


def label(key: tuple[str, float, int]) -> str:
    """A condition's name in the book: ``GRPO, β = 0.04`` or ``GRPO, μ = 2`` (the baseline: ``GRPO``)."""
    algo, beta, mu = key
    parts = [ALGO_NAMES.get(algo, algo)] + ([f"β = {beta:g}"] if beta else []) + ([f"μ = {mu}"] if mu > 1 else [])
    return ", ".join(parts)


def conditions(runs: list[dict], task: str, algos: tuple[str, ...] | None = None) -> dict[tuple, list[dict]]:
    """The trained runs of ``task`` by condition (seeds sorted), the baselines first; only ``algos`` if given."""
    groups: dict[tuple, list[dict]] = {}
    for run in runs:
        if run["task"] != task or run["seed"] is None or run["algo"] in ("base", "distill"):
            continue
        if algos is not None and run["algo"] not in algos:
            continue
        groups.setdefault(condition(run), []).append(run)
    order = sorted(groups, key=lambda k: (k[0], k[1], k[2]))
    return {k: sorted(groups[k], key=lambda r: r["seed"]) for k in order}


def _pass1(run: dict) -> float:
    return run["summary"]["pass_at_k"][0]["estimate"]


def _measured(run: dict, key: str) -> list[float]:
    return [r[key] for r in run["records"] if r.get(key) is not None]


def _mean_or_none(values):
    values = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return mean(values) if values else None


def condition_rows(runs: list[dict], task: str, algos: tuple[str, ...] | None = None, *, last: int = 10) -> list[dict]:
    """One row per condition: the final policies' pass@1 on the 200 held-out problems (n = 16, T = 1), mean and
    standard deviation over seeds and each seed's; the final evaluation's mean lengths of right and wrong answers;
    over the training records, the mean cosine between each update and the weighted-SFT update (``sft_cosine``,
    None where it was not measured) and its mean over the last ``last`` measurements, the share of tokens the clip
    removed and the KL to the reference over the last ``last`` steps; and whether pass@1 is distinguishable from
    the same algorithm's baseline (β = 0, μ = 1) by :func:`companion.viz.compare.distinguishable`."""
    groups = conditions(runs, task, algos)
    rows = []
    for key, group in groups.items():
        values = [_pass1(r) for r in group]
        cosines = [_measured(r, "sft_cosine") for r in group]
        steps = [[r for r in run["records"] if r["step"] >= 1] for run in group]
        row = {"key": key, "algo": key[0], "beta": key[1], "num_iterations": key[2], "label": label(key),
               "seeds": len(group), "pass1": mean(values), "sd": stdev(values) if len(values) > 1 else math.nan,
               "per_seed": values,
               "length_right": _mean_or_none(r["summary"]["length_correct"].get("mean") for r in group),
               "length_wrong": _mean_or_none(r["summary"]["length_wrong"].get("mean") for r in group),
               "sft_cosine": _mean_or_none(mean(c) for c in cosines if c),
               "sft_cosine_late": _mean_or_none(mean(c[-last:]) for c in cosines if c),
               "clip": _mean_or_none(_mean_or_none(r.get("clip_ratio/region_mean") for r in s[-last:]) for s in steps),
               "kl": _mean_or_none(_mean_or_none(r.get("kl") for r in s[-last:]) for s in steps)}
        baseline = groups.get((key[0], 0.0, 1))
        if baseline is not None and key != (key[0], 0.0, 1):
            base_values = [_pass1(r) for r in baseline]
            row["vs_baseline"] = mean(values) - mean(base_values)
            row["distinguishable"] = distinguishable(values, base_values)
        rows.append(row)
    return rows


def _colors(keys) -> dict[tuple, tuple[str, str | None]]:
    """Each condition's colour (its algorithm's) and dash (by its place among that algorithm's conditions)."""
    seen: dict[str, int] = {}
    out = {}
    for key in keys:
        i = seen.get(key[0], 0)
        seen[key[0]] = i + 1
        out[key] = (ALGO_COLORS.get(key[0], "#333333"), DASHES[i % len(DASHES)])
    return out


def gap_figure(runs: list[dict], task: str, algos: tuple[str, ...] | None = None, *, title: str = "") -> go.Figure:
    """The cosine between each update and the weighted-SFT update of the same batch, over training, per condition
    that measured it (mean and range of the seeds). The baseline, where it is 1 by chapter 2, is drawn as a line."""
    groups = {k: g for k, g in conditions(runs, task, algos).items()}
    style = _colors(groups)
    fig = go.Figure()
    for key, group in groups.items():
        series = [[(r["step"], r["sft_cosine"]) for r in run["records"] if r.get("sft_cosine") is not None]
                  for run in group]
        if not all(series):
            continue
        steps = sorted(set.intersection(*(set(s for s, _ in seq) for seq in series)))
        ys = [[dict(seq)[s] for s in steps] for seq in series]
        color, dash = style[key]
        _band(fig, steps, ys, color, label(key), dash=dash, markers=True)
    fig.add_hline(y=1.0, line_dash="dot", line_color="#6c757d")  # on-policy with β = 0 it is 1 (chapter 2)
    fig.update_xaxes(title="training step")
    fig.update_yaxes(title="cosine(update, weighted-SFT update)")
    return _layout(fig, title or "How far each update is from weighted SFT", 400)


def training_figure(runs: list[dict], task: str, key: str, algos: tuple[str, ...] | None = None, *,
                    title: str = "", y_title: str = "") -> go.Figure:
    """A training metric (smoothed over 10 steps, as in chapter 6) over training, per condition."""
    groups = conditions(runs, task, algos)
    style = _colors(groups)
    fig = go.Figure()
    for cond, group in groups.items():
        curves = [smoothed(r["records"], key) for r in group]
        color, dash = style[cond]
        _band(fig, curves[0][0], [c[1] for c in curves], color, label(cond), dash=dash)
    fig.update_xaxes(title="training step")
    fig.update_yaxes(title=y_title or key, rangemode="tozero")
    return _layout(fig, title or key, 380)
