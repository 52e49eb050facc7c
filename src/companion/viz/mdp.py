"""Figures for chapter 1, the token MDP."""

from __future__ import annotations

import plotly.graph_objects as go


def _show_token(token: str) -> str:
    return {"\n": "\\n", " ": "space"}.get(token, token)


def token_tree_figure(records: list[dict], prompt: str, *, eos_token: str | None = None) -> go.Figure:
    """A sunburst of the token tree below a prompt: each ring is one more token (one more MDP step).

    ``records`` come from :func:`companion.mdp.token_tree`. A wedge's angle is the probability of its whole path
    from the prompt, so the unexplored rest of each ring is the mass outside the top-k actions.
    """
    root = "prompt"
    ids = [root] + [root + "/" + r["id"] for r in records]
    parents = [""] + [root + "/" + r["parent"] if r["parent"] else root for r in records]
    labels = ["state s₀"] + [("EOS" if r["token"] == eos_token else _show_token(r["token"])) for r in records]
    values = [1.0] + [r["path_prob"] for r in records]
    hover = ["the prompt: " + prompt.replace("\n", "⏎")[-60:]] + [
        f"completion so far: {r['id'].replace(chr(0x2192), '').replace(chr(10), '⏎')}<br>"
        f"π(action | state) = {r['prob']:.3f}<br>path probability = {r['path_prob']:.3f}"
        for r in records
    ]
    fig = go.Figure(go.Sunburst(
        ids=ids, parents=parents, labels=labels, values=values, branchvalues="total",
        hovertext=hover, hoverinfo="text", insidetextorientation="horizontal",
        marker=dict(colors=[0.0] + [r["prob"] for r in records], colorscale="Blues", cmin=0, cmax=1,
                    showscale=True, colorbar=dict(title="π(a | s)")),
    ))
    fig.update_layout(margin=dict(t=40, l=0, r=0, b=0), height=520,
                      title="The token tree below one prompt (top actions at each state)")
    return fig


def credit_figure(rows_by_label: dict[str, list[dict]]) -> go.Figure:
    """Reward the MDP pays per step versus the credit assumption A2 gives each token, for a few responses.

    ``rows_by_label`` maps a label (say "correct, short") to rows from :func:`companion.mdp.trajectory_records`.
    """
    fig = go.Figure()
    for label, rows in rows_by_label.items():
        fig.add_trace(go.Scatter(
            x=[r["t"] for r in rows], y=[r["credit"] for r in rows], mode="lines+markers", name=label,
            hovertext=[f"action {_show_token(r['action'])!r}" for r in rows], line=dict(shape="hv"),
        ))
    fig.add_hline(y=0, line_color="grey", line_width=1)
    fig.update_layout(xaxis_title="time step t (token index in the response)",
                      yaxis_title="credit per token, R / |o|", height=380, margin=dict(t=40),
                      title="Assumption A2: the terminal reward spread evenly over the tokens")
    return fig
