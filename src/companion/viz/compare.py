"""Figures and tables for chapter 6: GRPO, Dr. GRPO, F-ISFT+ and F-ISFT± trained side by side.

Every function takes the records of :func:`companion.experiments.load_results` (one per committed run: its
config, its ``metrics.jsonl`` and its final evaluation) and returns a ``go.Figure`` or plain numbers; nothing here
trains or samples. Bands are the range (lowest to highest) over the seeds, lines their mean.
"""

from __future__ import annotations

import math
from statistics import mean, stdev

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from companion.viz.base_model import RIGHT, WRONG, TASK_TITLES, _layout

ALGO_ORDER = ("grpo", "dr_grpo", "fisft_plus", "fisft_pm", "fisft_minus", "nsr", "w_reinforce", "distill")
ALGO_NAMES = {"grpo": "GRPO", "dr_grpo": "Dr. GRPO", "fisft_plus": "F-ISFT+", "fisft_pm": "F-ISFT±",
              "fisft_minus": "F-ISFT−", "nsr": "NSR", "w_reinforce": "W-REINFORCE", "distill": "distilled",
              "ppo": "PPO"}
ALGO_COLORS = {"grpo": "#264653", "dr_grpo": "#8ab17d", "fisft_plus": "#e9c46a", "fisft_pm": "#e76f51",
               "fisft_minus": "#9d0208", "nsr": "#6d597a", "w_reinforce": "#b56576", "distill": "#7b2cbf",
               "ppo": "#2a9df4"}
"""The training rules, in the book's order; ``fisft_minus``, ``nsr`` and ``w_reinforce`` learn (mostly) from wrong
answers (chapter 6's negatives); ``distill`` is chapter 7's stronger teacher (``--source teacher``), ``ppo``
chapter 9's PPO with a value head."""
SMOOTH = 10
"""Steps in the trailing window that smooths per-step training curves (one step is only 128 completions)."""


def _rgba(color: str, alpha: float) -> str:
    r, g, b = (int(color[i:i + 2], 16) for i in (1, 3, 5))
    return f"rgba({r},{g},{b},{alpha})"


def by_algo(runs: list[dict], task: str) -> dict[str, list[dict]]:
    """The runs of ``task``, grouped by algorithm in the book's order (seeds sorted)."""
    groups = {a: sorted((r for r in runs if r["task"] == task and r["algo"] == a), key=lambda r: r["seed"])
              for a in ALGO_ORDER}
    return {a: rs for a, rs in groups.items() if rs}


def smoothed(records: list[dict], key: str, window: int = SMOOTH) -> tuple[list[int], list[float | None]]:
    """Per-step ``key`` of the training records, averaged over the trailing ``window`` steps (``None`` values,
    steps without a right or a wrong answer, are left out of the average)."""
    steps, values, out = [], [], []
    rows = [r for r in records if r["step"] >= 1 and key in r]
    for i, r in enumerate(rows):
        recent = [x[key] for x in rows[max(0, i - window + 1): i + 1] if x[key] is not None]
        steps.append(r["step"])
        out.append(mean(recent) if recent else None)
    return steps, out


def _band(fig, x, ys: list[list[float | None]], color: str, name: str, *, row=None, col=None, showlegend=True,
          dash=None, legendgroup=None, markers=False):
    """Mean line and min-max band over seeds (``ys``: one list per seed, aligned on ``x``)."""
    columns = list(zip(*ys))
    keep = [i for i, c in enumerate(columns) if all(v is not None for v in c)]
    x = [x[i] for i in keep]
    columns = [columns[i] for i in keep]
    lo, hi, mid = [min(c) for c in columns], [max(c) for c in columns], [mean(c) for c in columns]
    where = dict(row=row, col=col) if row else {}
    group = legendgroup or name
    if len(ys) > 1:
        fig.add_trace(go.Scatter(x=x + x[::-1], y=hi + lo[::-1], mode="lines", fill="toself",
                                 fillcolor=_rgba(color, 0.18), line=dict(width=0), hoverinfo="skip", showlegend=False,
                                 legendgroup=group), **where)
    fig.add_trace(go.Scatter(x=x, y=mid, mode="lines+markers" if markers else "lines", name=name, legendgroup=group, showlegend=showlegend,
                             line=dict(color=color, dash=dash, width=2),
                             hovertemplate=f"{name}: %{{y:.3f}} at step %{{x}}<extra></extra>"), **where)


