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
            "summary": summary, "num_generations": 16}


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


def _base(task, rate, n=256, temperature=1.0):
    return {"task": task, "algo": "base", "temperature": temperature, "num_generations": n,
            "summary": {"pass_at_k": [{"k": 1, "estimate": rate}]}}


def test_final_table_reports_mean_sd_each_seed_and_the_ratio_to_the_base_with_its_interval(runs):
    from scipy import stats

    evaluations = [_base("countdown", 0.20), _base("tinygsm", 0.40), _base("countdown", 0.1, temperature=0.6),
                   dict(_base("countdown", 0.1), algo="grpo")]
    base = viz.base_evaluations(evaluations)
    assert {t: b["summary"]["pass_at_k"][0]["estimate"] for t, b in base.items()} == {"countdown": 0.2, "tinygsm": 0.4}
    rows = {(r["task"], r["algo"]): r for r in viz.final_table(runs, base)}
    grpo = rows[("countdown", "grpo")]
    assert grpo["pass@1"] == pytest.approx(0.40) and grpo["sd"] == pytest.approx(0.01)
    assert grpo["per_seed"] == pytest.approx([0.39, 0.40, 0.41]) and grpo["base_pass@1"] == 0.2
    assert grpo["per_seed_ratio"] == pytest.approx([1.95, 2.0, 2.05]) and grpo["base_n"] == 256
    half = stats.t.ppf(0.975, 2) * 0.05 / 3 ** 0.5  # sd of the ratios 0.05, three seeds
    assert (grpo["ratio"].low, grpo["ratio"].high) == (pytest.approx(2.0 - half), pytest.approx(2.0 + half))
    assert "ratio" not in viz.final_table(runs)[0]  # no base given: no ratio
    fig = viz.final_figure(runs, base)
    assert len(fig.data) == 2 * (1 + 4)  # per task: the bars, and each algorithm's seed dots
    assert fig.layout.yaxis.title.text == "pass@1 (200 problems, n = 16)"  # the samples the runs were scored with


def test_the_claims_follow_the_numbers(runs):
    claims = {(c["task"], c["claim"]): c for c in viz.accuracy_claims(runs)}
    one = claims[("countdown", 1)]  # 0.40 vs 0.41, sd 0.01 each: the 90% interval [-0.027, 0.007] is inside ±0.03
    assert one["holds"] and one["outcome"] == "equivalent" and one["verdict"].startswith("GRPO ≈ F-ISFT±")
    assert one["low"] < -0.01 < one["high"] and one["seeds"] == (3, 3)
    two = claims[("countdown", 2)]
    assert two["holds"] and two["b"] == "fisft_pm" and two["outcome"] == "less" and two["high"] < 0
    lengths = {(c["task"], c["algo"]): c for c in viz.length_claims(runs)}
    assert lengths[("tinygsm", "grpo")]["grows"] and lengths[("tinygsm", "fisft_pm")]["grows"]
    assert not lengths[("tinygsm", "dr_grpo")]["grows"] and not lengths[("tinygsm", "fisft_plus")]["grows"]
    assert lengths[("tinygsm", "fisft_pm")]["wrong_change"] == pytest.approx(2.0 * (STEPS - 10))


def test_a_wide_interval_is_a_verdict_of_its_own(runs):
    for r in runs:
        if r["algo"] == "fisft_pm":  # seeds 0.41 +- 0.06: the difference's interval reaches past the margin both ways
            r["summary"]["pass_at_k"][0]["estimate"] = 0.41 + 6 * (r["seed"] - 1) * 0.01
    c = viz.comparison(runs, "countdown", "grpo", "fisft_pm", claim=1, holds_when="equivalent")
    assert c["outcome"] == "cannot tell" and c["holds"] is None and c["low"] < -0.03 and c["high"] > 0.03
    assert c["verdict"].startswith("cannot tell GRPO from F-ISFT±")
    assert viz.comparison(runs, "countdown", "grpo", "ppo", claim=1) is None  # no PPO run: nothing to compare


def test_a_claim_fails_when_the_numbers_say_so(runs):
    for r in runs:
        if r["algo"] == "fisft_pm":
            r["summary"]["pass_at_k"][0]["estimate"] += 0.2  # F-ISFT± now clearly ahead of GRPO
    claims = {(c["task"], c["claim"]): c for c in viz.accuracy_claims(runs)}
    assert claims[("countdown", 1)]["holds"] is False and claims[("countdown", 1)]["outcome"] == "less"
    assert viz.distinguishable([0.1, 0.11, 0.12], [0.3, 0.31, 0.29])
    assert not viz.distinguishable([0.1], [0.3])  # one seed says nothing about the spread
    # 2 x SE said "apart" here; Welch's t at ~2 degrees of freedom (4.3 x SE) does not
    a, b = [0.30, 0.32, 0.31], [0.27, 0.30, 0.28]
    assert abs(0.31 - 0.2833) > 2 * (0.01 ** 2 / 3 + 0.01528 ** 2 / 3) ** 0.5 and not viz.distinguishable(a, b)


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
    assert "vs_base" not in grpo  # no base among the runs


