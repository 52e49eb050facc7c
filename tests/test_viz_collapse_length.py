"""Chapters 2 and 3's figures and widgets: built from records, interactive controls wired to the right traces."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from dataclasses import replace
from pathlib import Path

import plotly.graph_objects as go
import pytest

from companion import lengthsim as ls
from companion.viz.collapse import gradient_agreement_figure, group_weight_records, group_weights_figure
from companion.viz.length import effective_reward_figure, length_drift_figure, token_credit_figure

SMALL = ls.LengthSimConfig(samples_per_step=32, num_prompts=8, steps=10, calibration_batches=2, record_every=5)


@pytest.fixture(scope="module")
def drift_records():
    configs = [replace(SMALL, algo=a, normalizer=n, num_generations=g, length_accuracy=k)
               for a, n in [("grpo", "sequence"), ("dr_grpo", "constant"), ("fisft_plus", "kept_token"),
                            ("fisft_pm", "sequence"), ("grpo", "token"), ("fisft_plus", "constant")]
               for g in (4, 8) for k in (0.0, 1.0)]
    return ls.simulate(configs, progress=False)


def test_group_weights_are_the_closed_forms_and_filter_one_outcome_groups():
    G = 8
    rows = {(r["algo"], r["c"]): r for r in group_weight_records(G, std="population", eps_std=0.0)}
    for c in range(1, G):
        p = c / G
        assert rows[("grpo", c)]["weight_right"] == pytest.approx(((1 - p) / p) ** 0.5, rel=1e-5)
        assert rows[("grpo", c)]["weight_wrong"] == pytest.approx(-(p / (1 - p)) ** 0.5, rel=1e-5)
        assert not rows[("grpo", c)]["filtered"]
    for algo in ("grpo", "dr_grpo", "fisft_pm"):
        assert rows[(algo, 0)]["filtered"] and rows[(algo, G)]["filtered"]
    assert rows[("fisft_plus", 0)]["filtered"] and not rows[("fisft_plus", G)]["filtered"]  # SFT keeps all-right


def test_group_weights_slider_moves_bars_and_marker():
    G = 6
    fig = group_weights_figure(group_weight_records(G), start=3)
    assert isinstance(fig, go.Figure)
    steps = fig.layout.sliders[0].steps
    assert [s.label for s in steps] == [str(c) for c in range(G + 1)] and fig.layout.sliders[0].active == 3
    first = steps[0].args
    assert list(first[1]) == [0, 1, 4] and list(first[0]["x"][2]) == [0, 0]  # bars of both outcomes, and the c marker
    assert list(first[0]["text"][0]) == ["filtered"] * 4  # no right sample: every rule drops the group
    assert fig.data[0].y == tuple(steps[3].args[0]["y"][0])  # the figure opens on the slider's step


def test_token_credit_figure_has_a_column_per_normaliser():
    records = []
    for n in ("sequence", "token", "constant"):
        records += ls.token_credit([8, 32, 8, 32], [True, True, False, False], normalizer=n, max_completion_length=48)
    fig = token_credit_figure(records)
    assert len(fig.data) == 6
    sequence_per_token = fig.data[0].y
    assert sequence_per_token[0] == pytest.approx(4 * sequence_per_token[1])  # 1/|o|: 8 vs 32 tokens
    assert fig.data[1].y[0] == pytest.approx(fig.data[1].y[1])  # the same total for each response
    constant_per_token = fig.data[4].y
    assert constant_per_token[2] == pytest.approx(constant_per_token[3])  # wrong: the same push per token
    assert constant_per_token[2] < 0


def test_token_credit_rejects_a_mismatched_group():
    with pytest.raises(ValueError, match="one length and one correct flag"):
        ls.token_credit([8, 16], [True])


def test_effective_reward_figure():
    fig = effective_reward_figure(ls.effective_reward_records(ls.LengthSimConfig()))
    assert [t.name for t in fig.data] == ["sound approach (mostly right)", "flawed approach (mostly wrong)"] * 2
    flawed_sequence = fig.data[1].y
    assert flawed_sequence[-1] > flawed_sequence[0]  # a long wrong response is penalised less


def _run(records, G, kappa, algo="grpo", normalizer="sequence"):
    return sorted((r for r in records if r["algo"] == algo and r["normalizer"] == normalizer
                   and r["num_generations"] == G and r["length_accuracy"] == kappa), key=lambda r: r["step"])


def test_drift_figure_buttons_and_sliders_combine(drift_records):
    fig = length_drift_figure(drift_records, default=dict(num_generations=8, base_accuracy=0.5, length_accuracy=0.0))
    buttons = fig.layout.updatemenus[0].buttons
    assert [b.label for b in buttons] == ["each algorithm's own", "sequence", "token", "constant"]
    n = len(fig.data)
    assert n == 4 * 4 * 3  # options × algorithms × (right, wrong, accuracy)
    for button in buttons:  # each button shows one option: four panels of three curves
        assert len(button.args[0]["visible"]) == n and sum(button.args[0]["visible"]) == 12
    # one slider per field that varies (G and κ here; p₀ is fixed), opening on the default scenario
    assert [sl.name for sl in fig.layout.sliders] == ["num_generations", "length_accuracy"]
    g_slider, k_slider = fig.layout.sliders
    assert [st.label for st in g_slider.steps] == ["4", "8"] and g_slider.active == 1
    assert [st.label for st in k_slider.steps] == ["0", "1"] and k_slider.active == 0
    # a step only changes y, for every trace, so it keeps whichever option the buttons chose; without the
    # script it shows its value with the other fields at the default scenario's
    assert all(set(st.args[0]) == {"y"} and len(st.args[0]["y"]) == n for sl in fig.layout.sliders for st in sl.steps)
    assert k_slider.steps[1].args[0]["y"][0] == [r["mean_length_correct"] for r in _run(drift_records, 8, 1.0)]
    # the script that joins the sliders carries every scenario, keyed by the sliders' positions
    script = fig.layout.meta["post_script"]
    data = json.loads(script[script.index("var data = ") + len("var data = "):script.index(";\n  var current")])
    assert data["fields"] == ["num_generations", "length_accuracy"] and data["start"] == [1, 0]
    assert sorted(data["y"]) == ["0,0", "0,1", "1,0", "1,1"]
    assert data["y"]["0,1"][0] == [r["mean_length_correct"] for r in _run(drift_records, 4, 1.0)]
    own_grpo_right = fig.data[0]
    grpo = sorted((r for r in drift_records if r["algo"] == "grpo" and r["normalizer"] == "sequence"
                   and r["num_generations"] == 8 and r["length_accuracy"] == 0.0), key=lambda r: r["step"])
    assert list(own_grpo_right.y) == [r["mean_length_correct"] for r in grpo]


def test_drift_figure_without_a_grid_has_no_slider(drift_records):
    one = [r for r in drift_records if r["num_generations"] == 4 and r["length_accuracy"] == 0.0]
    assert not length_drift_figure(one).layout.sliders


def test_gradient_agreement_figure():
    records = [dict(case="on-policy", grpo=x, nll=x) for x in (-1.0, 0.5)] + [dict(case="after a step", grpo=1.0, nll=2.0)]
    fig = gradient_agreement_figure(records)
    assert [a.text for a in fig.layout.annotations] == ["on-policy", "after a step"]  # one panel per case
    assert list(fig.data[1].x) == [-1.0, 0.5] and fig.layout.xaxis2.range[1] == pytest.approx(2.1)


def test_widgets_draw_and_report_impossible_settings():
    pytest.importorskip("ipywidgets")
    from companion.widgets import collapse_widget, length_widget

    collapse = collapse_widget(6)
    group, right = collapse.children[0].children
    group.value = 3
    assert right.max == 3  # c follows G
    widget = length_widget(SMALL)
    controls = {c.description: c for c in widget.children[0].children}
    controls["base accuracy p₀"].value = 0.9  # above what the sound approach reaches at κ = 0: a message, no traceback
    controls["length-accuracy κ"].value = 0.5
    controls["base accuracy p₀"].value = 0.4  # back to a valid setting: the widget still draws


def _book_page(fig, tmp_path) -> Path:
    """An HTML page holding ``fig`` as the book's renderer writes it (its scripts included)."""
    import plotly
    import plotly.io as pio

    from companion.viz import setup_plotly

    setup_plotly()
    body = pio.renderers["book"].to_mimebundle(fig.to_dict())["text/html"]
    plotly_js = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"
    page_file = tmp_path / "figure.html"
    page_file.write_text(f"<html><head><script src='{plotly_js.as_uri()}'></script></head>"
                         f"<body style='margin: 8px'>{body}</body></html>")
    return page_file


