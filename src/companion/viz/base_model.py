"""Figures for chapter 5: how the tiny base model was made and what it does.

Most figures read ``metrics.json``, the record ``companion pretrain`` writes next to the checkpoint (so they show
the shipped model's own measurements: 200 held-out problems per task, 64 samples each). Two read a fresh sample
instead: :func:`entropy_records` (the sampling entropy at each position) and the Countdown audit
(:func:`companion.traces.audit_countdown`, drawn by :func:`audit_figure`).
"""

from __future__ import annotations

import plotly.graph_objects as go

RIGHT, WRONG = "#2a9d8f", "#e76f51"  # as in chapter 3
TASK_COLORS = {"countdown": "#264653", "tinygsm": "#e9c46a"}
TASK_TITLES = {"countdown": "Countdown", "tinygsm": "word problems"}


def _title(task: str) -> str:
    return TASK_TITLES.get(task, task)


def _layout(fig: go.Figure, title: str, height: int, **layout) -> go.Figure:
    """Title at the top, legend below it and above the plot: at phone width the legend wraps onto more lines
    instead of running into the title."""
    fig.update_layout(height=height, title=dict(text=title, x=0.01, xanchor="left", y=0.98, yanchor="top"),
                      margin=dict(t=105, b=50, l=70, r=20),
                      legend=dict(orientation="h", x=0, xanchor="left", y=1.02, yanchor="bottom"), **layout)
    return fig


def pretraining_loss_figure(metrics: dict) -> go.Figure:
    """The pretraining loss (token-mean NLL of the completions), averaged over each 50 steps."""
    losses = metrics["pretrain"]["loss_every_50"]
    steps = [50 * i + 25 for i in range(len(losses))]
    fig = go.Figure(go.Scatter(x=steps, y=losses, mode="lines", line=dict(color="#264653"),
                               hovertemplate="steps %{x}: loss %{y:.3f}<extra></extra>"))
    fig.update_xaxes(title_text="optimizer step (batches of 8 traces)")
    fig.update_yaxes(title_text="loss per completion token (nats)", type="log")
    return _layout(fig, f"Pretraining: {metrics['pretrain']['steps']:,} steps, "
                        f"{metrics['pretrain']['seconds'] / 60:.0f} minutes on a 2-core CPU", 400)


def _box(name: str, stats: dict, color: str, group: str) -> go.Box:
    """A box drawn from precomputed percentiles: the box spans p25-p75, the whiskers p5-p95."""
    return go.Box(name=name, x=[group], q1=[stats["p25"]], median=[stats["median"]], q3=[stats["p75"]],
                  lowerfence=[stats["p5"]], upperfence=[stats["p95"]], mean=[stats["mean"]], marker_color=color,
                  legendgroup=name, boxpoints=False, hoverinfo="y")


def length_box_figure(metrics: dict, *, source: str = "eval") -> go.Figure:
    """Lengths of right and of wrong completions per task: the model's samples (``source="eval"``, in tokens)
    or the noisy solver's pretraining traces (``source="corpus"``, in characters, one per token here)."""
    fig = go.Figure()
    shown = set()
    for task, record in metrics[source].items():
        for side, color, key in (("right", RIGHT, "correct"), ("wrong", WRONG, "wrong")):
            stats = record[f"length_{key}"] if source == "eval" else record[f"completion_chars_{key}"]
            if not stats.get("count"):
                continue
            box = _box(side, stats, color, f"{_title(task)}<br>({stats['count']:,} {side})")
            box.showlegend = side not in shown
            shown.add(side)
            fig.add_trace(box)
    unit = "tokens" if source == "eval" else "characters"
    fig.update_yaxes(title_text=f"completion length ({unit})", rangemode="tozero")
    title = "The base model's samples (T = 1)" if source == "eval" else "The noisy solver's traces the model learned from"
    fig.update_traces(boxmean=True)
    return _layout(fig, title, 460, boxmode="group")


def accuracy_figure(metrics: dict) -> go.Figure:
    """Per task: pass@1 sampled at T = 1, pass@1 of greedy decoding, and pass@64 (coverage)."""
    from companion.evaluate import pass_at

    tasks = list(metrics["eval"])
    n = metrics["eval"][tasks[0]]["num_generations"]
    bars = (("sampled pass@1 (T = 1)", lambda ev: pass_at(ev, 1), "#8ab17d"),
            ("greedy pass@1", lambda ev: ev["room_for_rl"]["greedy_pass@1"], "#264653"),
            (f"pass@{n}", lambda ev: pass_at(ev, n), "#b5c7d3"))
    fig = go.Figure([go.Bar(name=name, x=[_title(t) for t in tasks], y=[value(metrics["eval"][t]) for t in tasks],
                            marker_color=color, text=[f"{value(metrics['eval'][t]):.2f}" for t in tasks],
                            textposition="outside", hovertemplate="%{x}: %{y:.3f}<extra>" + name + "</extra>")
                     for name, value, color in bars])
    fig.update_yaxes(title_text="share of held-out problems solved", range=[0, 1.1])
    return _layout(fig, f"{metrics['eval'][tasks[0]]['num_problems']} held-out problems per task", 440,
                   barmode="group")


