"""Chapter 8's planner check: rows and figure from a memory report whose numbers are made up here."""

from __future__ import annotations

import plotly.graph_objects as go

from companion.viz import gpu as vgpu

MIB = 2**20
BASE = {"micro_batch_size": 0, "logit_chunk_size": 0, "gradient_checkpointing": False, "dtype": "float32",
        "load_in_4bit": False, "max_completion_length": 32}


EVAL_BASE = {"problems": 4, "num_generations": 16, "batch_size": 32, "top_p": 0.95, "fast_sampler": True}


def _run(name, changes, *, peak, allocated, sampling, update=0, evaluation=0, base=BASE):
    measured = {"peak": peak * MIB, "weights": 100 * MIB, "sampling": sampling * MIB}
    measured.update({k: v * MIB for k, v in (("update", update), ("evaluation", evaluation)) if v})
    return {"config": name, "settings": {**base, **changes}, "measured": measured,
            "planned": {"allocated": allocated * MIB}}


REPORT = {"base": BASE, "eval_base": EVAL_BASE, "runs": [
    _run("first", {}, peak=90, allocated=100, sampling=50, update=90),
    _run("chunked", {"logit_chunk_size": 8, "gradient_checkpointing": True}, peak=60, allocated=50, sampling=60,
         update=40),
    _run("bf16", {"dtype": "bfloat16", "load_in_4bit": True}, peak=30, allocated=30, sampling=20, update=30),
    _run("heldout", {"eval_every": 1, "eval_problems": 8, "eval_num_generations": 4}, peak=70, allocated=75,
         sampling=20, update=30, evaluation=70),
    _run("eval", {}, peak=40, allocated=42, sampling=40, base=EVAL_BASE),
    _run("eval-slow", {"fast_sampler": False, "batch_size": 64}, peak=50, allocated=52, sampling=50, base=EVAL_BASE),
]}


def test_rows_say_what_changed_the_ratio_and_where_the_peak_fell():
    rows = vgpu.memory_rows(REPORT)
    assert [r["changes"] for r in rows] == ["as the first config", "logit chunks of 8, checkpointing",
                                            "bfloat16, 4-bit", "held-out 8 x 4", "4 x 16 samples, batch 32",
                                            "batch 64, plain sampler"]
    assert [round(r["ratio"], 2) for r in rows][:3] == [0.9, 1.2, 1.0]
    assert [r["peak_in"] for r in rows] == ["update", "sampling", "update", "evaluation", "sampling", "sampling"]
    assert rows[0]["measured_mib"] == 90 and rows[0]["planned_mib"] == 100


def test_the_figure_pairs_planned_and_measured_bars_with_the_ratio_over_them():
    fig = vgpu.memory_figure(REPORT)
    assert isinstance(fig, go.Figure) and [t.type for t in fig.data] == ["bar", "bar"]
    planned, measured = fig.data
    assert list(planned.y)[:3] == [100, 50, 30] and list(measured.y)[:3] == [90, 60, 30]
    assert list(measured.text)[:3] == ["0.90", "1.20", "1.00"]
    assert list(measured.x) == list(planned.x) == [r["config"] for r in REPORT["runs"]]
    assert "logit chunks of 8, checkpointing" in measured.hovertemplate[1]


def test_the_committed_report_is_found_where_the_package_is_installed_or_checked_out():
    report = vgpu.memory_report()
    assert report["runs"] and all({"measured", "planned", "settings"} <= set(r) for r in report["runs"])


def test_the_table_folds_the_changes_at_their_commas():
    report = {**REPORT, "runs": REPORT["runs"][:4]}
    lines = vgpu.memory_table(report, width=20).splitlines()
    assert lines[0].split()[:4] == ["config", "measured", "planned", "ratio"]
    assert lines[1].split() == ["first", "90", "MiB", "100", "MiB", "0.90", "update", "as", "the", "first", "config"]
    assert lines[2].endswith("sampling    logit chunks of 8,")
    assert lines[3].strip() == "checkpointing" and lines[3].index("c") == lines[2].index("logit")
    assert lines[4].endswith("update      bfloat16, 4-bit")
    assert lines[5].endswith("evaluation  held-out 8 x 4") and len(lines) == 6