@contextlib.contextmanager
def _browser():
    chromium = os.environ.get("COMPANION_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("no Chromium found: `apt-get install chromium` (make test does it as root)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu"])
        try:
            yield browser
        finally:
            browser.close()


def test_drift_sliders_combine_in_a_browser(drift_records, tmp_path):
    """Move κ, then G, with the mouse: the figure shows the scenario both sliders name (the joining script), not
    the one the last slider's own step falls back to."""
    fig = length_drift_figure(drift_records, default=dict(num_generations=8, base_accuracy=SMALL.base_accuracy,
                                                          length_accuracy=0.0))
    page_file = _book_page(fig, tmp_path)

    def last_right_length(G, kappa):
        return _run(drift_records, G, kappa)[-1]["mean_length_correct"]

    with _browser() as browser:
        page = browser.new_page(viewport={"width": 1000, "height": 1100})
        errors = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(page_file.as_uri())
        page.wait_for_function("document.querySelectorAll('.slider-group').length == 2", timeout=30000)

        def shown():
            return page.evaluate("document.querySelector('.plotly-graph-div').data[0].y.slice(-1)[0]")

        def move(slider, index):
            x, y = page.evaluate(f"""(() => {{
                const group = document.querySelectorAll('.slider-group')[{slider}];
                const label = group.querySelectorAll('.slider-labels .slider-label')[{index}].getBoundingClientRect();
                const rail = group.querySelector('.slider-rail-touch-rect').getBoundingClientRect();
                return [label.x + label.width / 2, rail.y + rail.height / 2]; }})()""")
            page.mouse.click(x, y)
            page.wait_for_timeout(500)

        assert shown() == pytest.approx(last_right_length(8, 0.0))
        move(1, 1)  # κ = 1
        assert shown() == pytest.approx(last_right_length(8, 1.0))
        move(0, 0)  # G = 4, keeping κ = 1 (the step alone would show G = 4, κ = 0)
        assert shown() == pytest.approx(last_right_length(4, 1.0))
        assert last_right_length(4, 1.0) != pytest.approx(last_right_length(4, 0.0))
    assert not errors, errors


@pytest.mark.parametrize("width, stacked", [(400, True), (1000, False)])
def test_panels_side_by_side_stack_on_a_phone(tmp_path, width, stacked):
    """At phone width the book's renderer restacks a 2 x 3 grid into one column, each panel full width and below the
    last, column titles kept on their panels; at desktop width nothing moves."""
    credit = [row for n in ("sequence", "token", "constant")
              for row in ls.token_credit([8, 16, 32, 24], [True, True, False, False], normalizer=n,
                                         max_completion_length=48)]
    page_file = _book_page(token_credit_figure(credit), tmp_path)
    with _browser() as browser:
        page = browser.new_page(viewport={"width": width, "height": 900})
        errors = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(page_file.as_uri())
        page.wait_for_function("document.querySelector('.plotly-graph-div .main-svg')", timeout=30000)
        page.wait_for_timeout(500)
        layout = page.evaluate("""(() => { const f = document.querySelector('.plotly-graph-div')._fullLayout;
            const axes = k => Object.keys(f).filter(n => new RegExp('^' + k + 'axis[0-9]*$').test(n)).sort();
            return {x: axes('x').map(k => f[k].domain), y: axes('y').map(k => f[k].domain),
                    titles: f.annotations.map(a => [a.text, a.x, a.y])}; })()""")
    assert not errors, errors
    if not stacked:
        assert len({tuple(d) for d in layout["x"]}) == 3  # three columns, as built
        return
    assert all(d == [0, 1] for d in layout["x"])
    ys = sorted(layout["y"], key=lambda d: -d[1])
    assert all(upper[0] > lower[1] for upper, lower in zip(ys, ys[1:])), "stacked panels overlap"
    titles = {text: (x, y) for text, x, y in layout["titles"]}
    assert titles["normaliser: sequence"][1] > titles["normaliser: token"][1] > titles["normaliser: constant"][1]
    assert all(x == 0.5 for x, _ in titles.values())