def pass_at_k_figure(metrics: dict) -> go.Figure:
    """pass@k for k = 1, 2, 4, ..., n per task, with the bootstrap 95% band over problems (metrics.json)."""
    fig = go.Figure()
    for task, ev in metrics["eval"].items():
        points = ev["pass_at_k"]
        ks = [p["k"] for p in points]
        color = TASK_COLORS.get(task, "#888888")
        fig.add_trace(go.Scatter(x=ks + ks[::-1], y=[p["high"] for p in points] + [p["low"] for p in points][::-1],
                                 mode="lines", fill="toself", fillcolor=color, opacity=0.25, line=dict(width=0),
                                 hoverinfo="skip",
                                 showlegend=False, legendgroup=task))
        fig.add_trace(go.Scatter(x=ks, y=[p["estimate"] for p in points], mode="lines+markers", name=_title(task),
                                 line=dict(color=color), legendgroup=task,
                                 customdata=[[p["low"], p["high"]] for p in points],
                                 hovertemplate="pass@%{x}: %{y:.3f} [%{customdata[0]:.3f}, %{customdata[1]:.3f}]"
                                               "<extra>" + _title(task) + "</extra>"))
    fig.update_xaxes(title_text="k (samples per problem)", type="log", tickvals=[1, 2, 4, 8, 16, 32, 64, 128, 256])
    fig.update_yaxes(title_text="pass@k", range=[0, 1.02])
    return _layout(fig, "pass@k of the base model, with bootstrap 95% bands", 440)


AUDIT_SKILLS = (("copy", "operands among the numbers left"), ("arithmetic", "written results right"),
                ("verdict", "yes/no verdicts right"))


def audit_figure(audits: dict[str, dict]) -> go.Figure:
    """Bars of :func:`companion.traces.audit_countdown` rates, one group per skill, one bar per audited source
    (e.g. ``{"noisy solver": ..., "base model": ...}``)."""
    colors = ["#b5c7d3", "#264653", "#8ab17d", "#e9c46a"]
    fig = go.Figure([go.Bar(name=f"{name} ({audit['completions']} completions)",
                            x=[label for _, label in AUDIT_SKILLS], y=[audit[key] for key, _ in AUDIT_SKILLS],
                            marker_color=colors[i % len(colors)], text=[f"{audit[key]:.2f}" for key, _ in AUDIT_SKILLS],
                            textposition="outside", hovertemplate="%{x}: %{y:.3f}<extra>" + name + "</extra>")
                     for i, (name, audit) in enumerate(audits.items())])
    fig.update_yaxes(title_text="share of steps or attempts", range=[0, 1.12])
    return _layout(fig, "Where a Countdown search goes wrong", 440, barmode="group")


def entropy_records(model, tokenizer, task, problems: list[dict], *, num_generations: int = 8,
                    max_completion_length: int = 256, seed: int = 0, min_rows: int = 20) -> list[dict]:
    """The mean sampling entropy (nats) at each completion position, over ``num_generations`` samples at T = 1
    of each problem: ``{"task", "position", "entropy", "rows"}`` for positions that at least ``min_rows``
    completions reach (EOS included)."""
    import torch

    from companion.rollout import generate

    prompts = [task.prompt(p) for p in problems]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        rollout = generate(model, tokenizer, prompts, num_generations=num_generations,
                           max_completion_length=max_completion_length, temperature=1.0)
    mask = rollout.completion_mask.float()  # (N, T)
    rows = mask.sum(dim=0)  # (T,) completions that reach each position
    mean = (rollout.entropies * mask).sum(dim=0) / rows.clamp(min=1)  # (T,)
    return [{"task": task.name, "position": t, "entropy": mean[t].item(), "rows": int(rows[t])}
            for t in range(mask.shape[1]) if rows[t] >= min_rows]


def entropy_figure(records: list[dict]) -> go.Figure:
    """Mean entropy of the next-token distribution against the position in the completion, per task."""
    fig = go.Figure()
    for task in dict.fromkeys(r["task"] for r in records):
        rows = [r for r in records if r["task"] == task]
        fig.add_trace(go.Scatter(x=[r["position"] for r in rows], y=[r["entropy"] for r in rows], mode="lines",
                                 name=_title(task), line=dict(color=TASK_COLORS.get(task, "#888888")),
                                 customdata=[r["rows"] for r in rows],
                                 hovertemplate="position %{x}: %{y:.3f} nats (%{customdata} completions)"
                                               "<extra>" + _title(task) + "</extra>"))
    fig.update_xaxes(title_text="position in the completion (tokens = characters)")
    fig.update_yaxes(title_text="mean entropy (nats)", rangemode="tozero")
    return _layout(fig, "How unsure the model is at each position (T = 1)", 420)