# --- the precision runs: made-up records whose every answer is known -----------------------------------------


def _trained(seed, final, *, lora=False, load_in_4bit=False, dtype="auto", greedy=0.9, step_time=2.0, task="tinygsm"):
    records = [{"step": 0, "eval_accuracy_sampled": 0.4, "eval_accuracy_greedy": 0.8}]
    for step in range(1, 11):
        record = {"step": step, "step_time": step_time}
        if step % 5 == 0:
            record.update(eval_accuracy_sampled=0.4 + 0.04 * step + 0.01 * seed, eval_accuracy_greedy=greedy)
        records.append(record)
    return {"algo": "grpo", "task": task, "seed": seed, "lora": lora, "load_in_4bit": load_in_4bit, "dtype": dtype,
            "records": records, "summary": {"pass_at_k": [{"k": 1, "estimate": final}]}}


def _precision_runs():
    runs = [{"algo": "base", "task": "tinygsm", "seed": None, "records": [], "summary": {}},
            _trained(0, 0.1, task="countdown")]  # left out: not a trained word-problem run
    for seed, noise in enumerate((-0.01, 0.0, 0.01)):
        runs.append(_trained(seed, 0.85 + noise))
        runs.append(_trained(seed, 0.85 - noise, lora=True, step_time=3.0))
        runs.append(_trained(seed, 0.70 + noise, lora=True, load_in_4bit=True, dtype="float16", greedy=0.6,
                             step_time=9.0))
    return runs[::-1]  # the order they come in does not matter


def test_precision_rows_compare_each_training_path_with_full_parameters():
    rows = vgpu.precision_rows(_precision_runs())
    assert [r["variant"] for r in rows] == ["full", "lora", "4bit-fp16"]  # the book's order, absent paths left out
    full, lora, fp16 = rows
    assert full["seeds"] == 3 and full["per_seed"] == [0.84, 0.85, 0.86] and "vs_full" not in full
    assert abs(lora["vs_full"]) < 1e-12 and not lora["distinguishable"] and lora["outcome"] == "equivalent"
    assert round(fp16["vs_full"], 6) == -0.15 and fp16["distinguishable"] and fp16["outcome"] == "less"
    assert fp16["vs_full_interval"].high < 0 < lora["vs_full_interval"].high
    assert (round(lora["vs_full_interval"].low, 3), round(lora["vs_full_interval"].high, 3)) == (-0.023, 0.023)
    assert fp16["eval_step"] == 10 and round(fp16["heldout_sampled"], 6) == 0.81 and fp16["heldout_greedy"] == 0.6
    assert [r["step_time"] for r in rows] == [2.0, 3.0, 9.0]


def test_the_precision_figure_draws_a_band_and_a_mean_per_path():
    fig = vgpu.precision_figure(_precision_runs())
    means = [t for t in fig.data if t.mode == "lines+markers"]
    assert [t.name for t in means] == [vgpu.VARIANT_NAMES[v] for v in ("full", "lora", "4bit-fp16")]
    assert list(means[0].x) == [0, 5, 10] and [round(y, 6) for y in means[0].y] == [0.4, 0.61, 0.81]
    assert len(fig.data) == 6  # each with its min-max band over the seeds


def test_the_readme_s_precision_table_is_what_its_script_prints(capsys):
    """README's table is scripts/precision_table.py's output on the committed runs, so it changes with them."""
    from conftest import script_tables_in_readme

    assert len(script_tables_in_readme("precision_table", capsys)) == 2 + len(vgpu.VARIANT_NAMES)
