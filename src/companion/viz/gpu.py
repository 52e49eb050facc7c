"""Chapter 8's measurements: the memory planner against ``bench/bench_memory.py``'s report (the tensors training
steps and ``companion eval`` really allocate, counted on the CPU), as rows and as a figure; and whether the GPU
recipe's path (LoRA, a 4-bit base, fp16 compute) trains, from the committed ``precision`` runs of the tiny world
(:func:`companion.experiments.precision_configs`) beside chapter 6's full-parameter GRPO runs."""

from __future__ import annotations

import json
from pathlib import Path

import plotly.graph_objects as go

MIB = 2**20

CHANGES = {
    "micro_batch_size": "micro-batch {}", "logit_chunk_size": "logit chunks of {}",
    "gradient_checkpointing": "checkpointing", "max_completion_length": "{} tokens",
    "prompts_per_step": "{} prompts", "num_generations": "G {}", "dtype": "{}", "load_in_4bit": "4-bit",
    "top_p": "top-p {}", "eval_every": "held-out {eval_problems} x {eval_num_generations}",
    "eval_batch_size": "{} at a time", "fast_sampler": "exact sampler",
}
"""How a training config's change from the bench's first config reads in a label (``{}``: the new value; a
named field: that setting's; ``fast_sampler`` only ever changes to off)."""

EVAL_CHANGES = {"fast_sampler": "plain sampler", "top_p": "top-p {}", "batch_size": "batch {}"}
"""The same for ``companion eval``'s configs (``fast_sampler`` only ever changes to off)."""

PHASES = ("sampling", "update", "evaluation")


def memory_report(path: str | Path | None = None) -> dict:
    """The committed CPU measurement (``data/memory/cpu.json``, from ``bench/bench_memory.py``), or ``path``."""
    from companion.shipped import data_dir

    return json.loads(Path(path or data_dir() / "memory" / "cpu.json").read_text())


def _label(settings: dict, report: dict) -> str:
    evaluation = "problems" in settings  # a companion eval config
    base, changes = (report["eval_base"], EVAL_CHANGES) if evaluation else (report["base"], CHANGES)
    parts = [changes[k].format(v, **settings) for k, v in settings.items()
             if k in changes and base.get(k) != v and (v or k == "fast_sampler")]
    if evaluation and not parts:
        return f"{base['problems']} x {base['num_generations']} samples, batch {base['batch_size']}"
    return ", ".join(parts) or "as the first config"


def memory_rows(report: dict) -> list[dict]:
    """One row per config: what it changes, the measured and planned peaks (MiB), their ratio, and the phase
    (sampling, the update or the held-out evaluation) the peak fell in."""
    rows = []
    for run in report["runs"]:
        measured, planned = run["measured"], run["planned"]
        rows.append({"config": run["config"], "changes": _label(run["settings"], report),
                     "measured_mib": measured["peak"] / MIB, "planned_mib": planned["allocated"] / MIB,
                     "ratio": measured["peak"] / planned["allocated"],
                     "peak_in": max(PHASES, key=lambda k: measured.get(k, 0))})
    return rows


def memory_table(report: dict, *, width: int = 22) -> str:
    """:func:`memory_rows` as fixed-width text, each config's changes folded at their commas to ``width``."""
    lines = [f"{'config':>20} {'measured':>9} {'planned':>8} {'ratio':>6}  peak in     changes from the first"]
    for r in memory_rows(report):
        folded: list[str] = []
        for part in r["changes"].split(", "):
            if folded and len(folded[-1]) + 2 + len(part) <= width:
                folded[-1] += ", " + part
            else:
                folded.append(part)
        head = (f"{r['config']:>20} {r['measured_mib']:5.0f} MiB {r['planned_mib']:4.0f} MiB {r['ratio']:6.2f}  "
                f"{r['peak_in']:<10}  ")
        lines.append(head + (",\n" + " " * len(head)).join(folded))
    return "\n".join(lines)


def memory_figure(report: dict) -> go.Figure:
    """Measured against planned peak tensor memory, one pair of bars per config, the ratio over each pair."""
    rows = memory_rows(report)
    names = [r["config"] for r in rows]
    hover = [f"{r['config']}: {r['changes']}<br>%{{y:.0f}} MiB" for r in rows]
    fig = go.Figure()
    fig.add_trace(go.Bar(x=names, y=[r["planned_mib"] for r in rows], name="planned (weights + adapters + "
                         "the largest phase)", marker_color="#9ecae1", hovertemplate=hover))
    fig.add_trace(go.Bar(x=names, y=[r["measured_mib"] for r in rows], name="measured (every tensor alive, at "
                         "the step's peak)", marker_color="#08519c", hovertemplate=hover,
                         text=[f"{r['ratio']:.2f}" for r in rows], textposition="outside"))
    fig.update_yaxes(title="peak tensor memory (MiB)")
    fig.update_xaxes(tickangle=-30)
    fig.update_layout(barmode="group", height=480, margin=dict(b=110),
                      title="The planner against the tensors training and evaluation allocate (CPU)",
                      legend=dict(orientation="h", y=1.02, yanchor="bottom", x=0))
    return fig


