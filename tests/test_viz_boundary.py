"""Chapter 7's figures and tables on synthetic evaluations: a sharp trained model and a diffuse base."""

import numpy as np
import pytest

from companion.viz import boundary as viz


def _record(algo, solve_rates, *, n=64, temperature=0.6, task="countdown", seed=0):
    rng = np.random.default_rng(seed)
    rows = [{"index": i, "num_correct": int(rng.binomial(n, p))} for i, p in enumerate(solve_rates)]
    return {"algo": algo, "task": task, "temperature": temperature, "num_generations": n, "rows": rows}


@pytest.fixture
def records():
    # The base solves 80 of 100 problems now and then; "grpo" solves 40 of them nearly always, one more that the
    # base never does, and nothing else; "distill" is the base, a little better everywhere.
    base = [0.1] * 80 + [0.0] * 20
    grpo = [0.95] * 40 + [0.0] * 40 + [0.9] + [0.0] * 19
    distill = [0.15] * 80 + [0.0] * 20
    found = [_record("base", base), _record("grpo", grpo, seed=1), _record("distill", distill, seed=2),
             _record("base", base, temperature=1.0), _record("grpo", grpo, task="tinygsm")]
    return viz.select(found, "countdown", 0.6)


def test_records_are_selected_by_task_and_temperature_in_the_books_order(records):
    assert list(records) == ["base", "grpo", "distill"]
    assert all(r["temperature"] == 0.6 and r["task"] == "countdown" for r in records.values())


def test_the_base_overtakes_the_sharp_model_and_the_coverage_says_where(records):
    rows = {r["model"]: r for r in viz.crossovers(records, n_bootstrap=200)}
    grpo = rows["grpo"]
    assert grpo["pass1"] > 0.35 and 1 < grpo["crossover"] <= 64 and grpo["low"] <= grpo["crossover"] <= grpo["high"]
    assert grpo["delta_se"] == pytest.approx(grpo["base_pass_n"] - grpo["pass1"])
    coverage = {r["model"]: r for r in viz.coverage_rows(records)}
    assert coverage["grpo"]["only_trained"] == 1 and coverage["grpo"]["only_trained_ids"] == [80]
    assert coverage["grpo"]["both"] + coverage["grpo"]["only_base"] == 80
    assert sum(coverage["distill"][k] for k in ("both", "only_trained", "only_base", "neither")) == 100


def test_figures_have_a_band_per_model_and_bars_at_never_and_always(records):
    fig = viz.passk_figure(records, n_bootstrap=100)
    lines = [t for t in fig.data if t.mode == "lines+markers"]
    assert [t.name for t in lines] == ["base model", "GRPO", "distilled"]
    assert list(lines[0].x) == [1, 2, 4, 8, 16, 32, 64] and fig.layout.xaxis.type == "log"
    assert len(fig.data) == 6  # one band each
    bars = viz.solve_rate_figure(records)
    base, grpo = bars.data
    assert base.x[0] == "never" and base.x[-1] == "always"
    assert base.y[0] == 20  # the 20 problems it cannot solve
    assert grpo.y[0] + grpo.y[-1] > 0.5 * 100  # the sharp model piles up at 0 and 1


def test_the_missed_share_is_one_minus_pass_at_k_on_a_log_axis_and_stops_at_zero(records):
    plain, missed = viz.passk_figure(records, n_bootstrap=0), viz.passk_figure(records, n_bootstrap=0, missed=True)
    for a, b in zip(plain.data, missed.data):
        assert [1 - v for v in a.y] == pytest.approx(list(b.y))
    assert missed.layout.yaxis.type == "log"
    everything = {"base": _record("base", [1.0] * 10), "grpo": _record("grpo", [0.5] * 10)}
    base_line = viz.passk_figure(everything, n_bootstrap=0, missed=True).data[0]
    assert list(base_line.y) == [None] * 7  # every problem solved at every k: nothing to draw on a log axis


def test_curves_over_different_problems_or_n_are_refused(records):
    short = dict(records["grpo"], rows=records["grpo"]["rows"][:50])
    with pytest.raises(ValueError, match="different problems"):
        viz.curves({"base": records["base"], "grpo": short})
    other_n = dict(records["grpo"], num_generations=32)
    with pytest.raises(ValueError, match="different n"):
        viz.crossovers({"base": records["base"], "grpo": other_n})


