"""Figures for chapter 3: per-token credit under each length normaliser, and the simulated length drift.

Every function takes tidy records (from :mod:`companion.lengthsim`) and returns a ``go.Figure``. The
interactive ones switch between precomputed traces with plotly buttons and sliders, so they work in the
static book; :mod:`companion.widgets` recomputes them live where a kernel runs.
"""

from __future__ import annotations

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from companion.objectives import ALGORITHMS

RIGHT, WRONG = "#2a9d8f", "#e76f51"  # one colour per outcome, in every figure of the chapter
NORMALIZER_OPTIONS = ("own", "sequence", "token", "constant")
"""Choices of the drift figure's buttons; "own" is each algorithm's default normaliser."""
ALGO_TITLES = {"grpo": "GRPO", "dr_grpo": "Dr. GRPO", "fisft_plus": "F-ISFT+", "fisft_pm": "F-ISFT±"}


def _sample_label(row: dict) -> str:
    return f"{'right' if row['correct'] else 'wrong'}, {row['length']} tok"


def token_credit_figure(records: list[dict]) -> go.Figure:
    """Bars of the credit per token (top) and per response (bottom) for one group, one column per normaliser.

    ``records`` come from :func:`companion.lengthsim.token_credit`, one call per normaliser (same group).
    """
    normalizers = list(dict.fromkeys(r["normalizer"] for r in records))
    fig = make_subplots(rows=2, cols=len(normalizers), shared_yaxes="rows", vertical_spacing=0.12,
                        horizontal_spacing=0.03, subplot_titles=[f"normaliser: {n}" for n in normalizers])
    for col, normalizer in enumerate(normalizers, start=1):
        rows = [r for r in records if r["normalizer"] == normalizer]
        labels = [_sample_label(r) for r in rows]
        colors = [RIGHT if r["correct"] else WRONG for r in rows]
        for row, key, unit in ((1, "credit", "per token"), (2, "total", "per response")):
            fig.add_trace(go.Bar(
                x=labels, y=[r[key] for r in rows], marker_color=colors, showlegend=False,
                hovertemplate=f"%{{x}}<br>credit {unit}: %{{y:.4f}}<extra>{normalizer}</extra>",
            ), row=row, col=col)
    fig.update_yaxes(title_text="credit per token", row=1, col=1, zeroline=True, zerolinecolor="grey")
    fig.update_yaxes(title_text="credit per response<br>(per token × |o|)", row=2, col=1)
    fig.update_yaxes(zeroline=True, zerolinecolor="grey")
    fig.update_xaxes(tickangle=-45)
    fig.update_layout(height=560, margin=dict(t=50, b=40, l=70, r=10), bargap=0.25,
                      title_text=f"Who gets the update: one group of {len(records) // len(normalizers)} responses "
                                 f"({ALGO_TITLES.get(records[0]['algo'], records[0]['algo'])} weights)")
    return fig


def effective_reward_figure(records: list[dict]) -> go.Figure:
    """The effective reward r̃(k, l) = E[w | approach k, length l] / n(l) against the length l.

    ``records``: dicts with ``normalizer``, ``approach``, ``length`` and ``reward`` (one normaliser per
    panel). The expected update is the policy gradient of this reward, so its slope in l is the push on length.
    """
    normalizers = list(dict.fromkeys(r["normalizer"] for r in records))
    fig = make_subplots(rows=1, cols=len(normalizers), horizontal_spacing=0.08,
                        subplot_titles=[f"normaliser: {n}" for n in normalizers])
    for col, normalizer in enumerate(normalizers, start=1):
        for approach, color, note in (("sound", RIGHT, "mostly right"), ("flawed", WRONG, "mostly wrong")):
            rows = [r for r in records if r["normalizer"] == normalizer and r["approach"] == approach]
            fig.add_trace(go.Scatter(
                x=[r["length"] for r in rows], y=[r["reward"] for r in rows], mode="lines", line_color=color,
                name=f"{approach} approach ({note})", legendgroup=approach, showlegend=col == 1,
                hovertemplate="|o| = %{x}<br>r̃ = %{y:.5f}<extra>" + approach + "</extra>",
            ), row=1, col=col)
        fig.add_hline(y=0, line_color="grey", line_width=1, row=1, col=col)
        fig.update_xaxes(title_text="response length |o| (tokens)", row=1, col=col)
    fig.update_yaxes(title_text="effective reward r̃ = E[w | o] / n(o)", row=1, col=1)
    fig.update_layout(height=380, margin=dict(t=50, b=40, l=70, r=10), legend=dict(orientation="h", y=-0.25),
                      title_text="What the expected update rewards, as a function of length")
    return fig


