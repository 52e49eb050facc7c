"""Chapter 9's tables and figures, on runs whose numbers are made up here so that every answer is known."""

from __future__ import annotations

import math

import pytest

from companion.viz import objections as viz

STEPS = 20


def _run(algo, seed, *, final, beta=0.0, mu=1, cosine=None, kl=None, clip=0.0, task="tinygsm", refresh=1,
         reward=None, weighted=0.5, wrong_up=None):
    records = [{"step": 0, "eval_accuracy_sampled": 0.4}]
    for step in range(1, STEPS + 1):
        record = {"step": step, "length": 45.0, "accuracy": 0.6, "clip_ratio/region_mean": clip,
                  "kl": kl if beta else None, "frac_weighted": weighted, "frac_wrong_up": wrong_up}
        if step % 10 == 0:
            record["eval_accuracy_sampled"] = 0.4 + 0.01 * step
        if cosine is not None and step % 5 == 0:
            record.update(sft_cosine=cosine - 0.01 * step / 5, sft_rel_diff=1 - cosine)
        records.append(record)
    summary = {"pass_at_k": [{"k": 1, "estimate": final}], "length_correct": {"mean": 44.0},
               "length_wrong": {"mean": 50.0 + 10 * beta}}
    return {"name": f"{task}-{algo}-b{beta}-mu{mu}-k{refresh}-{reward}-seed{seed}", "algo": algo, "task": task,
            "seed": seed, "beta": beta, "num_iterations": mu, "refresh_every": refresh, "steps": STEPS,
            "reward": reward or ("format" if task == "countdown" else "binary"), "records": records, "summary": summary}


@pytest.fixture
def runs():
    """GRPO's baseline; GRPO with a strong KL, clearly worse; GRPO with μ = 2, the same within noise; F-ISFT±'s
    baseline and a weak KL; a base-model record that is left out."""
    out = [{"name": "tinygsm-base", "algo": "base", "task": "tinygsm", "seed": None, "records": [], "summary": {}}]
    for seed, noise in enumerate((-0.01, 0.0, 0.01)):
        out.append(_run("grpo", seed, final=0.86 + noise))
        out.append(_run("grpo", seed, final=0.70 + noise, beta=0.04, cosine=0.9, kl=0.05))
        out.append(_run("grpo", seed, final=0.86 - noise, mu=2, cosine=0.7, clip=0.02))
        out.append(_run("fisft_pm", seed, final=0.85 + noise))
        out.append(_run("fisft_pm", seed, final=0.85 - noise, beta=0.01, cosine=0.99, kl=0.01))
    return out


def test_conditions_are_grouped_by_algorithm_kl_and_updates_with_baselines_first(runs):
    groups = viz.conditions(runs, "tinygsm")
    C = viz.Condition
    assert list(groups) == [C("fisft_pm"), C("fisft_pm", 0.01), C("grpo"), C("grpo", mu=2), C("grpo", 0.04)]
    assert all([r["seed"] for r in g] == [0, 1, 2] for g in groups.values())
    assert list(viz.conditions(runs, "tinygsm", ("grpo",))) == [C("grpo"), C("grpo", mu=2), C("grpo", 0.04)]
    assert viz.label(C("grpo", 0.04)) == "GRPO, β = 0.04" and viz.label(C("grpo", mu=2)) == "GRPO, μ = 2"
    assert viz.label(("fisft_pm", 0.0, 1)) == "F-ISFT±"
    assert viz.label(C("fisft_plus", refresh=10)) == "F-ISFT+, refreshed every 10 steps"
    assert viz.label(C("fisft_plus", refresh=0)) == "F-ISFT+, static"
    assert viz.label(C("grpo", reward="graded")) == "GRPO, graded reward"
    assert viz.label(C("ppo", gae_lambda=1.0)) == "PPO, λ = 1"
    assert viz.condition({"algo": "ppo", "task": "countdown", "gae_lambda": 0.95}) == C("ppo")  # the default
    assert viz.condition({"algo": "ppo", "task": "countdown", "gae_lambda": 1.0}).baseline == C("grpo")
    assert C("ppo").baseline == C("grpo") and C("fisft_pm", 0.04).baseline == C("fisft_pm")


