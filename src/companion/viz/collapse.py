"""Figures for chapter 2, the collapse of GRPO into weighted SFT.

:func:`group_weight_records` tabulates, with :func:`companion.objectives.sample_weights`, the weight each right and
each wrong sample of a group gets; the figure functions take tidy records and return a ``go.Figure``.
"""

from __future__ import annotations

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from companion.objectives import ALGORITHMS, sample_weights
from companion.viz.length import ALGO_TITLES, RIGHT, WRONG


def group_weight_records(num_generations: int, algos=tuple(ALGORITHMS), **weight_knobs) -> list[dict]:
    """One record per (algorithm, number c of right samples out of G): the weight of a right and of a wrong
    sample (None where the group has none), and whether the whole group gets weight 0 (``filtered``).

    ``weight_knobs`` go to :func:`objectives.sample_weights` (e.g. ``std="population", eps_std=0.0`` for the
    closed forms Â⁺ = √((1−p)/p), Â⁻ = −√(p/(1−p))).

    >>> rows = group_weight_records(4, algos=("grpo",), std="population", eps_std=0.0)
    >>> [(r["c"], r["weight_right"] and round(r["weight_right"], 4), round(r["weight_wrong"], 4), r["filtered"])
    ...  for r in rows[:2]]  # √3 and −1/√3 at p = 1/4
    [(0, None, 0.0, True), (1, 1.7321, -0.5774, False)]
    """
    G = num_generations
    rewards = [[1.0] * c + [0.0] * (G - c) for c in range(G + 1)]  # one group per c, right samples first
    records = []
    for algo in algos:
        w = sample_weights(sum(rewards, []), G, algo=algo, **weight_knobs).view(G + 1, G)  # (G+1, G)
        for c in range(G + 1):
            records.append(dict(
                algo=algo, num_generations=G, c=c, p=c / G,
                weight_right=w[c, 0].item() if c > 0 else None,
                weight_wrong=w[c, -1].item() if c < G else None,
                filtered=bool((w[c] == 0).all()),
            ))
    return records


