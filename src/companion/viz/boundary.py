"""Figures and tables for chapter 7: does RL expand what the base model can solve, or only sharpen it?

Every function takes the records of :func:`companion.experiments.load_results` ``("boundary")``: one per model
(``algo``: ``base``, an algorithm, or ``distill``) x task x sampling, each with its per-problem ``rows`` (n = 256
samples of the same 200 held-out problems). The maths is :mod:`companion.passk`'s; nothing here samples.
"""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go

from companion import passk
from companion.viz.base_model import _layout
from companion.viz.compare import ALGO_COLORS, ALGO_NAMES, ALGO_ORDER, _rgba

MODEL_ORDER = ("base", *ALGO_ORDER)
MODEL_NAMES = {"base": "base model", **ALGO_NAMES}
MODEL_COLORS = {"base": "#6c757d", **ALGO_COLORS}


def select(results: list[dict], task: str, temperature: float) -> dict[str, dict]:
    """The evaluations of ``task`` sampled at ``temperature``, by model, in the book's order: models evaluated as
    they are (the base, a kept policy), not a training run's own final evaluation, which an experiment such as
    ``hard`` holds beside them under the same model name."""
    found = {r["algo"]: r for r in results
             if r["task"] == task and r["temperature"] == temperature and r.get("config") is None}
    return {m: found[m] for m in MODEL_ORDER if m in found} | {m: r for m, r in found.items() if m not in MODEL_ORDER}


SOLVED = {"answer": "num_correct", "checked": "num_checked"}
"""What counts as a solve, by name: a right answer (``answer``), or a right answer whose every written step holds
(``checked``, Countdown's process check: :func:`companion.verify.countdown_steps_right`)."""


def counts(result: dict, solved: str = "answer") -> dict[int, int]:
    """Solved samples per problem (by :data:`SOLVED`'s rule ``solved``), keyed by the problem's index."""
    key = SOLVED[solved]
    if any(key not in row for row in result["rows"]):
        raise ValueError(f"{result.get('name', 'this evaluation')} has no {key} in its rows: it was scored before "
                         f"the {solved} check existed, or on a task without it; evaluate it again to count that way")
    return {row["index"]: row[key] for row in result["rows"]}


def _same_problems(records: dict[str, dict]) -> int:
    """The one n every record shares, after checking that they cover the same problems; else a ValueError that says
    what differs."""
    ns = {m: r["num_generations"] for m, r in records.items()}
    if len(set(ns.values())) > 1:
        raise ValueError(f"the curves were sampled with different n ({ns}): compare models at one n")
    problems = {m: frozenset(counts(r)) for m, r in records.items()}
    first = next(iter(problems.values()), frozenset())
    if any(p != first for p in problems.values()):
        sizes = {m: len(p) for m, p in problems.items()}
        raise ValueError(f"the curves are over different problems ({sizes} problems): finish every evaluation first")
    return next(iter(ns.values()))


def curves(records: dict[str, dict], ks: list[int] | None = None, *, n_bootstrap: int = 1000,
           solved: str = "answer") -> dict[str, dict]:
    """pass@k with its 95% bootstrap band over problems, per model: ``{model: {k: PassAtK}}`` (``solved``: a key of
    :data:`SOLVED`, what counts as a solve)."""
    n = _same_problems(records)
    return {m: passk.pass_at_k_curve(counts(r, solved), n, ks, n_bootstrap=n_bootstrap) for m, r in records.items()}


def passk_figure(records: dict[str, dict], *, title: str = "", n_bootstrap: int = 1000,
                 missed: bool = False, solved: tuple[str, ...] = ("answer",)) -> go.Figure:
    """pass@k against k (log scale), a line and its 95% band per model. ``missed``: plot the share of problems not
    yet solved, 1 − pass@k, on a log axis instead, which spreads out curves that all end near 1 (a curve that
    reaches 0, every problem solved, stops there). ``solved``: the rules of :data:`SOLVED` to draw, each model's
    ``checked`` curve (right answers whose written steps hold) in its colour, thinner and without a band."""
    def y(value):
        return value if not missed else (1 - value if value is not None and 1 - value > passk.TIE else None)

    fig = go.Figure()
    for rule in solved:
        checked = rule == "checked"
        for model, curve in curves(records, n_bootstrap=0 if checked else n_bootstrap, solved=rule).items():
            ks = list(curve)
            color = MODEL_COLORS.get(model, "#333333")
            name = MODEL_NAMES.get(model, model) + (", steps checked" if checked else "")
            low, high = [y(curve[k].low) for k in ks], [y(curve[k].high) for k in ks]
            if curve[ks[0]].low is not None:
                band = [(k, a, b) for k, a, b in zip(ks, high, low) if a is not None and b is not None]
                xs = [k for k, _, _ in band]
                fig.add_trace(go.Scatter(x=xs + xs[::-1], y=[a for _, a, _ in band] + [b for _, _, b in band][::-1],
                                         fill="toself", mode="lines", line=dict(width=0), fillcolor=_rgba(color, 0.15),
                                         hoverinfo="skip", showlegend=False, legendgroup=model))
            label = "1 − pass@%{x}" if missed else "pass@%{x}"
            dash = "dash" if checked else "dot" if model == "base" else None
            fig.add_trace(go.Scatter(x=ks, y=[y(curve[k].estimate) for k in ks], mode="lines" if checked else
                                     "lines+markers", name=name, legendgroup=model,
                                     line=dict(color=color, dash=dash, width=1.5 if checked else 2),
                                     hovertemplate=f"{name}<br>{label} = %{{y:.4f}}<extra></extra>"))
    fig.update_xaxes(type="log", title="k (samples per problem)", tickvals=ks, ticktext=[str(k) for k in ks])
    if missed:
        ticks = [1, 0.1, 0.01, 0.001, 0.0001]
        fig.update_yaxes(type="log", title="1 − pass@k (problems not solved)", range=[-4.2, 0.05], tickvals=ticks,
                         ticktext=[f"{100 * t:g}%" for t in ticks])
    else:
        fig.update_yaxes(title="pass@k", range=[0, 1.02])
    return _layout(fig, title or "pass@k", 420)


