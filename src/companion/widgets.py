"""ipywidgets front-ends over :mod:`companion.viz`, for live kernels (Jupyter, Colab).

The static book shows precomputed figures whose plotly sliders and buttons switch between stored traces.
Where a kernel runs, these widgets recompute the figure for any setting, including those off the grid.
Each function returns the widget; make it the last expression of a cell to show it.
"""

from __future__ import annotations

import functools
from dataclasses import replace

from companion.lengthsim import LengthSimConfig, simulate
from companion.objectives import ALGORITHMS
from companion.viz.collapse import group_weight_records, group_weights_figure
from companion.viz.length import length_drift_figure


STATIC_NOTE = ("*A live widget stands here when the chapter runs in a kernel: open it on Colab (the rocket button at "
               "the top of the page) or in Jupyter, and it redraws for any setting. The static page has the precomputed "
               "figure above instead.*")


def live(make):
    """A widget-making function, which while the static book is built (:func:`companion.viz.static_build`) returns
    :data:`STATIC_NOTE` instead: there is no kernel to redraw anything, and a page with no widget loads no widget
    code (which would come from a CDN)."""
    @functools.wraps(make)
    def made(*args, **kwargs):
        from IPython.display import Markdown

        from companion.viz import static_build

        return Markdown(STATIC_NOTE) if static_build() else make(*args, **kwargs)

    return made


def _live(draw, controls: dict):
    """Controls in a row above an output that ``draw(**values)`` fills, redrawn whenever a value changes.

    A ValueError (a setting the model cannot take) is shown as its message, not as a traceback.
    """
    import ipywidgets as widgets
    from IPython.display import display

    def show(**values):
        try:
            display(draw(**values))
        except ValueError as error:
            print(f"Cannot draw this setting: {error}")

    output = widgets.interactive_output(show, controls)
    return widgets.VBox([widgets.HBox(list(controls.values()), layout=widgets.Layout(flex_flow="row wrap")), output])


@live
def collapse_widget(num_generations: int = 8, **weight_knobs):
    """Sliders for G and c (right samples in the group) over chapter 2's weight figure.

    ``weight_knobs`` go to :func:`companion.objectives.sample_weights` (``std="population", eps_std=0.0`` gives
    the closed forms of the chapter).
    """
    import ipywidgets as widgets

    group = widgets.IntSlider(value=num_generations, min=2, max=32, description="G", continuous_update=False)
    right = widgets.IntSlider(value=num_generations // 4, min=0, max=num_generations, description="right c",
                              continuous_update=False)

    def follow(change):  # c cannot exceed G
        right.max = change["new"]

    group.observe(follow, names="value")

    def draw(G: int, c: int):
        return group_weights_figure(group_weight_records(G, **weight_knobs), start=min(c, G))

    return _live(draw, {"G": group, "c": right})


@live
def length_widget(base: LengthSimConfig = LengthSimConfig()):
    """Sliders for chapter 3's simulation: G, base accuracy, the length-accuracy relation κ, the two
    approaches' accuracies, and the normaliser. Each change retrains the four algorithms (about a second)."""
    import ipywidgets as widgets

    sizes = [g for g in (2, 4, 8, 16, 32, 64) if base.samples_per_step % g == 0]
    style = {"description_width": "initial"}
    controls = dict(
        num_generations=widgets.SelectionSlider(options=sizes, value=base.num_generations, description="G",
                                                continuous_update=False),
        base_accuracy=widgets.FloatSlider(value=base.base_accuracy, min=0.05, max=0.9, step=0.05,
                                          description="base accuracy p₀", continuous_update=False, style=style),
        length_accuracy=widgets.FloatSlider(value=base.length_accuracy, min=-2.0, max=2.0, step=0.25,
                                            description="length-accuracy κ", continuous_update=False, style=style),
        sound=widgets.FloatSlider(value=base.approach_accuracy[0], min=0.5, max=0.999, step=0.01, readout_format=".3f",
                                  description="sound approach accuracy", continuous_update=False, style=style),
        flawed=widgets.FloatSlider(value=base.approach_accuracy[1], min=0.001, max=0.5, step=0.01,
                                   readout_format=".3f", description="flawed approach accuracy",
                                   continuous_update=False, style=style),
        normalizer=widgets.Dropdown(options=[("each algorithm's own", ""), ("sequence", "sequence"),
                                             ("token", "token"), ("constant", "constant")],
                                    value=base.normalizer, description="normaliser"),
    )

    def draw(num_generations, base_accuracy, length_accuracy, sound, flawed, normalizer):
        scenario = replace(base, num_generations=num_generations, base_accuracy=base_accuracy,
                           length_accuracy=length_accuracy, approach_accuracy=(sound, flawed), normalizer=normalizer)
        records = simulate([replace(scenario, algo=algo) for algo in ALGORITHMS], progress=False)
        return length_drift_figure(records, steps=base.steps)

    return _live(draw, controls)


@live
def verifier_widget(completion: str = "<think>3+5=8, 8*2=16</think>\n<answer>(3+5)*2</answer>"):
    """A text box scored by chapter 4's verifiers as the reader types: the reward, the verdict and the answer
    the verifier read. The task's problem (numbers and target, or the gold number) is set above the box."""
    import html

    import ipywidgets as widgets

    from companion.viz.tasks import VERDICTS, score_completion

    style = {"description_width": "initial"}
    controls = dict(
        task=widgets.Dropdown(options=[("Countdown", "countdown"), ("word problem (tinygsm / gsm8k)", "gsm8k")],
                              value="countdown", description="task"),
        numbers=widgets.Text(value="3, 5, 2", description="numbers", continuous_update=False, style=style),
        target=widgets.IntText(value=16, description="target", style=style),
        gold=widgets.Text(value="72", description="gold (word problem)", continuous_update=False, style=style),
        strict=widgets.Checkbox(value=False, description="strict (word problem)"),
        completion=widgets.Textarea(value=completion, description="completion", continuous_update=True,
                                    layout=widgets.Layout(width="100%", height="6em")),
    )

    def draw(task, numbers, target, gold, strict, completion):
        if task == "countdown":
            try:
                values = [int(v) for v in numbers.replace(",", " ").split()]
            except ValueError:
                raise ValueError(f"numbers must be integers separated by commas, got {numbers!r}") from None
            scored = score_completion("countdown", completion, numbers=values, target=target)
        else:
            scored = score_completion("gsm8k", completion, gold=gold, strict=strict)
        answer = "none" if scored["answer"] is None else html.escape(repr(scored["answer"]))
        return widgets.HTML(
            f"<b style='color:{VERDICTS[scored['verdict']]}'>reward {scored['reward']:g}: {scored['verdict']}</b>"
            f" &nbsp; answer read: <code>{answer}</code>")

    return _live(draw, controls)
