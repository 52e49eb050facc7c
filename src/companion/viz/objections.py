"""Figures and tables for chapter 9: the reviewers' objections to the collapse, tested with the same loop.

Every function takes records of :func:`companion.experiments.load_results`: chapter 6's comparison (β = 0, μ = 1,
on-policy, the task's own reward: the baseline) together with chapter 9's experiments. A *condition*
(:class:`Condition`) is one algorithm with one KL weight β, one number of updates per batch μ, one refresh interval
K and one reward shape; its runs are its seeds. Nothing here trains or samples.
"""

from __future__ import annotations

import math
from statistics import mean, stdev
from typing import NamedTuple

import plotly.graph_objects as go

from companion.viz.base_model import _layout
from companion.stats import compare
from companion.viz.compare import ALGO_COLORS, ALGO_NAMES, _band, smoothed

DASHES = (None, "dash", "dot", "dashdot")


class Condition(NamedTuple):
    """What a run's seeds share. ``refresh`` is ``refresh_every`` (0: never, one static pool); ``reward`` the reward
    shape, '' for the task's own; ``gae_lambda`` ppo's λ where it is not the trainer's default (else None)."""

    algo: str
    beta: float = 0.0
    mu: int = 1
    refresh: int = 1
    reward: str = ""
    gae_lambda: float | None = None

    @property
    def baseline(self) -> "Condition":
        """The same algorithm as chapter 6 trains it; for PPO, which chapter 6 does not train, GRPO: the same
        clipped loss with the uniform credit PPO's value head replaces."""
        return Condition("grpo" if self.algo == "ppo" else self.algo)


def condition(run: dict) -> Condition:
    """The :class:`Condition` of a run (a refresh interval of at least the run's steps is ``refresh = 0``: the
    samples are never refreshed)."""
    from companion.tasks import REWARDS
    from companion.train_config import TrainConfig

    lam = run.get("gae_lambda")
    lam = None if lam is None or lam == TrainConfig.gae_lambda else float(lam)
    refresh = int(run.get("refresh_every") or 1)
    reward = run.get("reward") or ""
    return Condition(run["algo"], float(run.get("beta") or 0.0), int(run.get("num_iterations") or 1),
                     0 if refresh > 1 and refresh >= (run.get("steps") or math.inf) else refresh,
                     "" if reward == next(iter(REWARDS.get(run["task"], {"": None}))) else reward, lam)


def label(key: Condition | tuple) -> str:
    """A condition's name in the book: ``GRPO, β = 0.04``, ``GRPO, μ = 2``, ``F-ISFT+, refreshed every 10 steps``,
    ``F-ISFT+, static``, ``GRPO, graded reward`` (the baseline: ``GRPO``)."""
    key = Condition(*key)
    parts = [ALGO_NAMES.get(key.algo, key.algo)] + ([f"β = {key.beta:g}"] if key.beta else [])
    parts += [f"μ = {key.mu}"] if key.mu > 1 else []
    parts += ["static"] if key.refresh == 0 else [f"refreshed every {key.refresh} steps"] if key.refresh > 1 else []
    parts += [f"{key.reward} reward"] if key.reward else []
    parts += [f"λ = {key.gae_lambda:g}"] if key.gae_lambda is not None else []
    return ", ".join(parts)


def conditions(runs: list[dict], task: str, algos: tuple[str, ...] | None = None) -> dict[Condition, list[dict]]:
    """The trained runs of ``task`` by condition (seeds sorted), the baselines first; only ``algos`` if given."""
    groups: dict[tuple, list[dict]] = {}
    for run in runs:
        if run["task"] != task or run["seed"] is None or run["algo"] in ("base", "distill"):
            continue
        if algos is not None and run["algo"] not in algos:
            continue
        groups.setdefault(condition(run), []).append(run)
    order = sorted(groups, key=lambda k: (k.algo, k != k.baseline, k.beta, k.mu, k.refresh or math.inf, k.reward,
                                          k.gae_lambda or 0.0))
    return {k: sorted(groups[k], key=lambda r: r["seed"]) for k in order}