def heldout_curve(run: dict, key: str = "eval_accuracy_sampled") -> tuple[list[int], list[float]]:
    """(steps, values) of an in-training held-out evaluation of one run."""
    rows = [r for r in run["records"] if r.get(key) is not None]
    return [r["step"] for r in rows], [r[key] for r in rows]


def accuracy_figure(runs: list[dict], tasks=("countdown", "tinygsm"), *, base: dict | None = None) -> go.Figure:
    """Held-out accuracy over training (100 problems x 4 samples at T = 1, every 25 steps), per algorithm and task."""
    fig = make_subplots(rows=len(tasks), cols=1, shared_xaxes=True, vertical_spacing=0.08,
                        subplot_titles=[TASK_TITLES.get(t, t) for t in tasks])
    for row, task in enumerate(tasks, start=1):
        for algo, group in by_algo(runs, task).items():
            curves = [heldout_curve(r) for r in group]
            _band(fig, curves[0][0], [c[1] for c in curves], ALGO_COLORS[algo], ALGO_NAMES[algo], row=row, col=1,
                  showlegend=row == 1, markers=True)
        fig.update_yaxes(title_text="sampled accuracy", rangemode="tozero", row=row, col=1)
    fig.update_xaxes(title_text="training step", row=len(tasks), col=1)
    return _layout(fig, "Held-out accuracy during training (mean and range of the seeds)", 300 * len(tasks) + 120)


def base_evaluations(results: list[dict], *, temperature: float = 1.0) -> dict[str, dict]:
    """Task -> the base model's evaluation at ``temperature`` among ``results`` (chapter 7's n = 256 one, on the
    same 200 held-out problems as the final policies): the base rate every "× base" ratio divides by. Sixteen
    samples per problem leave that rate ±0.02 uncertain; 256 samples, ±0.006."""
    return {r["task"]: r for r in results if r["algo"] == "base" and r["temperature"] == temperature}


def final_table(runs: list[dict], base: dict[str, dict] | None = None) -> list[dict]:
    """One row per task and algorithm: pass@1 of the final policies on the 200 held-out problems (n = 16, T = 1),
    mean and sample standard deviation over seeds, each seed's value, lengths, and, with ``base`` (task -> the base
    model's evaluation on the same problems, :func:`base_evaluations`), the base's pass@1 and each seed's ratio to
    it with the t interval of their mean (``ratio``, a :class:`companion.stats.Mean`; None with one seed)."""
    from companion.stats import mean_interval

    rows = []
    for task in dict.fromkeys(r["task"] for r in runs if r["algo"] != "base"):
        for algo, group in by_algo(runs, task).items():
            values = [r["summary"]["pass_at_k"][0]["estimate"] for r in group]
            wrong = [r["summary"]["length_wrong"].get("mean") for r in group]
            right = [r["summary"]["length_correct"].get("mean") for r in group]
            row = {"task": task, "algo": algo, "seeds": len(values), "pass@1": mean(values),
                   "sd": stdev(values) if len(values) > 1 else 0.0, "per_seed": values,
                   "length_right": mean(x for x in right if x is not None) if any(right) else None,
                   "length_wrong": mean(x for x in wrong if x is not None) if any(wrong) else None,
                   "truncated": mean(r["summary"]["truncated_fraction"] for r in group)}
            if base and task in base:
                rate = base[task]["summary"]["pass_at_k"][0]["estimate"]
                ratios = [v / rate for v in values]
                row.update({"base_pass@1": rate, "base_n": base[task]["num_generations"], "per_seed_ratio": ratios,
                            "ratio": mean_interval(ratios) if len(ratios) > 1 else None})
            rows.append(row)
    return rows


