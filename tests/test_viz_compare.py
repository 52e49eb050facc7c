"""Chapter 6's figures and verdicts, on runs whose numbers are made up here so that every answer is known."""

from __future__ import annotations

import pytest

from companion.viz import compare as viz

STEPS = 40


def _run(algo, task, seed, *, final, wrong_slope=0.0, right_slope=0.0, truncated=0.0, lr=3e-4, normalizer=None):
    from companion.objectives import resolve_normalizer

    records = [{"step": 0, "eval_accuracy_sampled": 0.2, "eval_accuracy_greedy": 0.3}]
    for step in range(1, STEPS + 1):
        record = {"step": step, "length": 50.0 + wrong_slope * step, "length_correct": 40.0 + right_slope * step,
                  "length_wrong": 60.0 + wrong_slope * step, "frac_truncated": truncated * step / STEPS,
                  "frac_zero_spread": 0.3, "frac_weighted": 0.7, "accuracy": 0.5, "entropy": 1.0}
        if step % 20 == 0:
            record["eval_accuracy_sampled"] = 0.2 + (final - 0.2) * step / STEPS
        records.append(record)
    summary = {"pass_at_k": [{"k": 1, "estimate": final, "low": final - 0.02, "high": final + 0.02}],
               "length_correct": {"mean": 40.0}, "length_wrong": {"mean": 60.0}, "truncated_fraction": truncated}
    return {"name": f"{task}-{algo}-seed{seed}", "algo": algo, "task": task, "seed": seed, "learning_rate": lr,
            "normalizer": normalizer or resolve_normalizer(algo), "steps": STEPS, "records": records,
            "summary": summary}


@pytest.fixture
def runs():
    """GRPO and F-ISFT± equal within noise, F-ISFT+ far behind; wrong answers grow under GRPO and F-ISFT± only."""
    out = []
    for task in ("countdown", "tinygsm"):
        for seed, noise in enumerate((-0.01, 0.0, 0.01)):
            out.append(_run("grpo", task, seed, final=0.40 + noise, wrong_slope=1.0))
            out.append(_run("fisft_pm", task, seed, final=0.41 - noise, wrong_slope=2.0))
            out.append(_run("dr_grpo", task, seed, final=0.38 + noise))
            out.append(_run("fisft_plus", task, seed, final=0.25 + noise, right_slope=0.5))
    return out


def test_bands_are_the_seed_range_around_the_mean(runs):
    fig = viz.accuracy_figure(runs)
    lines = [t for t in fig.data if t.mode == "lines+markers" and t.name == "F-ISFT+" and t.xaxis == "x"]
    band = [t for t in fig.data if t.fill == "toself"][2]  # countdown, third algorithm in the book's order
    assert band.mode == "lines"  # no stray markers on the band
    assert list(lines[0].x) == [0, 20, 40]
    assert lines[0].y[-1] == pytest.approx(0.25)
    assert max(band.y) == pytest.approx(0.26) and min(band.y) == pytest.approx(0.2)
    assert sum(t.showlegend is not False for t in fig.data if t.mode == "lines+markers") == 4  # one legend entry per algo


def test_smoothing_skips_steps_without_a_value():
    records = [{"step": 1, "x": 1.0}, {"step": 2, "x": None}, {"step": 3, "x": 3.0}, {"step": 4, "x": None}]
    assert viz.smoothed(records, "x", window=2) == ([1, 2, 3, 4], [1.0, 1.0, 3.0, 3.0])
    assert viz.smoothed([{"step": 1, "x": None}], "x") == ([1], [None])


def test_final_table_reports_mean_sd_and_each_seed(runs):
    base = {"eval": {"countdown": {"pass_at_k": [{"estimate": 0.18}]}, "tinygsm": {"pass_at_k": [{"estimate": 0.44}]}}}
    rows = {(r["task"], r["algo"]): r for r in viz.final_table(runs, base)}
    grpo = rows[("countdown", "grpo")]
    assert grpo["pass@1"] == pytest.approx(0.40) and grpo["sd"] == pytest.approx(0.01)
    assert grpo["per_seed"] == pytest.approx([0.39, 0.40, 0.41]) and grpo["base_pass@1"] == 0.18
    fig = viz.final_figure(runs, base)
    assert len(fig.data) == 2 * (1 + 4)  # per task: the bars, and each algorithm's seed dots