def crossovers(records: dict[str, dict], *, n_bootstrap: int = 1000) -> list[dict]:
    """Per trained model: the k at which the base model's pass@k reaches it (:func:`companion.passk.crossover`),
    its 95% interval, and ΔSE = base pass@n − trained pass@1 (Yue et al.'s sign: lower is better)."""
    n = _same_problems(records)
    base = counts(records["base"])
    rows = []
    for model, record in records.items():
        if model == "base":
            continue
        trained = counts(record)
        cross = passk.crossover(trained, base, n, n_bootstrap=n_bootstrap)
        pass1 = passk.pass_at_k_curve(trained, n, [1], n_bootstrap=0)[1].estimate
        base_n = passk.pass_at_k_curve(base, n, [n], n_bootstrap=0)[n].estimate
        rows.append({"model": model, "crossover": cross.k, "low": cross.low, "high": cross.high,
                     "never": cross.never, "pass1": pass1, "base_pass_n": base_n,
                     "delta_se": passk.delta_se(pass1, base_n)})
    return rows


def against_base(records: dict[str, dict], ks: list[int] | None = None, *, solved: str = "answer",
                 n_bootstrap: int = 1000) -> dict[str, dict]:
    """Per model other than the base: its pass@k minus the base's at each k, with the paired 95% bootstrap interval
    over problems (:func:`companion.passk.paired_difference`; ``solved``: a key of :data:`SOLVED`), and ``lifts``:
    whether every k's interval lies above 0 (the whole curve above the base's), ``below_from``: the first k whose
    interval lies below 0 (None if none does)."""
    n = _same_problems(records)
    base = counts(records["base"], solved)
    out = {}
    for model, record in records.items():
        if model == "base":
            continue
        gaps = passk.paired_difference(base, counts(record, solved), n, ks, n_bootstrap=n_bootstrap)
        out[model] = {"gaps": gaps, "lifts": all(g.low > 0 for g in gaps.values()),
                      "below_from": next((k for k, g in gaps.items() if g.high < 0), None)}
    return out


def coverage_rows(records: dict[str, dict]) -> list[dict]:
    """Per trained model, against the base: how many problems each solves at least once in n samples, and how the
    two sets overlap (``only_trained``: solved by the trained model and never by the base, with their ids)."""
    _same_problems(records)
    base = counts(records["base"])
    rows = []
    for model, record in records.items():
        if model == "base":
            continue
        overlap = passk.compare_coverage(counts(record), base)
        rows.append({"model": model, "both": overlap["n_both"], "only_trained": overlap["n_only_a"],
                     "only_base": overlap["n_only_b"], "neither": overlap["n_neither"],
                     "only_trained_ids": sorted(overlap["only_a"])})
    return rows


def solve_rate_figure(records: dict[str, dict], models: tuple[str, ...] = ("base", "grpo"), *, bins: int = 10,
                      title: str = "") -> go.Figure:
    """Histogram of the per-problem solve rate (correct samples / n), one bar series per model: a model that only
    sharpens piles its problems up at 0 and at 1 (Yue et al.'s Fig. 5)."""
    n = _same_problems({m: records[m] for m in models})
    edges = np.linspace(0, 1, bins + 1)
    labels = [f"{a:.1f}-{b:.1f}" for a, b in zip(edges[:-1], edges[1:])]
    fig = go.Figure()
    for model in models:
        rates = np.array(list(counts(records[model]).values())) / n
        zero, one = int((rates == 0).sum()), int((rates == 1).sum())
        middle, _ = np.histogram(rates[(rates > 0) & (rates < 1)], bins=edges)
        fig.add_trace(go.Bar(x=["never"] + labels + ["always"], y=[zero, *middle.tolist(), one],
                             name=MODEL_NAMES.get(model, model), marker_color=MODEL_COLORS.get(model, "#333333")))
    fig.update_xaxes(title=f"share of the {n} samples that are right", type="category")
    fig.update_yaxes(title="problems")
    return _layout(fig.update_layout(barmode="group"), title or "How often each problem is solved", 380)