def test_training_length_rows_follow_the_steps_and_refuse_mixed_n(records):
    by_step = {0: records["base"], 100: records["grpo"], 50: records["distill"]}
    rows = viz.training_length_rows(by_step, n_bootstrap=100)
    assert [r["step"] for r in rows] == [0, 50, 100] and all(r["n"] == 64 for r in rows)
    base, _, grpo = rows
    assert grpo["pass1"] > base["pass1"] and grpo["pass_n"] < base["pass_n"]  # sharper, narrower
    assert all(r["pass1_low"] <= r["pass1"] <= r["pass1_high"] for r in rows)
    fig = viz.training_length_figure(rows)
    assert [t.name for t in fig.data] == ["pass@1", "pass@64"] and list(fig.data[0].x) == [0, 50, 100]
    with pytest.raises(ValueError, match="different n"):
        viz.training_length_rows({0: records["base"], 1: dict(records["grpo"], num_generations=32)})


def test_training_length_changes_are_paired_over_the_same_problems(records):
    by_step = {0: records["base"], 100: records["grpo"]}
    (row,) = viz.training_length_changes(by_step, [(0, 100)], n_bootstrap=200)
    assert (row["from"], row["to"], row["n"]) == (0, 100, 64)
    # grpo solves 41 problems nearly always, the base 80 now and then: pass@1 up, pass@64 down, both clear of 0
    assert 0 < row["pass1_low"] <= row["pass1"] <= row["pass1_high"]
    assert row["pass_n_low"] <= row["pass_n"] <= row["pass_n_high"] < 0
    assert row["only_to"] == 1 and row["only_from"] >= 35
    (same,) = viz.training_length_changes({0: records["base"], 1: records["base"]}, [(0, 1)], n_bootstrap=50)
    assert same["pass1"] == same["pass_n"] == 0 and same["only_from"] == same["only_to"] == 0
    with pytest.raises(ValueError, match=r"no policy for step\(s\) \[50\]"):
        viz.training_length_changes(by_step, [(0, 50)])


def test_perplexity_rows_and_figure():
    scored = {"base": [{"perplexity": [2.0, 4.0, 8.0], "correct": [True, False, False]}],
              "grpo": [{"perplexity": [1.5, 1.5], "correct": [True, True]}, {"perplexity": [3.0], "correct": [False]}]}
    rows = {r["model"]: r for r in viz.perplexity_rows(scored)}
    assert rows["base"]["median"] == 4.0 and rows["base"]["median_right"] == 2.0 and rows["base"]["right"] == 1
    assert rows["base"]["median_wrong"] == 6.0 and rows["base"]["wrong"] == 2
    assert rows["grpo"]["samples"] == 3 and rows["grpo"]["median"] == 1.5 and rows["grpo"]["median_wrong"] == 3.0
    fig = viz.perplexity_figure(scored)
    assert [t.name for t in fig.data] == ["base model", "GRPO"] and fig.layout.yaxis.type == "log"
    assert all(t.boxpoints == "outliers" for t in fig.data)  # whiskers at 1.5 IQR, as the chapter says


def test_checked_curves_count_only_the_solves_whose_steps_hold_and_old_rows_say_what_to_do(records):
    import copy

    checked = copy.deepcopy(records)
    for record in checked.values():
        for row in record["rows"]:
            row["num_checked"] = row["num_correct"] // 2  # half of each problem's right answers slipped somewhere
    answer = viz.curves(checked, ks=[1, 64], n_bootstrap=0)
    steps = viz.curves(checked, ks=[1, 64], n_bootstrap=0, solved="checked")
    for model in checked:
        assert steps[model][1].estimate <= answer[model][1].estimate
        assert steps[model][1].estimate == pytest.approx(
            np.mean([row["num_correct"] // 2 for row in checked[model]["rows"]]) / 64)
    fig = viz.passk_figure(checked, n_bootstrap=0, solved=("answer", "checked"))
    names = [t.name for t in fig.data if t.name]
    assert "GRPO, steps checked" in names and "GRPO" in names and len(names) == 2 * len(checked)
    with pytest.raises(ValueError, match="has no num_checked in its rows: .* evaluate it again"):
        viz.curves(records, solved="checked")


def test_against_the_base_says_whether_a_model_lifts_the_whole_curve(records):
    gaps = viz.against_base(records, ks=[1, 4, 64], n_bootstrap=200)
    distill, grpo = gaps["distill"], gaps["grpo"]
    assert not distill["lifts"] and distill["below_from"] is None  # 0.15 against 0.1 on the same 80 problems:
    assert distill["gaps"][1].low > 0 and distill["gaps"][4].low > 0  # above the base at small k,
    assert distill["gaps"][64].low <= 0 <= distill["gaps"][64].high  # level with it where both solve all 80
    assert viz.against_base(records, ks=[1, 4], n_bootstrap=200)["distill"]["lifts"]
    assert not grpo["lifts"] and grpo["gaps"][1].low > 0 and grpo["below_from"] == 64  # sharp: ahead at 1, behind late
    assert grpo["gaps"][64].difference == pytest.approx(
        viz.curves(records, ks=[64], n_bootstrap=0)["grpo"][64].estimate
        - viz.curves(records, ks=[64], n_bootstrap=0)["base"][64].estimate)
