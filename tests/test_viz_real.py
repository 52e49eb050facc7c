"""Chapter 10's sweep table and figure, on synthetic records of two learning rates."""

import pytest

from companion.viz import real as viz


def _run(rate, *, algo="grpo", seed=0, pass1=0.2, steps=12):
    records = [{"step": 0, "eval_accuracy_sampled": 0.05, "step_time": 60.0}]
    records += [{"step": s, "accuracy": 0.1 + s / 100, "length": 100 - 5 * s, "frac_truncated": 0.2 / s,
                 "step_time": 30.0} for s in range(1, steps + 1)]
    records[-1]["eval_accuracy_sampled"] = pass1
    summary = {"pass_at_k": [{"k": 1, "estimate": pass1, "low": pass1 - 0.02, "high": pass1 + 0.02}],
               "length_correct": {"mean": 20.0}, "length_wrong": {"mean": 30.0}, "truncated_fraction": 0.01,
               "sampling_seconds": 120.0}
    return {"name": f"run-{rate}", "algo": algo, "seed": seed, "learning_rate": rate, "config": object(),
            "records": records, "summary": summary, "num_generations": 8}


def test_the_sweep_is_the_seed0_grpo_runs_by_rate_with_ratios_to_the_base():
    results = [_run(1e-3, pass1=0.1), _run(3e-4, pass1=0.2), _run(3e-4, algo="fisft_pm"), _run(3e-4, seed=1),
               {"name": "base", "algo": "base", "config": None}]
    runs = viz.sweep_runs(results, (3e-4, 1e-3, 1e-4))
    assert list(runs) == [3e-4, 1e-3]  # in the sweep's order; a rate not yet run is left out
    base = {"summary": {"pass_at_k": [{"k": 1, "estimate": 0.05}]}}
    rows = {row["learning_rate"]: row for row in viz.sweep_rows(runs, base)}
    assert rows[3e-4]["ratio"] == pytest.approx(4.0) and rows[1e-3]["ratio"] == pytest.approx(2.0)
    assert rows[3e-4]["curve"] == {0: 0.05, 12: 0.2}
    assert rows[3e-4]["batch_length_first"] == pytest.approx(85.0)  # steps 1-5: 95 ... 75
    assert rows[3e-4]["batch_length_last"] == pytest.approx(50.0)  # steps 8-12: 60 ... 40
    assert rows[3e-4]["minutes"] == pytest.approx((60 + 12 * 30 + 120) / 60)
    assert "ratio" not in viz.sweep_rows(runs)[0]


def test_the_sweep_figure_has_a_line_per_rate_and_panel_and_the_held_out_points():
    runs = viz.sweep_runs([_run(3e-4), _run(1e-3)], (3e-4, 1e-3))
    fig = viz.sweep_figure(runs)
    lines = [t for t in fig.data if t.mode == "lines"]
    assert len(lines) == 2 * 3 and sum(t.showlegend for t in lines) == 2
    markers = [t for t in fig.data if t.mode == "markers"]
    assert [list(t.x) for t in markers] == [[0, 12], [0, 12]]



def test_the_rules_are_the_trained_runs_at_the_chosen_rate_and_the_curves_the_n64_evaluations():
    def evaluation(algo, n):
        return {"name": f"{algo}-n{n}", "algo": algo, "task": "tinygsm", "config": None, "temperature": 1.0,
                "num_generations": n}

    trained = [dict(_run(rate, algo=algo, seed=seed), task="tinygsm", temperature=1.0)
               for rate in (3e-4, 1e-3) for algo in ("grpo", "fisft_pm") for seed in (0, 1)]
    results = [*trained, evaluation("base", 64), evaluation("grpo", 64), evaluation("fisft_pm", 64),
               evaluation("base", 8)]
    rules = viz.rule_runs(results, 3e-4)
    assert len(rules) == 4 and {r["learning_rate"] for r in rules} == {3e-4}
    assert all(r["config"] is not None for r in rules)  # not the n = 64 records of the same algorithms
    records = viz.passk_records(results, 64)
    assert list(records) == ["base", "grpo", "fisft_pm"]  # the book's order
    assert {r["num_generations"] for r in records.values()} == {64}


def test_the_readme_s_real_model_table_is_what_its_script_prints(capsys):
    """README's chapter 10 table is scripts/real_table.py's output on the committed runs, so it changes with them."""
    from conftest import script_tables_in_readme

    lines = script_tables_in_readme("real_table", capsys)
    assert len(lines) >= 3 and any("GRPO" in line for line in lines)  # the header, its rule, a run