def test_the_claims_follow_the_numbers(runs):
    claims = {(c["task"], c["claim"]): c for c in viz.accuracy_claims(runs)}
    assert claims[("countdown", 1)]["holds"]  # 0.40 vs 0.41 with sd 0.01 each: within noise
    assert claims[("countdown", 2)]["holds"] and claims[("countdown", 2)]["b"] == "fisft_pm"
    lengths = {(c["task"], c["algo"]): c for c in viz.length_claims(runs)}
    assert lengths[("tinygsm", "grpo")]["grows"] and lengths[("tinygsm", "fisft_pm")]["grows"]
    assert not lengths[("tinygsm", "dr_grpo")]["grows"] and not lengths[("tinygsm", "fisft_plus")]["grows"]
    assert lengths[("tinygsm", "fisft_pm")]["wrong_change"] == pytest.approx(2.0 * (STEPS - 10))


def test_a_claim_fails_when_the_numbers_say_so(runs):
    for r in runs:
        if r["algo"] == "fisft_pm":
            r["summary"]["pass_at_k"][0]["estimate"] += 0.2  # F-ISFT± now clearly ahead of GRPO
    claims = {(c["task"], c["claim"]): c for c in viz.accuracy_claims(runs)}
    assert not claims[("countdown", 1)]["holds"]
    assert viz.distinguishable([0.1, 0.11, 0.12], [0.3, 0.31, 0.29])
    assert not viz.distinguishable([0.1], [0.3])  # one seed says nothing about the spread


def test_the_stability_map_marks_where_lengths_explode():
    stable = _run("grpo", "tinygsm", 0, final=0.5, lr=5e-4)
    exploding = _run("fisft_pm", "tinygsm", 0, final=0.1, lr=1e-3, truncated=1.0, wrong_slope=3.0)
    constant = _run("fisft_pm", "tinygsm", 0, final=0.4, lr=1e-3, normalizer="constant")
    assert viz.variant(constant) == "F-ISFT±, constant" and viz.variant(exploding) == "F-ISFT±"
    assert viz.blowup_step(stable["records"]) is None
    # truncated share step/40, smoothed over 5 steps: its mean reaches 0.5 at step 22 ((18+...+22)/5/40 = 0.5)
    assert viz.blowup_step(exploding["records"]) == 22
    rows = viz.stability_rows([constant, exploding, stable])
    fig = viz.stability_figure(rows)
    heat = fig.data[0]
    assert list(heat.x) == ["0.0005", "0.001"]  # learning rates in order, whatever order the runs came in
    assert list(heat.y) == ["GRPO", "F-ISFT±", "F-ISFT±, constant"]  # the book's order
    assert heat.text[1][1] == "22" and heat.text[0][0] == "–" and heat.text[0][1] == ""
    assert heat.z[1][1] == pytest.approx(sum(range(31, 41)) / 10 / 40)  # last 10 steps' truncated share


def test_the_stability_map_by_task_shows_every_seed(runs):
    runs[0]["records"] = [dict(r, frac_truncated=1.0) if r["step"] > 5 else r for r in runs[0]["records"]]
    fig = viz.stability_figure(viz.stability_rows(runs, column="task"), column="task")
    heat = fig.data[0]
    assert list(heat.x) == ["Countdown", "word problems"] and heat.y[0] == "GRPO"
    assert heat.text[0][0] == "8 / – / –"  # seed 0 blew up at step 8 (5-step mean of 0, 1, 1, 1 ... reaches 0.5)


def test_matched_wrong_lengths_use_only_problems_every_run_gets_wrong(runs):
    for r in runs:
        long_wrong = 100 if r["algo"] == "grpo" else 50
        r["rows"] = [{"index": 0, "rewards": [1.0, 0.0], "lengths": [10, long_wrong]},
                     {"index": 1, "rewards": [1.0, 1.0], "lengths": [10, 10]},  # no wrong answer: left out
                     {"index": 2, "rewards": [0.0, 0.1], "lengths": [long_wrong, long_wrong + 2]}]
    runs[0]["rows"].append({"index": 3, "rewards": [0.0], "lengths": [999]})  # one run only: left out
    matched = viz.matched_wrong_lengths(runs, "countdown")
    assert matched["problems"] == 2
    grpo = matched["algos"]["grpo"]
    assert grpo["mean"] == pytest.approx((100 + 101) / 2) and grpo["low"] == grpo["high"]
    assert matched["algos"]["dr_grpo"]["mean"] == pytest.approx((50 + 51) / 2)


def test_a_claim_with_one_seed_is_not_judged(runs):
    one = [r for r in runs if not (r["algo"] == "fisft_pm" and r["seed"] > 0)]
    claims = {(c["task"], c["claim"]): c for c in viz.accuracy_claims(one)}
    assert claims[("countdown", 1)]["holds"] is None  # F-ISFT± has one seed: no spread to compare with
    assert claims[("countdown", 2)]["b"] == "fisft_pm" and claims[("countdown", 2)]["holds"] is None