def group_weights_figure(records: list[dict], *, start: int | None = None) -> go.Figure:
    """Slide c, the number of right samples in a group of G: the weight of each right and each wrong sample.

    Left: one pair of bars per algorithm (a right sample's weight, a wrong sample's weight), with the
    algorithms that drop the whole group marked "filtered". Right: GRPO's Â⁺ and Â⁻ for every c, with the
    current c marked. ``records`` come from :func:`group_weight_records` (one G).
    """
    algos = [a for a in ALGORITHMS if any(r["algo"] == a for r in records)]
    G = records[0]["num_generations"]
    cs = list(range(G + 1))
    start = G // 4 if start is None else start
    table = {(r["algo"], r["c"]): r for r in records}
    names = [ALGO_TITLES.get(a, a) for a in algos]

    def bars(c: int):
        rows = [table[(a, c)] for a in algos]
        right = [r["weight_right"] if r["weight_right"] is not None else 0.0 for r in rows]
        wrong = [r["weight_wrong"] if r["weight_wrong"] is not None else 0.0 for r in rows]
        labels = [("filtered" if r["filtered"] else "") for r in rows]
        return right, wrong, labels

    ys = [v for r in records for v in (r["weight_right"], r["weight_wrong"]) if v is not None]
    low, high = min(ys + [0.0]), max(ys + [0.0])
    span = [low - 0.12 * (high - low), high + 0.12 * (high - low)]
    fig = make_subplots(rows=1, cols=2, column_widths=[0.55, 0.45], horizontal_spacing=0.1,
                        subplot_titles=["weight of one sample, by algorithm", "GRPO: Â⁺ and Â⁻ against c"])
    right, wrong, labels = bars(start)
    fig.add_trace(go.Bar(x=names, y=right, name="a right sample", marker_color=RIGHT, text=labels,
                         textposition="outside", hovertemplate="%{x}: %{y:.3f}<extra>right sample</extra>"), 1, 1)
    fig.add_trace(go.Bar(x=names, y=wrong, name="a wrong sample", marker_color=WRONG,
                         hovertemplate="%{x}: %{y:.3f}<extra>wrong sample</extra>"), 1, 1)
    if "grpo" in algos:
        grpo = [table[("grpo", c)] for c in cs]
        for key, color, name in (("weight_right", RIGHT, "Â⁺"), ("weight_wrong", WRONG, "Â⁻")):
            fig.add_trace(go.Scatter(x=cs, y=[r[key] for r in grpo], mode="lines+markers", line_color=color,
                                     showlegend=False, hovertemplate=f"c = %{{x}}: {name} = %{{y:.3f}}<extra></extra>"),
                          1, 2)
        fig.add_trace(go.Scatter(x=[start, start], y=span, mode="lines", line=dict(color="black", dash="dot"),
                                 showlegend=False, hoverinfo="skip"), 1, 2)  # trace 4: the current c
    fig.update_yaxes(range=span, zeroline=True, zerolinecolor="grey")
    fig.update_yaxes(title_text="weight w of one sample", col=1)
    fig.update_xaxes(title_text=f"c, right samples out of G = {G}", col=2, dtick=max(1, G // 8))
    steps = []
    for c in cs:
        right, wrong, labels = bars(c)
        update, indices = {"y": [right, wrong], "text": [labels, []]}, [0, 1]
        if "grpo" in algos:  # also move the marker of the current c
            update = {"y": [right, wrong, span], "x": [names, names, [c, c]], "text": [labels, [], []]}
            indices = [0, 1, 4]
        steps.append(dict(label=str(c), method="restyle", args=[update, indices]))
    fig.update_layout(
        height=460, barmode="group", margin=dict(t=90, b=100, l=70, r=20),
        legend=dict(orientation="h", y=1.22, x=0, xanchor="left", yanchor="bottom"),
        sliders=[dict(active=start, steps=steps, x=0.0, len=1.0, y=-0.18, yanchor="top",
                      currentvalue=dict(prefix="right samples in the group: c = ", suffix=f" of {G}"))],
    )
    return fig


def gradient_agreement_figure(records: list[dict]) -> go.Figure:
    """Scatter of gradient entries, the GRPO loss's (x) against the weighted NLL's (y), one panel per case.

    ``records``: dicts with ``case`` (a label), ``grpo`` and ``nll`` (one gradient entry each). Each panel has
    its own scale (the cases differ by orders of magnitude) and the diagonal y = x, where the two agree.
    """
    cases = list(dict.fromkeys(r["case"] for r in records))
    fig = make_subplots(rows=1, cols=len(cases), subplot_titles=cases, horizontal_spacing=0.08)
    for col, case in enumerate(cases, start=1):
        rows = [r for r in records if r["case"] == case]
        x, y = [r["grpo"] for r in rows], [r["nll"] for r in rows]
        top = max([abs(v) for v in x + y] + [1e-30]) * 1.05
        fig.add_trace(go.Scatter(x=[-top, top], y=[-top, top], mode="lines", hoverinfo="skip", showlegend=False,
                                 line=dict(color="grey", dash="dot", width=1)), row=1, col=col)
        fig.add_trace(go.Scattergl(x=x, y=y, mode="markers", marker=dict(size=4, opacity=0.6), showlegend=False,
                                   hovertemplate="GRPO %{x:.2e}<br>weighted NLL %{y:.2e}<extra>" + case + "</extra>"),
                      row=1, col=col)
        fig.update_xaxes(range=[-top, top], title_text="∂(GRPO loss)/∂θ", exponentformat="e", row=1, col=col)
        fig.update_yaxes(range=[-top, top], exponentformat="e", row=1, col=col)
    fig.update_yaxes(title_text="∂(weighted NLL)/∂θ", row=1, col=1)
    fig.update_layout(height=420, margin=dict(t=60, b=50, l=70, r=20))
    return fig