def test_rows_judge_each_condition_against_its_own_baseline(runs):
    rows = {r["key"]: r for r in viz.condition_rows(runs, "tinygsm", last=2)}
    C = viz.Condition
    base, kl, mu = rows[C("grpo")], rows[C("grpo", 0.04)], rows[C("grpo", mu=2)]
    assert base["pass1"] == pytest.approx(0.86) and "vs_baseline" not in base and base["sft_cosine"] is None
    assert kl["vs_baseline"] == pytest.approx(-0.16) and kl["distinguishable"]
    assert mu["vs_baseline"] == pytest.approx(0.0, abs=1e-12) and not mu["distinguishable"]
    assert kl["vs_baseline_outcome"] == "less" and mu["vs_baseline_outcome"] in ("equivalent", "cannot tell")
    # cosines measured at steps 5, 10, 15, 20: 0.89 ... 0.86, mean 0.875, last two 0.865
    assert kl["sft_cosine"] == pytest.approx(0.875) and kl["sft_cosine_late"] == pytest.approx(0.865)
    assert kl["kl"] == pytest.approx(0.05) and base["kl"] is None
    assert mu["clip"] == pytest.approx(0.02) and kl["length_wrong"] == pytest.approx(50.4)
    assert math.isclose(rows[C("fisft_pm", 0.01)]["sd"], 0.01)


def test_figures_draw_a_band_per_measured_condition(runs):
    fig = viz.gap_figure(runs, "tinygsm")
    named = [t.name for t in fig.data if t.showlegend is not False]
    assert named == ["F-ISFT±, β = 0.01", "GRPO, μ = 2", "GRPO, β = 0.04"]  # the baselines measured nothing
    line = next(t for t in fig.data if t.name == "GRPO, β = 0.04")
    assert list(line.x) == [5, 10, 15, 20] and line.y[0] == pytest.approx(0.89)
    fig = viz.training_figure(runs, "tinygsm", "length", ("grpo",))
    assert [t.name for t in fig.data if t.showlegend is not False] == ["GRPO", "GRPO, μ = 2", "GRPO, β = 0.04"]


def test_refresh_intervals_and_reward_shapes_are_conditions_judged_against_the_on_policy_task_reward_runs():
    C = viz.Condition
    runs = []
    for seed, noise in enumerate((-0.01, 0.0, 0.01)):
        runs.append(_run("fisft_plus", seed, final=0.86 + noise, weighted=0.8))
        runs.append(_run("fisft_plus", seed, final=0.80 + noise, refresh=STEPS, weighted=0.5))  # never refreshed
        runs.append(_run("fisft_plus", seed, final=0.86 - noise, refresh=5, weighted=0.7))
        runs.append(_run("grpo", seed, final=0.33 + noise, task="countdown", wrong_up=0.2))  # format: the task's own
        runs.append(_run("grpo", seed, final=0.33 - noise, task="countdown", reward="binary", wrong_up=0.0))
    groups = viz.conditions(runs, "tinygsm")
    assert list(groups) == [C("fisft_plus"), C("fisft_plus", refresh=5), C("fisft_plus", refresh=0)]
    rows = {r["key"]: r for r in viz.condition_rows(runs, "tinygsm")}
    static = rows[C("fisft_plus", refresh=0)]
    assert static["label"] == "F-ISFT+, static" and static["distinguishable"]
    assert static["vs_baseline"] == pytest.approx(-0.06) and static["frac_weighted"] == pytest.approx(0.5)
    assert not rows[C("fisft_plus", refresh=5)]["distinguishable"]
    rows = {r["key"]: r for r in viz.condition_rows(runs, "countdown")}
    assert list(rows) == [C("grpo"), C("grpo", reward="binary")]  # "format" is Countdown's own: the baseline
    assert rows[C("grpo")]["wrong_up"] == pytest.approx(0.2) and rows[C("grpo", reward="binary")]["wrong_up"] == 0.0
    assert viz.trained_on(runs[0]["records"], 10)[-1] == (STEPS, pytest.approx(0.8 * 10 * STEPS))
    fig = viz.heldout_figure(runs, "tinygsm", completions_per_step=10)
    assert len(fig.data) == 9 and [t.name for t in fig.data if t.showlegend] == [
        "F-ISFT+", "F-ISFT+, refreshed every 5 steps", "F-ISFT+, static"]
    static_line = next(t for t in fig.data if t.name == "F-ISFT+, static")
    assert list(static_line.x) == [0, 50, 100] and list(static_line.y) == pytest.approx([0.4, 0.5, 0.6])


def test_the_readme_s_objections_table_is_what_its_script_prints(capsys):
    """README's table is scripts/objections_table.py's output on the committed runs, so it changes with them."""
    from conftest import script_tables_in_readme

    assert len(script_tables_in_readme("objections_table", capsys)) > 10
