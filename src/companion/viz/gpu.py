"""Chapter 8's check of the memory planner against measurements: ``bench/bench_memory.py``'s report (the tensors
training steps and ``companion eval`` really allocate, counted on the CPU), as rows and as a figure."""

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
    "eval_batch_size": "{} at a time",
}
"""How a training config's change from the bench's first config reads in a label (``{}``: the new value; a
named field: that setting's)."""

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
