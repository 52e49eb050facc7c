"""Chapter 5's figures: they draw what metrics.json and the package's samples say, nothing else."""

from __future__ import annotations

import json
import math

import pytest

from companion.evaluate import pass_at
from companion.tiny import SHIPPED_DIR
from companion.viz import base_model as viz


@pytest.fixture(scope="module")
def metrics():
    return json.loads((SHIPPED_DIR / "metrics.json").read_text())


def test_length_boxes_are_the_recorded_percentiles(metrics):
    for source, key in (("eval", "length_{}"), ("corpus", "completion_chars_{}")):
        fig = viz.length_box_figure(metrics, source=source)
        boxes = {(trace.name, trace.x[0].split("<br>")[0]): trace for trace in fig.data}
        assert len(boxes) == 2 * len(metrics[source])
        for task, record in metrics[source].items():
            for side, name in (("correct", "right"), ("wrong", "wrong")):
                stats, box = record[key.format(side)], boxes[(name, viz.TASK_TITLES[task])]
                assert (box.q1[0], box.median[0], box.q3[0]) == (stats["p25"], stats["median"], stats["p75"])
                assert (box.lowerfence[0], box.upperfence[0], box.mean[0]) == (stats["p5"], stats["p95"], stats["mean"])


def test_accuracy_bars_and_pass_at_k_bands_are_the_recorded_estimates(metrics):
    bars = {trace.name: trace.y for trace in viz.accuracy_figure(metrics).data}
    tasks = list(metrics["eval"])
    assert list(bars["sampled pass@1 (T = 1)"]) == [pass_at(metrics["eval"][t], 1) for t in tasks]
    assert list(bars["greedy pass@1"]) == [metrics["eval"][t]["room_for_rl"]["greedy_pass@1"] for t in tasks]
    assert list(bars["pass@64"]) == [pass_at(metrics["eval"][t], 64) for t in tasks]
    fig = viz.pass_at_k_figure(metrics)
    for task, (band, curve) in zip(tasks, zip(fig.data[::2], fig.data[1::2])):
        points = metrics["eval"][task]["pass_at_k"]
        assert list(curve.y) == [p["estimate"] for p in points]
        assert list(band.y) == [p["high"] for p in points] + [p["low"] for p in points][::-1]
    assert len(viz.pretraining_loss_figure(metrics).data[0].y) == len(metrics["pretrain"]["loss_every_50"])


def test_entropy_records_average_over_the_completions_that_reach_each_position(tiny_policy, one_thread):
    from companion.tasks import get_task

    model, tokenizer = tiny_policy
    task = get_task("countdown")
    records = viz.entropy_records(model.eval(), tokenizer, task, task.generate(3, seed=0), num_generations=4,
                                  max_completion_length=16, min_rows=5)
    rows = [r["rows"] for r in records]
    assert records and all(r["rows"] >= 5 for r in records) and rows == sorted(rows, reverse=True)
    assert [r["position"] for r in records] == list(range(len(records)))  # reached positions are a prefix
    assert all(0.0 <= r["entropy"] <= math.log(len(tokenizer)) + 1e-6 for r in records)
    assert viz.entropy_figure(records).data[0].name == "Countdown"


def test_the_audit_figure_draws_each_sources_rates():
    audits = {"a": {"completions": 3, "copy": 0.5, "arithmetic": 0.75, "verdict": 1.0},
              "b": {"completions": 2, "copy": 1.0, "arithmetic": 0.5, "verdict": 0.0}}
    fig = viz.audit_figure(audits)
    assert [list(t.y) for t in fig.data] == [[0.5, 0.75, 1.0], [1.0, 0.5, 0.0]]
    assert fig.data[0].name == "a (3 completions)"