def paired(groups: dict[Condition, list[dict]], key: Condition, value) -> list[float]:
    """Seed by seed, ``value(run)`` for condition ``key`` minus ``value`` of its baseline's run of the same seed
    (the two share their problem stream): the per-seed differences behind "on every seed"."""
    base = {r["seed"]: r for r in groups[key.baseline]}
    return [value(r) - value(base[r["seed"]]) for r in groups[key] if r["seed"] in base]


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
    removed and the KL to the reference over the last ``last`` steps; over all steps, the share of completions
    with a weight (``frac_weighted``: those an SFT rule trains on) and of wrong ones pushed up (``wrong_up``, None
    where not recorded); and pass@1's difference from the same algorithm's baseline (:attr:`Condition.baseline`), its
    runs of the condition's own seeds (the same problem streams; chapter 6's baselines have more seeds than most
    conditions):
    ``vs_baseline``, its Welch 95% interval ``vs_baseline_interval`` (:func:`companion.stats.difference`, None with
    one seed on a side), whether that interval excludes 0 (``distinguishable``) and the outcome of
    :func:`companion.stats.compare` (``vs_baseline_outcome``: greater, less, equivalent within ±0.03, or cannot
    tell)."""
    groups = conditions(runs, task, algos)
    rows = []
    for key, group in groups.items():
        values = [_pass1(r) for r in group]
        cosines = [_measured(r, "sft_cosine") for r in group]
        steps = [[r for r in run["records"] if r["step"] >= 1] for run in group]
        row = {"key": key, "algo": key.algo, "beta": key.beta, "num_iterations": key.mu, "refresh": key.refresh,
               "reward": key.reward, "label": label(key),
               "seeds": len(group), "pass1": mean(values), "sd": stdev(values) if len(values) > 1 else math.nan,
               "per_seed": values,
               "length_right": _mean_or_none(r["summary"]["length_correct"].get("mean") for r in group),
               "length_wrong": _mean_or_none(r["summary"]["length_wrong"].get("mean") for r in group),
               "sft_cosine": _mean_or_none(mean(c) for c in cosines if c),
               "sft_cosine_late": _mean_or_none(mean(c[-last:]) for c in cosines if c),
               "clip": _mean_or_none(_mean_or_none(r.get("clip_ratio/region_mean") for r in s[-last:]) for s in steps),
               "kl": _mean_or_none(_mean_or_none(r.get("kl") for r in s[-last:]) for s in steps),
               "frac_weighted": _mean_or_none(_mean_or_none(r.get("frac_weighted") for r in s) for s in steps),
               "wrong_up": _mean_or_none(_mean_or_none(r.get("frac_wrong_up") for r in s) for s in steps)}
        baseline = groups.get(key.baseline)
        if baseline is not None and key != key.baseline:  # the baseline's runs of this condition's seeds
            seeds = {r["seed"] for r in group}
            base_values = [_pass1(r) for r in baseline if r["seed"] in seeds]
            judged = compare(values, base_values) if min(len(values), len(base_values)) >= 2 else None
            interval = judged.difference if judged else None
            row["vs_baseline"] = mean(values) - mean(base_values)
            row["vs_baseline_interval"] = interval
            row["vs_baseline_outcome"] = judged.outcome if judged else None
            row["distinguishable"] = interval is not None and interval.excludes_zero  # as compare.distinguishable
        rows.append(row)
    return rows


def _colors(keys) -> dict[Condition, tuple[str, str | None]]:
    """Each condition's colour (its algorithm's) and dash (by its place among that algorithm's conditions)."""
    seen: dict[str, int] = {}
    out = {}
    for key in keys:
        i = seen.get(key.algo, 0)
        seen[key.algo] = i + 1
        out[key] = (ALGO_COLORS.get(key.algo, "#333333"), DASHES[i % len(DASHES)])
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


def trained_on(records: list[dict], completions_per_step: int) -> list[tuple[int, float]]:
    """``(step, completions trained on so far)`` after each training step: the running sum of ``frac_weighted`` x
    ``completions_per_step`` (for F-ISFT+, the right answers), with step 0 at 0.

    >>> trained_on([{"step": 0}, {"step": 1, "frac_weighted": 0.5}, {"step": 2, "frac_weighted": 0.25}], 8)
    [(0, 0.0), (1, 4.0), (2, 6.0)]
    """
    total, out = 0.0, [(0, 0.0)]
    for r in records:
        if r["step"] >= 1:
            total += r["frac_weighted"] * completions_per_step
            out.append((r["step"], total))
    return out


def heldout_figure(runs: list[dict], task: str, algos: tuple[str, ...] | None = None, *, completions_per_step: int,
                   key: str = "eval_accuracy_sampled", title: str = "") -> go.Figure:
    """The in-training held-out accuracy (``key``, recorded every ``eval_every`` steps) of each condition against the
    completions trained on so far (:func:`trained_on`): one line per seed, so that conditions that train on more
    or fewer completions per step are compared at an equal number."""
    groups = conditions(runs, task, algos)
    style = _colors(groups)
    fig = go.Figure()
    for cond, group in groups.items():
        color, dash = style[cond]
        for i, run in enumerate(group):
            count = dict(trained_on(run["records"], completions_per_step))
            points = [(count[r["step"]], r[key]) for r in run["records"] if r.get(key) is not None]
            fig.add_trace(go.Scatter(x=[x for x, _ in points], y=[y for _, y in points], mode="lines+markers",
                                     name=label(cond), legendgroup=label(cond), showlegend=i == 0,
                                     line=dict(color=color, dash=dash, width=1.5), marker=dict(size=5),
                                     hovertemplate=f"{label(cond)}, seed {run['seed']}<br>%{{x:.0f}} completions "
                                                   f"trained on<br>accuracy %{{y:.3f}}<extra></extra>"))
    fig.update_xaxes(title="completions trained on so far")
    fig.update_yaxes(title="held-out accuracy (sampled, T = 1)")
    return _layout(fig, title or "Held-out accuracy against the completions trained on", 400)