def final_figure(runs: list[dict], base: dict[str, dict] | None = None) -> go.Figure:
    """Final held-out pass@1 per algorithm and task: one dot per seed, a bar for their mean, the base as a line."""
    table = final_table(runs, base)
    tasks = list(dict.fromkeys(r["task"] for r in table))
    fig = make_subplots(rows=1, cols=len(tasks), subplot_titles=[TASK_TITLES.get(t, t) for t in tasks])
    for col, task in enumerate(tasks, start=1):
        rows = [r for r in table if r["task"] == task]
        names = [ALGO_NAMES[r["algo"]] for r in rows]
        fig.add_trace(go.Bar(x=names, y=[r["pass@1"] for r in rows], marker_color=[ALGO_COLORS[r["algo"]] for r in rows],
                             opacity=0.55, showlegend=False, hovertemplate="%{x}: mean %{y:.3f}<extra></extra>"),
                      row=1, col=col)
        for r in rows:
            fig.add_trace(go.Scatter(x=[ALGO_NAMES[r["algo"]]] * len(r["per_seed"]), y=r["per_seed"], mode="markers",
                                     marker=dict(color="black", size=7, symbol="circle-open"), showlegend=False,
                                     hovertemplate="one seed: %{y:.3f}<extra></extra>"), row=1, col=col)
        if "base_pass@1" in rows[0]:
            fig.add_hline(y=rows[0]["base_pass@1"], line=dict(color="gray", dash="dash"), row=1, col=col,
                          annotation_text="base", annotation_position="bottom right")
        fig.update_yaxes(rangemode="tozero", row=1, col=col)
    n = "/".join(str(v) for v in sorted({r["num_generations"] for r in runs if r["algo"] in ALGO_NAMES}))
    fig.update_yaxes(title_text=f"pass@1 (200 problems, n = {n})", row=1, col=1)
    return _layout(fig, "Final policies on held-out problems (bars: mean of the seeds; circles: each seed)", 430)


def length_figure(runs: list[dict], task: str) -> go.Figure:
    """Mean length of right and of wrong completions per training step (smoothed), and the truncated share."""
    fig = make_subplots(rows=3, cols=1, shared_xaxes=True, vertical_spacing=0.07, row_heights=[0.4, 0.4, 0.2],
                        subplot_titles=["right answers", "wrong answers", "cut off at the length limit"])
    for algo, group in by_algo(runs, task).items():
        for row, key in ((1, "length_correct"), (2, "length_wrong"), (3, "frac_truncated")):
            curves = [smoothed(r["records"], key) for r in group]
            _band(fig, curves[0][0], [c[1] for c in curves], ALGO_COLORS[algo], ALGO_NAMES[algo], row=row, col=1,
                  showlegend=row == 1)
    fig.update_yaxes(title_text="tokens", row=1, col=1)
    fig.update_yaxes(title_text="tokens", row=2, col=1)
    fig.update_yaxes(title_text="share", rangemode="tozero", row=3, col=1)
    fig.update_xaxes(title_text="training step", row=3, col=1)
    return _layout(fig, f"{TASK_TITLES.get(task, task)}: length of the sampled completions during training "
                        f"({SMOOTH}-step mean)", 720)


def filter_figure(runs: list[dict], task: str) -> go.Figure:
    """Per step: the share of groups with zero reward spread and the share of completions with a non-zero weight."""
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.1,
                        subplot_titles=["groups whose G rewards are all equal", "completions with a non-zero weight"])
    for algo, group in by_algo(runs, task).items():
        for row, key in ((1, "frac_zero_spread"), (2, "frac_weighted")):
            curves = [smoothed(r["records"], key) for r in group]
            _band(fig, curves[0][0], [c[1] for c in curves], ALGO_COLORS[algo], ALGO_NAMES[algo], row=row, col=1,
                  showlegend=row == 1)
        fig.update_yaxes(title_text="share", range=[0, 1], row=1, col=1)
        fig.update_yaxes(title_text="share", range=[0, 1], row=2, col=1)
    fig.update_xaxes(title_text="training step", row=2, col=1)
    return _layout(fig, f"{TASK_TITLES.get(task, task)}: what the filter keeps ({SMOOTH}-step mean)", 560)


# --- the stability map -----------------------------------------------------------------------------------------


def variant(run: dict) -> str:
    """How the stability map names a run: the algorithm, plus its normaliser when it is not the algorithm's own."""
    from companion.objectives import resolve_normalizer

    name = ALGO_NAMES[run["algo"]]
    return name if run["normalizer"] == resolve_normalizer(run["algo"]) else f"{name}, {run['normalizer']}"