# --- does the recipe's path train? (the tiny world) -------------------------------------------------------------

VARIANT_NAMES = {"full": "full parameters", "lora": "LoRA", "4bit": "LoRA, 4-bit base",
                 "4bit-fp16": "LoRA, 4-bit base, fp16 compute"}
"""The training paths of chapter 8's precision table, in its order: chapter 6's full-parameter training, then each
step toward a T4's run."""
VARIANT_COLORS = {"full": "#264653", "lora": "#2a9df4", "4bit": "#e9c46a", "4bit-fp16": "#e76f51"}


def variant(run: dict) -> str:
    """Which of :data:`VARIANT_NAMES` a :func:`companion.experiments.load_results` record trained with.

    >>> variant({"lora": True, "load_in_4bit": True, "dtype": "float16"}), variant({"lora": False})
    ('4bit-fp16', 'full')
    """
    if not run.get("lora"):
        return "full"
    if not run.get("load_in_4bit"):
        return "lora"
    return "4bit-fp16" if run.get("dtype") == "float16" else "4bit"


def _variants(runs: list[dict], algo: str, task: str) -> dict[str, list[dict]]:
    """The runs of each training path, seeds sorted; full-parameter training (chapter 6's runs) only with the seeds
    the other paths were run with, which share its problem streams."""
    groups: dict[str, list[dict]] = {}
    for run in runs:
        if run["algo"] == algo and run["task"] == task and run["seed"] is not None:
            groups.setdefault(variant(run), []).append(run)
    seeds = {r["seed"] for name, group in groups.items() if name != "full" for r in group}
    if seeds and "full" in groups:
        groups["full"] = [r for r in groups["full"] if r["seed"] in seeds]
    return {v: sorted(groups[v], key=lambda r: r["seed"]) for v in VARIANT_NAMES if v in groups}


def precision_rows(runs: list[dict], *, algo: str = "grpo", task: str = "tinygsm") -> list[dict]:
    """One row per training path (:func:`variant`) of ``algo`` on ``task``: the final policies' pass@1 on the held-out
    problems (their ``companion eval``, which computes in float32), mean, standard deviation and each seed's; its
    difference from full-parameter training, its Welch 95% interval (``vs_full_interval``), whether that
    excludes 0 (``distinguishable``) and the verdict (``outcome``: :func:`companion.stats.compare`'s greater, less,
    equivalent within its margin, or cannot tell); the last in-training held-out evaluation, sampled and greedy,
    which ran in the run's own compute dtype (mean over seeds); and the mean seconds per training step."""
    from statistics import mean, stdev

    from companion.stats import compare

    groups = _variants(runs, algo, task)
    scores = {name: [r["summary"]["pass_at_k"][0]["estimate"] for r in group] for name, group in groups.items()}
    full = scores.get("full", [])
    rows = []
    for name, group in groups.items():
        values = scores[name]
        last = [[x for x in r["records"] if x.get("eval_accuracy_sampled") is not None][-1] for r in group]
        times = [x["step_time"] for r in group for x in r["records"] if x.get("step_time") is not None]
        row = {"variant": name, "label": VARIANT_NAMES[name], "seeds": len(group), "pass1": mean(values),
               "sd": stdev(values) if len(values) > 1 else float("nan"), "per_seed": values,
               "eval_step": last[0]["step"], "heldout_sampled": mean(x["eval_accuracy_sampled"] for x in last),
               "heldout_greedy": mean(x["eval_accuracy_greedy"] for x in last),
               "step_time": mean(times) if times else None}
        if name != "full" and min(len(values), len(full)) >= 2:
            verdict = compare(values, full)
            row.update(vs_full=verdict.difference.estimate, vs_full_interval=verdict.difference,
                       distinguishable=verdict.difference.excludes_zero, outcome=verdict.outcome)
        rows.append(row)
    return rows


def precision_figure(runs: list[dict], *, algo: str = "grpo", task: str = "tinygsm",
                     key: str = "eval_accuracy_sampled") -> go.Figure:
    """The in-training held-out accuracy (``key``) over training, per training path: mean line and min-max band of
    the seeds."""
    from companion.viz.base_model import _layout
    from companion.viz.compare import _band, heldout_curve

    fig = go.Figure()
    for name, group in _variants(runs, algo, task).items():
        curves = [heldout_curve(r, key) for r in group]
        _band(fig, curves[0][0], [c[1] for c in curves], VARIANT_COLORS[name], VARIANT_NAMES[name], markers=True)
    fig.update_xaxes(title="training step")
    fig.update_yaxes(title="held-out accuracy (sampled, T = 1)")
    return _layout(fig, "Word problems, GRPO: full parameters, LoRA, a 4-bit base, fp16 compute", 400)
