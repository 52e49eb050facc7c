"""Chapter 11's figure: every pass@1 difference the book decides, with its 95% interval, against the ±0.03 margin."""

from __future__ import annotations

import plotly.graph_objects as go

from companion.stats import MARGIN
from companion.viz.base_model import _layout

OUTCOME_COLORS = {"greater": "#2a9d8f", "less": "#e76f51", "equivalent": "#264653", "cannot tell": "#8d99ae"}


def forest_figure(rows: list[dict], *, title: str = "") -> go.Figure:
    """One line per row (``label``, ``estimate``, ``low``, ``high``, ``outcome``): the difference as a dot with its
    95% interval, colored by the outcome, over a band of ±:data:`companion.stats.MARGIN` (equivalence) and a line
    at 0. The first row is drawn at the top."""
    fig = go.Figure()
    fig.add_vrect(x0=-MARGIN, x1=MARGIN, fillcolor="rgba(38,70,83,0.10)", line_width=0)
    fig.add_vline(x=0, line=dict(color="#6c757d", width=1, dash="dot"))
    for outcome, color in OUTCOME_COLORS.items():
        chosen = [r for r in rows if r["outcome"] == outcome]
        if not chosen:
            continue
        fig.add_trace(go.Scatter(
            x=[r["estimate"] for r in chosen], y=[r["label"] for r in chosen], mode="markers", name=outcome,
            marker=dict(color=color, size=9),
            error_x=dict(type="data", symmetric=False, array=[r["high"] - r["estimate"] for r in chosen],
                         arrayminus=[r["estimate"] - r["low"] for r in chosen], color=color, thickness=2),
            hovertemplate="%{y}: %{x:+.3f}<extra>" + outcome + "</extra>"))
    fig.update_yaxes(categoryorder="array", categoryarray=[r["label"] for r in rows][::-1], automargin=True)
    fig.update_xaxes(title="pass@1 difference, 95% interval (shaded: ±0.03)",
                     zeroline=False)
    return _layout(fig, title or "The verdicts on pass@1", 140 + 34 * len(rows))