def blowup_step(records: list[dict], *, threshold: float = 0.5, window: int = 5, until: int | None = None) -> int | None:
    """The first step at which the share of truncated completions, over the trailing ``window`` steps, reaches
    ``threshold``: where lengths have exploded. ``None`` if it never does (up to step ``until``)."""
    steps, values = smoothed([r for r in records if until is None or r["step"] <= until], "frac_truncated", window)
    return next((s for s, v in zip(steps, values) if v is not None and v >= threshold), None)


def stability_rows(runs: list[dict], *, column: str = "learning_rate", steps: int | None = None) -> list[dict]:
    """One row per run: its variant, its ``column`` value (``learning_rate``, or ``task``), the blow-up step, and the
    mean length, accuracy, entropy and truncated share of its last 10 training steps (of the first ``steps``)."""
    rows = []
    for run in runs:
        if run["algo"] == "base":
            continue
        records = [r for r in run["records"] if r["step"] >= 1 and (steps is None or r["step"] <= steps)]
        last = records[-10:]
        rows.append({"variant": variant(run), column: run[column], "seed": run["seed"],
                     "blowup_step": blowup_step(records), "length": mean(r["length"] for r in last),
                     "accuracy": mean(r["accuracy"] for r in last), "entropy": mean(r["entropy"] for r in last),
                     "truncated": mean(r["frac_truncated"] for r in last)})
    return rows


def stability_figure(rows: list[dict], *, column: str = "learning_rate", title: str = "") -> go.Figure:
    """Variant x ``column``: colour is the share of completions cut off at the length limit over the last 10
    training steps (mean of the seeds), the text each seed's blow-up step (a dash: never)."""
    order = [ALGO_NAMES[a] for a in ALGO_ORDER]
    variants = sorted(dict.fromkeys(r["variant"] for r in rows),
                      key=lambda v: (order.index(v.split(",")[0]) if v.split(",")[0] in order else len(order), v))
    columns = list(dict.fromkeys(r[column] for r in rows))
    if all(isinstance(c, (int, float)) for c in columns):
        columns.sort()
    cells = {}
    for r in rows:
        cells.setdefault((r["variant"], r[column]), []).append(r)

    def label(value):
        return TASK_TITLES.get(value, value) if isinstance(value, str) else f"{value:g}"

    z, text, hover = [], [], []
    for v in variants:
        z.append([]), text.append([]), hover.append([])
        for c in columns:
            group = sorted(cells.get((v, c), []), key=lambda r: r["seed"])
            z[-1].append(mean(r["truncated"] for r in group) if group else None)
            text[-1].append(" / ".join(str(r["blowup_step"] or "–") for r in group))
            hover[-1].append(f"{v}, {label(c)}: cut off {z[-1][-1]:.0%}, mean length "
                             f"{mean(r['length'] for r in group):.0f}" if group else "")
    fig = go.Figure(go.Heatmap(x=[label(c) for c in columns], y=variants, z=z, text=text, texttemplate="%{text}",
                               customdata=hover, hovertemplate="%{customdata}<extra></extra>", colorscale="YlOrRd",
                               zmin=0, zmax=1, colorbar=dict(title="cut off", tickformat=".0%")))
    fig.update_xaxes(type="category")
    fig.update_yaxes(autorange="reversed")
    return _layout(fig, title or "Where lengths explode: share cut off at the limit, last 10 steps", 380)


def length_change(runs: list[dict], task: str, *, window: int = 10) -> list[dict]:
    """Per algorithm: mean wrong- and right-answer length over the first and the last ``window`` steps, per seed."""
    rows = []
    for algo, group in by_algo(runs, task).items():
        for side, key in (("wrong", "length_wrong"), ("right", "length_correct")):
            changes = []
            for r in group:
                values = [x[key] for x in r["records"] if x["step"] >= 1 and x.get(key) is not None]
                if len(values) >= 2 * window:
                    changes.append(mean(values[-window:]) - mean(values[:window]))
            if changes:
                rows.append({"task": task, "algo": algo, "side": side, "change": mean(changes),
                             "low": min(changes), "high": max(changes), "per_seed": changes})
    return rows


