"""Chapter 9's tables and figures, on runs whose numbers are made up here so that every answer is known."""

from __future__ import annotations

import math

import pytest

from companion.viz import objections as viz

STEPS = 20


def _run(algo, seed, *, final, beta=0.0, mu=1, cosine=None, kl=None, clip=0.0, task="tinygsm"):
    records = [{"step": 0, "eval_accuracy_sampled": 0.4}]
    for step in range(1, STEPS + 1):
        record = {"step": step, "length": 45.0, "accuracy": 0.6, "clip_ratio/region_mean": clip,
                  "kl": kl if beta else None}
        if cosine is not None and step % 5 == 0:
            record.update(sft_cosine=cosine - 0.01 * step / 5, sft_rel_diff=1 - cosine)
        records.append(record)
    summary = {"pass_at_k": [{"k": 1, "estimate": final}], "length_correct": {"mean": 44.0},
               "length_wrong": {"mean": 50.0 + 10 * beta}}
    return {"name": f"{task}-{algo}-b{beta}-mu{mu}-seed{seed}", "algo": algo, "task": task, "seed": seed,
            "beta": beta, "num_iterations": mu, "records": records, "summary": summary}


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
    assert list(groups) == [("fisft_pm", 0.0, 1), ("fisft_pm", 0.01, 1), ("grpo", 0.0, 1), ("grpo", 0.0, 2),
                            ("grpo", 0.04, 1)]
    assert all([r["seed"] for r in g] == [0, 1, 2] for g in groups.values())
    assert list(viz.conditions(runs, "tinygsm", ("grpo",))) == [("grpo", 0.0, 1), ("grpo", 0.0, 2), ("grpo", 0.04, 1)]
    assert viz.label(("grpo", 0.04, 1)) == "GRPO, β = 0.04" and viz.label(("grpo", 0.0, 2)) == "GRPO, μ = 2"
    assert viz.label(("fisft_pm", 0.0, 1)) == "F-ISFT±"


def test_rows_judge_each_condition_against_its_own_baseline(runs):
    rows = {r["key"]: r for r in viz.condition_rows(runs, "tinygsm", last=2)}
    base, kl, mu = rows["grpo", 0.0, 1], rows["grpo", 0.04, 1], rows["grpo", 0.0, 2]
    assert base["pass1"] == pytest.approx(0.86) and "vs_baseline" not in base and base["sft_cosine"] is None
    assert kl["vs_baseline"] == pytest.approx(-0.16) and kl["distinguishable"]
    assert mu["vs_baseline"] == pytest.approx(0.0, abs=1e-12) and not mu["distinguishable"]
    # cosines measured at steps 5, 10, 15, 20: 0.89 ... 0.86, mean 0.875, last two 0.865
    assert kl["sft_cosine"] == pytest.approx(0.875) and kl["sft_cosine_late"] == pytest.approx(0.865)
    assert kl["kl"] == pytest.approx(0.05) and base["kl"] is None
    assert mu["clip"] == pytest.approx(0.02) and kl["length_wrong"] == pytest.approx(50.4)
    assert math.isclose(rows["fisft_pm", 0.01, 1]["sd"], 0.01)


def test_figures_draw_a_band_per_measured_condition(runs):
    fig = viz.gap_figure(runs, "tinygsm")
    named = [t.name for t in fig.data if t.showlegend is not False]
    assert named == ["F-ISFT±, β = 0.01", "GRPO, μ = 2", "GRPO, β = 0.04"]  # the baselines measured nothing
    line = next(t for t in fig.data if t.name == "GRPO, β = 0.04")
    assert list(line.x) == [5, 10, 15, 20] and line.y[0] == pytest.approx(0.89)
    fig = viz.training_figure(runs, "tinygsm", "length", ("grpo",))
    assert [t.name for t in fig.data if t.showlegend is not False] == ["GRPO", "GRPO, μ = 2", "GRPO, β = 0.04"]