_SYMBOLS = {"num_generations": "G", "base_accuracy": "p₀", "length_accuracy": "κ"}



SCENARIO_SCRIPT = """
(function () {
  var gd = document.getElementById('{plot_id}');
  var data = %s;
  var current = data.start.slice();
  gd.on('plotly_sliderchange', function (e) {
    var field = data.fields.indexOf(e.slider.name);
    if (field < 0) { return; }
    current[field] = parseInt(e.step.value, 10);
    var y = data.y[current.join(',')];
    // after the step's own restyle (its fallback: this field moved, the others at the start)
    if (y) { setTimeout(function () { Plotly.restyle(gd, {y: y}); }, 0); }
  });
})();
"""
"""Joins the figure's sliders, one per scenario field, into one choice: on every move it shows the scenario that all
the sliders together name. The book's renderer runs it after the plot (``layout.meta["post_script"]``)."""


def _scenario_sliders(fig: go.Figure, keys: list[tuple], names: tuple[str, ...], start: int, ys) -> list[dict]:
    """One slider per scenario field that takes more than one value, stacked below the panels.

    ``ys(key)`` is the y data of every trace for scenario ``key``. Each slider step shows its value with the other
    fields at the starting scenario's; :data:`SCENARIO_SCRIPT`, which the book's renderer runs, then combines the
    sliders (without it, as in Colab's renderer, each slider moves one field from the starting scenario).
    """
    import json

    if len(keys) <= 1:
        return []
    values = [sorted({key[i] for key in keys}) for i in range(len(names))]
    fields = [i for i, v in enumerate(values) if len(v) > 1]
    first = keys[start]
    sliders = []
    for row, i in enumerate(fields):
        steps = []
        for index, value in enumerate(values[i]):
            key = tuple(value if j == i else first[j] for j in range(len(names)))
            steps.append(dict(label=f"{value:g}", value=str(index), method="restyle",
                              args=[{"y": ys(key)}] if key in keys else [{}]))
        sliders.append(dict(name=names[i], active=values[i].index(first[i]), steps=steps, x=0.0, len=1.0,
                            y=-0.17 - 0.16 * row, yanchor="top", pad=dict(t=30, b=0),
                            currentvalue=dict(prefix=f"{_SYMBOLS.get(names[i], names[i])} = ", font=dict(size=14))))
    data = {"fields": [names[i] for i in fields], "start": [values[i].index(first[i]) for i in fields],
            "y": {",".join(str(values[i].index(key[i])) for i in fields): ys(key) for key in keys}}
    fig.update_layout(meta={"post_script": SCENARIO_SCRIPT % json.dumps(data, separators=(",", ":"))})
    return sliders


_DRIFT_SERIES = (("mean_length_correct", "right answers", dict(color=RIGHT, width=2.5)),
                 ("mean_length_wrong", "wrong answers", dict(color=WRONG, width=2.5, dash="dash")),
                 ("accuracy", "accuracy (right axis)", dict(color="rgba(90,90,90,0.5)", width=1.5, dash="dot")))
"""The lines of each panel of :func:`length_drift_figure`: (record field, legend name, line style)."""


def _normaliser_buttons(fig: go.Figure, options: list[str], traces: list[tuple]) -> list[dict]:
    """Buttons that show the traces of one normaliser option (``traces``: (option, ...) per trace), placed below the
    panels, where they have the full width (the book's pages are narrow); none for a single option."""
    if len(options) < 2:
        return []
    buttons = [dict(label="each algorithm's own" if option == "own" else option, method="restyle",
                    args=[{"visible": [t[0] == option for t in traces]}]) for option in options]
    fig.add_annotation(text="normaliser:", x=0.0, xref="paper", xanchor="left", y=-0.133, yref="paper",
                       yanchor="top", showarrow=False, font=dict(size=13))
    return [dict(type="buttons", direction="right", buttons=buttons, x=0.13, xanchor="left", y=-0.115,
                 yanchor="top", showactive=True, pad=dict(r=4, t=2))]