def spread(values: list[float]) -> float:
    """Half the range of ``values``: the seed spread the verdicts compare differences with."""
    return (max(values) - min(values)) / 2 if len(values) > 1 else math.nan


# --- the three claims ------------------------------------------------------------------------------------------


def _pass1(runs: list[dict], task: str, algo: str) -> list[float]:
    return [r["summary"]["pass_at_k"][0]["estimate"] for r in by_algo(runs, task).get(algo, [])]


def _sd(values: list[float]) -> float:
    return stdev(values) if len(values) > 1 else math.nan


def distinguishable(a: list[float], b: list[float]) -> bool:
    """Whether two arms' per-seed scores differ: Welch's 95% t interval of the difference of their means excludes 0
    (:func:`companion.stats.difference`). False with fewer than two values on a side (no spread to judge by)."""
    from companion.stats import difference

    return len(a) >= 2 and len(b) >= 2 and difference(a, b).excludes_zero


def comparison(runs: list[dict], task: str, a: str, b: str, *, claim, holds_when: str | None = None) -> dict | None:
    """Algorithm ``a`` against ``b`` on ``task``'s final pass@1, seed by seed: the means, the difference with its
    95% interval, the TOST equivalence within :data:`companion.stats.MARGIN`, the outcome ("greater", "less",
    "equivalent", "cannot tell") and the verdict sentence (:func:`companion.stats.compare`). ``holds``: whether the
    outcome is ``holds_when`` (True or False), None when it is "cannot tell" or a side has fewer than two seeds.
    None when either algorithm has no run on ``task``."""
    from companion.stats import compare, verdict

    values_a, values_b = _pass1(runs, task, a), _pass1(runs, task, b)
    if not (values_a and values_b):
        return None
    row = {"task": task, "claim": claim, "a": a, "b": b, "mean_a": mean(values_a), "mean_b": mean(values_b),
           "sd_a": _sd(values_a), "sd_b": _sd(values_b), "difference": mean(values_a) - mean(values_b),
           "seeds": (len(values_a), len(values_b)), "outcome": None, "holds": None, "low": None, "high": None,
           "verdict": "one seed on a side: no spread to judge a difference by"}
    if min(len(values_a), len(values_b)) >= 2:
        c = compare(values_a, values_b)
        row.update(outcome=c.outcome, low=c.difference.low, high=c.difference.high, comparison=c,
                   verdict=verdict(values_a, values_b, names=(ALGO_NAMES[a], ALGO_NAMES[b])))
        if holds_when is not None and c.outcome != "cannot tell":
            row["holds"] = c.outcome == holds_when
    return row


def problem_scores(runs: list[dict], task: str, algo: str) -> tuple[list[int], list[list[float]]]:
    """The final evaluation's pass@1 of each held-out problem (its share of right samples), one row per problem
    (sorted by index) and one column per seed of ``algo`` on ``task``: the input of
    :func:`companion.stats.problem_bootstrap`. Returns ``(problem indices, rows)``."""
    from companion.verify import is_correct

    group = by_algo(runs, task).get(algo, []) or [r for r in runs if r["task"] == task and r["algo"] == algo]
    scores = [{row["index"]: mean(float(is_correct(x)) for x in row["rewards"]) for row in r["rows"]} for r in group]
    indices = sorted(set.intersection(*(set(s) for s in scores))) if scores else []
    return indices, [[s[i] for s in scores] for i in indices]


def accuracy_claims(runs: list[dict]) -> list[dict]:
    """Claims (1) GRPO ≈ F-ISFT± (holds when their equivalence within ±MARGIN is shown) and (2) F-ISFT+ lags the
    better of the two (holds when its deficit's 95% interval lies below 0), per task, as :func:`comparison` rows;
    ``holds`` is None when the data cannot tell."""
    out = []
    for task in dict.fromkeys(r["task"] for r in runs if r["algo"] != "base"):
        grpo, pm, plus = (_pass1(runs, task, a) for a in ("grpo", "fisft_pm", "fisft_plus"))
        if not (grpo and pm and plus):  # a task without all three has nothing to judge
            continue
        out.append(comparison(runs, task, "grpo", "fisft_pm", claim=1, holds_when="equivalent"))
        best = max(("grpo", grpo), ("fisft_pm", pm), key=lambda x: mean(x[1]))[0]
        out.append(comparison(runs, task, "fisft_plus", best, claim=2, holds_when="less"))
    return out