def training_length_rows(by_step: dict[int, dict], *, n_bootstrap: int = 1000) -> list[dict]:
    """pass@1 and pass@n, with 95% bands, of one run's policies by training step (``{step: record}``; step 0 is
    the base): Yue et al.'s Table 3 trend, asked of one of our runs. Refused over different problems or n."""
    n = _same_problems(by_step)
    rows = []
    for step in sorted(by_step):
        curve = passk.pass_at_k_curve(counts(by_step[step]), n, [1, n], n_bootstrap=n_bootstrap)
        rows.append({"step": step, "pass1": curve[1].estimate, "pass1_low": curve[1].low,
                     "pass1_high": curve[1].high, "pass_n": curve[n].estimate, "pass_n_low": curve[n].low,
                     "pass_n_high": curve[n].high, "n": n})
    return rows


def training_length_figure(rows: list[dict], *, title: str = "") -> go.Figure:
    """pass@1 and pass@n against the training step, each with its 95% band (error bars)."""
    fig = go.Figure()
    steps = [r["step"] for r in rows]
    n = rows[0]["n"]
    for key, name, color in (("pass1", "pass@1", ALGO_COLORS["grpo"]), ("pass_n", f"pass@{n}", "#6c757d")):
        values = [r[key] for r in rows]
        up = [None if r[f"{key}_high"] is None else r[f"{key}_high"] - r[key] for r in rows]
        down = [None if r[f"{key}_low"] is None else r[key] - r[f"{key}_low"] for r in rows]
        fig.add_trace(go.Scatter(x=steps, y=values, mode="lines+markers", name=name, line=dict(color=color),
                                 error_y=dict(type="data", array=up, arrayminus=down, visible=up[0] is not None),
                                 hovertemplate=f"step %{{x}}<br>{name} = %{{y:.3f}}<extra></extra>"))
    fig.update_xaxes(title="training step (0 = the base model)", tickvals=steps)
    fig.update_yaxes(title="held-out pass@k", range=[0, 1.02])
    return _layout(fig, title or "Training longer", 380)


def training_length_changes(by_step: dict[int, dict], pairs: list[tuple[int, int]], *,
                            n_bootstrap: int = 1000) -> list[dict]:
    """For each ``(earlier, later)`` pair of steps, the change in pass@1 and in pass@n from the earlier policy to
    the later one, each with its paired 95% bootstrap interval over problems (:func:`companion.passk.paired_difference`),
    and how many problems only one of the two ever solves."""
    n = _same_problems(by_step)
    missing = sorted({s for pair in pairs for s in pair} - set(by_step))
    if missing:
        raise ValueError(f"no policy for step(s) {missing}: the steps evaluated are {sorted(by_step)}")
    rows = []
    for earlier, later in pairs:
        a, b = counts(by_step[earlier]), counts(by_step[later])
        change = passk.paired_difference(a, b, n, [1, n], n_bootstrap=n_bootstrap)
        overlap = passk.compare_coverage(a, b)
        rows.append({"from": earlier, "to": later, "n": n,
                     **{f"{key}{part}": getattr(change[k], attr) for key, k in (("pass1", 1), ("pass_n", n))
                        for part, attr in (("", "difference"), ("_low", "low"), ("_high", "high"))},
                     "only_from": overlap["n_only_a"], "only_to": overlap["n_only_b"]})
    return rows


def perplexity_rows(by_model: dict[str, list[dict]]) -> list[dict]:
    """Per model, the perplexity under the scorer of its samples (rows of
    :func:`companion.evaluate.perplexity_under`): median and quartiles of all samples, and the medians of the right
    and of the wrong ones (None where there are none)."""
    rows = []
    for model, scored in by_model.items():
        values = np.array([p for r in scored for p in r["perplexity"]])
        right = [p for r in scored for p, c in zip(r["perplexity"], r["correct"]) if c]
        wrong = [p for r in scored for p, c in zip(r["perplexity"], r["correct"]) if not c]
        q1, median, q3 = np.percentile(values, [25, 50, 75])
        rows.append({"model": model, "samples": len(values), "median": float(median), "q1": float(q1),
                     "q3": float(q3), "right": len(right), "wrong": len(wrong),
                     "median_right": float(np.median(right)) if right else None,
                     "median_wrong": float(np.median(wrong)) if wrong else None})
    return rows


def perplexity_figure(by_model: dict[str, list[dict]], *, title: str = "") -> go.Figure:
    """Box plots of the per-sample perplexity under the scorer (the base model), one per sampling model."""
    fig = go.Figure()
    for model, scored in by_model.items():
        values = [p for r in scored for p in r["perplexity"]]
        color, name = MODEL_COLORS.get(model, "#333333"), MODEL_NAMES.get(model, model)
        fig.add_trace(go.Box(y=values, name=name, marker_color=color, boxpoints="outliers"))  # whiskers: 1.5 IQR
    fig.update_yaxes(title="perplexity under the base model", type="log")
    return _layout(fig.update_layout(showlegend=False), title or "How likely the base finds each model's samples",
                   380)