def test_matched_wrong_lengths_against_the_base_carry_an_interval(runs):
    base = dict(_run("grpo", "countdown", 0, final=0.2), algo="base")
    for i, r in enumerate(runs + [base]):
        wrong = 50 if r["algo"] == "base" else 60 + r["seed"] * 2  # trained seeds 60, 62, 64
        r["rows"] = [{"index": 0, "rewards": [0.0], "lengths": [wrong]}]
    algos = viz.matched_wrong_lengths(runs + [base], "countdown")["algos"]
    gap = algos["grpo"]["vs_base"]
    assert gap.estimate == pytest.approx(12.0) and gap.low > 0 and gap.high < 24


def test_a_claim_with_one_seed_is_not_judged(runs):
    one = [r for r in runs if not (r["algo"] == "fisft_pm" and r["seed"] > 0)]
    claims = {(c["task"], c["claim"]): c for c in viz.accuracy_claims(one)}
    assert claims[("countdown", 1)]["holds"] is None  # F-ISFT± has one seed: no spread to compare with
    assert claims[("countdown", 1)]["verdict"].startswith("one seed")
    assert claims[("countdown", 2)]["b"] == "fisft_pm" and claims[("countdown", 2)]["holds"] is None


def test_problem_scores_are_each_problems_share_of_right_samples_per_seed(runs):
    for r in runs:
        r["rows"] = [{"index": 2, "rewards": [1.0, 0.0, 0.1, 1.0], "lengths": [1] * 4},
                     {"index": 0, "rewards": [float(r["seed"] == 1)] * 4, "lengths": [1] * 4}]
    indices, rows = viz.problem_scores(runs, "countdown", "grpo")
    assert indices == [0, 2] and rows == [[0.0, 1.0, 0.0], [0.5, 0.5, 0.5]]


def test_the_format_score_effect_compares_grpo_with_and_without_it_and_fisft_pm(runs):
    base = dict(_run("grpo", "countdown", 0, final=0.2), algo="base")
    binary = [dict(_run("grpo", "countdown", seed, final=0.35, truncated=0.4), reward="binary") for seed in range(3)]
    graded = dict(_run("grpo", "countdown", 0, final=0.1), reward="graded")  # another shape: left out
    lengths = {"base": 100, "grpo": 150, "fisft_pm": 180}
    for r in runs + [base] + binary + [graded]:
        wrong = 178 + r["seed"] if r in binary else lengths.get(r["algo"], 120)
        r["rows"] = [{"index": 0, "rewards": [0.0, 1.0], "lengths": [wrong, 10]}]
    effect = viz.format_score_effect(runs + [base], binary + [graded])
    assert effect["problems"] == 1 and effect["base_length"] == 100
    assert effect["arms"]["GRPO, binary"]["wrong_length"] == [178, 179, 180]
    assert effect["arms"]["GRPO, binary"]["truncated"] == [0.4] * 3
    d = effect["differences"][("GRPO, binary", "GRPO, format score", "wrong_length")]
    assert d.estimate == pytest.approx(29.0) and d.low > 0
    same = effect["differences"][("F-ISFT±", "GRPO, binary", "wrong_length")]
    assert same.estimate == pytest.approx(1.0) and same.low < 0 < same.high


def test_the_readme_s_comparison_tables_are_what_their_script_prints(capsys):
    """README's comparison and claims tables are scripts/comparison_table.py's output on the committed runs."""
    from conftest import script_tables_in_readme

    assert len(script_tables_in_readme("comparison_table", capsys)) > 10


def test_each_variant_is_compared_with_both_ends(runs):
    from companion.stats import compare

    variants = [dict(_run("dr_grpo", "countdown", seed, final=0.40 + noise), name=f"countdown-dr_grpo-sequence-seed{seed}")
                for seed, noise in enumerate((-0.01, 0.0, 0.01))]
    assert {viz.variant_of(r) for r in variants} == {"dr_grpo-sequence"}
    ends = {algo: viz.by_algo(runs, "countdown")[algo] for algo in ("grpo", "fisft_plus")}
    (row,) = viz.against({"dr_grpo-sequence": variants}, ends)
    assert row["pass@1"] == pytest.approx(0.40) and row["per_seed"] == pytest.approx([0.39, 0.40, 0.41])
    assert row["vs"]["grpo"].outcome == "equivalent"  # the same numbers as GRPO's seeds
    assert row["vs"]["fisft_plus"].outcome == "greater"  # 0.40 against 0.25
    expected = compare([0.39, 0.40, 0.41], [0.24, 0.25, 0.26])
    assert row["vs"]["fisft_plus"].difference == pytest.approx(expected.difference)
    (one,) = viz.against({"x": variants[:1]}, ends)
    assert one["vs"] == {"grpo": None, "fisft_plus": None}  # one seed: no interval


def test_dr_grpo_s_variants_are_grouped_and_put_against_grpo_and_dr_grpo(runs):
    variants = [dict(_run("dr_grpo", "countdown", seed, final=0.40 + noise), name=f"countdown-dr_grpo-{v}-seed{seed}")
                for v in ("sequence", "binary") for seed, noise in enumerate((-0.01, 0.0, 0.01))]
    groups = viz.by_variant(variants)
    assert list(groups) == ["dr_grpo-sequence", "dr_grpo-binary"] and all(len(g) == 3 for g in groups.values())
    lags = viz.dr_grpo_lags(variants, runs)
    assert set(lags) == set(groups)
    expected = viz.against(groups, {"GRPO": viz.by_algo(runs, "countdown")["grpo"],
                                    "Dr. GRPO": viz.by_algo(runs, "countdown")["dr_grpo"]})
    assert [lags[row["variant"]]["vs"] for row in expected] == [row["vs"] for row in expected]