def length_claims(runs: list[dict], *, window: int = 10) -> list[dict]:
    """Claim (3) in the training batches, per task and algorithm: the change of the wrong answers' length (the mean
    of the last ``window`` steps minus that of the first), with the t interval over seeds (``wrong``, a
    :class:`companion.stats.Mean`), and the same for how much more it changed than the right answers' (``excess``,
    seed by seed). ``grows`` when both intervals lie above 0 (None with fewer than two seeds)."""
    from companion.stats import mean_interval

    out = []
    for task in dict.fromkeys(r["task"] for r in runs):
        changes = {(row["algo"], row["side"]): row for row in length_change(runs, task, window=window)}
        for algo in by_algo(runs, task):
            wrong, right = changes.get((algo, "wrong")), changes.get((algo, "right"))
            if not wrong or not right or len(wrong["per_seed"]) != len(right["per_seed"]):
                continue
            excess = [w - r for w, r in zip(wrong["per_seed"], right["per_seed"])]
            row = {"task": task, "algo": algo, "wrong_change": wrong["change"], "wrong_low": wrong["low"],
                   "wrong_high": wrong["high"], "right_change": right["change"], "grows": None}
            if len(excess) > 1:
                row["wrong"], row["excess"] = mean_interval(wrong["per_seed"]), mean_interval(excess)
                row["grows"] = row["wrong"].low > 0 and row["excess"].low > 0
            out.append(row)
    return out


def matched_wrong_lengths(runs: list[dict], task: str) -> dict:
    """Mean length of the final policies' wrong answers on the *same* held-out problems, per algorithm.

    Training-batch lengths mix two things: how long a policy writes, and which problems it still gets wrong (as
    accuracy rises, the wrong answers left are those of harder problems). Here every run is scored on the problems
    where every run of ``task`` (all algorithms, all seeds, and the base model when its evaluation is among
    ``runs``, as ``"base"``) has at least one wrong sample, so the problem mix is the same for all. Returns
    ``{"problems": count, "algos": {algo: {"mean", "low", "high", "per_seed"}}}``; with the base among the runs,
    each trained algorithm also has ``vs_base``: its seeds' lengths minus the base's, with their t interval (a
    :class:`companion.stats.Mean`; None with one seed).
    """
    groups = by_algo(runs, task)
    base = [r for r in runs if r["task"] == task and r["algo"] == "base"]
    return matched_lengths({"base": base, **groups} if base else groups)


def matched_lengths(groups: dict[str, list[dict]]) -> dict:
    """:func:`matched_wrong_lengths` for any named groups of runs of one task (``"base"``: the base model's)."""
    from companion.stats import mean_interval
    from companion.verify import is_correct

    per_run = {}
    for name, group in groups.items():
        for i, r in enumerate(group):
            wrong = {}
            for row in r["rows"]:
                lengths = [n for n, reward in zip(row["lengths"], row["rewards"]) if not is_correct(reward)]
                if lengths:
                    wrong[row["index"]] = mean(lengths)
            per_run[(name, i)] = wrong
    common = set.intersection(*(set(w) for w in per_run.values())) if per_run else set()
    out = {}
    for name, group in groups.items():
        values = [mean(per_run[(name, i)][j] for j in common) for i in range(len(group))] if common else []
        if values:
            out[name] = {"mean": mean(values), "low": min(values), "high": max(values), "per_seed": values}
    if "base" in out:
        for name, m in out.items():
            if name != "base":
                gaps = [v - out["base"]["mean"] for v in m["per_seed"]]
                m["vs_base"] = mean_interval(gaps) if len(gaps) > 1 else None
    return {"problems": len(common), "algos": out}