def length_drift_figure(records: list[dict], *, scenario: tuple[str, ...] = (
        "num_generations", "base_accuracy", "length_accuracy"), default: dict | None = None,
        steps: int | None = None) -> go.Figure:
    """Mean length of right and of wrong responses over training, one panel per algorithm.

    ``records`` come from :func:`companion.lengthsim.simulate`. Buttons choose the normaliser (each
    algorithm's "own", or the same one for all); one slider per ``scenario`` field that varies chooses its value
    (:func:`_scenario_sliders`). ``default`` picks the scenario
    shown first (field -> value). Accuracy is drawn faintly on the right axis of each panel.
    """
    algos = [a for a in ALGORITHMS if any(r["algo"] == a for r in records)]
    keys = sorted({tuple(r[n] for n in scenario) for r in records})
    options = [o for o in NORMALIZER_OPTIONS
               if o == "own" or any(r["normalizer"] == o for r in records)]
    by_run: dict[tuple, list[dict]] = {}
    for r in records:
        by_run.setdefault((r["algo"], r["normalizer"], tuple(r[n] for n in scenario)), []).append(r)

    def run_records(algo: str, option: str, key: tuple) -> list[dict]:
        normalizer = ALGORITHMS[algo].normalizer if option == "own" else option
        return sorted(by_run.get((algo, normalizer, key), []), key=lambda r: r["step"])

    start = 0
    if default:
        wanted = tuple(default.get(n) for n in scenario)
        start = keys.index(wanted) if wanted in keys else 0
    fig = make_subplots(rows=2, cols=2, subplot_titles=[ALGO_TITLES.get(a, a) for a in algos],
                        specs=[[{"secondary_y": True}] * 2] * 2, vertical_spacing=0.14, horizontal_spacing=0.1)
    traces = []  # (option, algo, column) per trace, to build the buttons and the slider
    for option in options:
        for i, algo in enumerate(algos):
            row, col = divmod(i, 2)
            for column, name, line in _DRIFT_SERIES:
                rows = run_records(algo, option, keys[start])
                fig.add_trace(go.Scatter(
                    x=[r["step"] for r in rows], y=[r[column] for r in rows], mode="lines", line=line, name=name,
                    legendgroup=column, showlegend=i == 0,  # hidden traces leave the legend
                    visible=option == options[0],
                    hovertemplate=f"step %{{x}}<br>{name}: %{{y:.3g}}<extra>{ALGO_TITLES.get(algo, algo)}, "
                                  f"{rows[0]['normalizer'] if rows else option}</extra>",
                ), row=row + 1, col=col + 1, secondary_y=column == "accuracy")
                traces.append((option, algo, column))
    menus = _normaliser_buttons(fig, options, traces)
    sliders = _scenario_sliders(fig, keys, scenario, start, lambda key: [
        [r[column] for r in run_records(algo, option, key)] for option, algo, column in traces])
    # one length scale for every panel and scenario, so that panels compare and the slider does not rescale
    top = max(r[c] for r in records for c in ("mean_length_correct", "mean_length_wrong"))
    fig.update_yaxes(range=[0, 1.08 * top], secondary_y=False)
    fig.update_yaxes(title_text="mean length (tokens)", secondary_y=False, col=1)
    fig.update_yaxes(range=[0, 1], dtick=0.25, secondary_y=True, showgrid=False, tickformat=".0%")
    fig.update_xaxes(title_text="training step", row=2)
    if steps:
        fig.update_xaxes(range=[0, steps])
    fig.update_layout(height=820 + 80 * max(0, len(sliders) - 1),
                      margin=dict(t=110, b=(140 + 80 * len(sliders) if sliders else 110) if menus else 50, l=60, r=50),
                      updatemenus=menus, sliders=sliders,
                      legend=dict(orientation="h", y=1.07, yanchor="bottom", x=0, xanchor="left"),
                      title=dict(text="Simulated length of right and wrong answers during training", y=0.985))
    return fig