def format_score_effect(results: list[dict], reward_results: list[dict], task: str = "countdown") -> dict:
    """What Countdown's format score (0.1 for a well-formed wrong answer) does to GRPO, beside F-ISFT± (which
    treats a 0.1 as wrong): per arm (``GRPO, format score`` from chapter 6's runs, ``GRPO, binary`` from chapter
    9's, ``F-ISFT±``), the final pass@1, share cut off and wrong-answer length on the problems every run and the
    base get wrong (:func:`matched_lengths`), each seed's; and the differences between arms with Welch intervals
    (``differences``: (a, b, metric) -> :class:`companion.stats.Difference`)."""
    from companion.stats import difference

    arms = {"base": [r for r in results if r["task"] == task and r["algo"] == "base"],
            "GRPO, format score": by_algo(results, task).get("grpo", []),
            "GRPO, binary": sorted((r for r in reward_results if r["task"] == task and r["algo"] == "grpo"
                                    and r["reward"] == "binary"), key=lambda r: r["seed"]),
            "F-ISFT±": by_algo(results, task).get("fisft_pm", [])}
    matched = matched_lengths(arms)
    rows = {name: {"pass1": [r["summary"]["pass_at_k"][0]["estimate"] for r in group],
                   "truncated": [r["summary"]["truncated_fraction"] for r in group],
                   "wrong_length": matched["algos"][name]["per_seed"]}
            for name, group in arms.items() if name != "base"}
    pairs = (("GRPO, binary", "GRPO, format score"), ("F-ISFT±", "GRPO, format score"), ("F-ISFT±", "GRPO, binary"))
    differences = {(a, b, metric): difference(rows[a][metric], rows[b][metric])
                   for a, b in pairs for metric in ("pass1", "truncated", "wrong_length")}
    return {"problems": matched["problems"], "base_length": matched["algos"]["base"]["mean"], "arms": rows,
            "differences": differences}


# --- one cause at a time ---------------------------------------------------------------------------------------


def variant_of(run: dict) -> str:
    """The variant a run of a one-cause-at-a-time experiment tests: its name between the task and the seed.

    >>> variant_of({"name": "countdown-dr_grpo-sequence-seed3", "task": "countdown"})
    'dr_grpo-sequence'
    """
    return run["name"].removeprefix(f"{run['task']}-").rsplit("-seed", 1)[0]


def against(groups: dict[str, list[dict]], references: dict[str, list[dict]]) -> list[dict]:
    """Each group of runs (a variant's seeds) against each reference group (e.g. the comparison's GRPO and Dr. GRPO):
    the group's final pass@1 (mean, standard deviation, each seed's) and, per reference, :func:`companion.stats.compare`
    of the two (``vs[name]``: the difference with its Welch 95% interval and the outcome; None with fewer than two
    seeds on a side)."""
    from companion.stats import compare

    rows = []
    for name, group in groups.items():
        values = [r["summary"]["pass_at_k"][0]["estimate"] for r in sorted(group, key=lambda r: r["seed"])]
        row = {"variant": name, "seeds": len(values), "pass@1": mean(values), "sd": _sd(values), "per_seed": values,
               "vs": {}}
        for reference, runs in references.items():
            other = [r["summary"]["pass_at_k"][0]["estimate"] for r in runs]
            row["vs"][reference] = compare(values, other) if min(len(values), len(other)) >= 2 else None
        rows.append(row)
    return rows


def by_variant(runs: list[dict]) -> dict[str, list[dict]]:
    """The runs of a one-cause-at-a-time experiment grouped by :func:`variant_of`, in the order they come."""
    groups: dict[str, list[dict]] = {}
    for run in runs:
        groups.setdefault(variant_of(run), []).append(run)
    return groups


def dr_grpo_lags(variant_runs: list[dict], runs: list[dict]) -> dict[str, dict]:
    """Why Dr. GRPO lags on Countdown: each variant of the ``drgrpo`` experiment (``variant_runs``) :func:`against`
    the comparison's (``runs``) GRPO and Dr. GRPO on Countdown, by variant; ``vs`` is keyed "GRPO" and "Dr. GRPO"."""
    countdown = by_algo(runs, "countdown")
    ends = {"GRPO": countdown["grpo"], "Dr. GRPO": countdown["dr_grpo"]}
    return {row["variant"]: row for row in against(by_variant(variant_runs), ends)}
