"""The CPU world's RL recipe sweep: post-train the tiny base with one config each, score it on held-out problems.

Each named config of :data:`GRID` is one ``companion train`` run from the shipped base, then one ``companion eval``
of its final policy on the 200 held-out problems the base was measured on (``data/tiny-base/metrics.json``:
problem seed 2025) with 16 samples each at temperature 1. Runs go two at a time, one torch thread each (both
cores of the 2-core machine); an interrupted sweep resumes where it stopped (``companion train --resume``, and
``companion eval`` keeps its finished problems). One row per finished config goes to ``data/sweeps/recipe.jsonl``:
its overrides, the held-out pass@1 with its bootstrap interval beside the base's, lengths of right and wrong
answers, the in-training curve (greedy and sampled accuracy on 100 other held-out problems every 25 steps) and the
wall time::

    .venv/bin/python scripts/sweep_recipe.py --list
    .venv/bin/python scripts/sweep_recipe.py                     # every config without a row yet
    .venv/bin/python scripts/sweep_recipe.py --only grpo-countdown-lr1e-4 grpo-tinygsm-lr1e-4
    .venv/bin/python scripts/sweep_recipe.py --rerun              # regenerate every committed row

The ``seconds`` of a row are wall time (training plus the final evaluation's sampling) and grow when other
work shares the cores.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

from companion.runs import read_jsonl, write_atomically

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "data" / "sweeps" / "recipe.jsonl"
RUNS = ROOT / "runs" / "sweep"

BASE = dict(algo="grpo", steps=100, prompts_per_step=16, num_generations=8, learning_rate=1e-4, eval_every=25,
            eval_problems=100, eval_num_generations=4, save_every=25, num_threads=1)
"""What every config shares unless it says otherwise (the issue's best measured run: lr 1e-4, 16 x 8, 100 steps)."""

EVAL = dict(problems=200, problem_seed=2025, num_generations=16, temperature=1.0, top_p=1.0, num_threads=1)
"""The final held-out evaluation: the base's 200 problems (companion.pretrain.EVAL_PROBLEM_SEED), n = 16, T = 1."""


def _grid() -> dict[str, dict]:
    grid = {}
    for task in ("countdown", "tinygsm"):
        for lr in ("3e-5", "1e-4", "3e-4", "5e-4"):
            grid[f"grpo-{task}-lr{lr}"] = dict(task=task, learning_rate=float(lr))
        grid[f"grpo-{task}-lr1e-4-p8"] = dict(task=task, prompts_per_step=8)
        grid[f"grpo-{task}-lr2e-4-p8"] = dict(task=task, prompts_per_step=8, learning_rate=2e-4)
        grid[f"grpo-{task}-lr3e-4-warmup20"] = dict(task=task, learning_rate=3e-4, warmup_steps=20)
        grid[f"grpo-{task}-lora-lr1e-3"] = dict(task=task, lora=True, learning_rate=1e-3)
        grid[f"grpo-{task}-lr1e-4-t0.7"] = dict(task=task, temperature=0.7)
        grid[f"grpo-{task}-lr1e-4-beta0.04"] = dict(task=task, beta=0.04)
        for seed in (1, 2):  # the seed spread of the best config so far
            grid[f"grpo-{task}-lr3e-4-seed{seed}"] = dict(task=task, learning_rate=3e-4, seed=seed)
    return grid


GRID = _grid()


def _flags(options: dict) -> list[str]:
    flags = []
    for name, value in options.items():
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            flags += [flag] if value else []
        else:
            flags += [flag, str(value)]
    return flags


def _run(name: str, rerun: bool = False, runs: Path = RUNS) -> dict:
    """Train and evaluate one config (resuming what an earlier attempt left, unless ``rerun``); returns its row."""
    overrides = GRID[name]
    config = {**BASE, **overrides}
    out = runs / name
    companion = [sys.executable, "-m", "companion.cli"]
    start = time.perf_counter()
    if (out / "policy").exists() and not rerun:
        pass  # trained already
    elif (out / "checkpoint.pt").exists() and not rerun:
        subprocess.run([*companion, "train", "--resume", str(out), "--quiet"], check=True)
    else:
        subprocess.run([*companion, "train", "--out", str(out), "--overwrite", "--quiet", *_flags(config)], check=True)
    train_seconds = time.perf_counter() - start
    subprocess.run([*companion, "eval", "--model", str(out / "policy"), "--task", config["task"],
                    "--out", str(out / "eval"), *_flags(EVAL), *(["--overwrite"] if rerun else [])], check=True,
                   stdout=subprocess.DEVNULL)
    summary = json.loads((out / "eval" / "summary.json").read_text())
    records = read_jsonl(out / "metrics.jsonl")
    curve = [{k: r[k] for k in ("step", "eval_accuracy_greedy", "eval_accuracy_sampled", "eval_length_greedy")}
             for r in records if "eval_accuracy_greedy" in r]
    base = json.loads((ROOT / "data" / "tiny-base" / "metrics.json").read_text())["eval"][config["task"]]
    first = summary["pass_at_k"][0]
    return {
        "name": name, "overrides": overrides, "config": config, "eval": EVAL,
        "pass@1": first["estimate"], "pass@1_low": first["low"], "pass@1_high": first["high"],
        "base_pass@1": base["pass_at_k"][0]["estimate"], "ratio_to_base": first["estimate"] / base["pass_at_k"][0]["estimate"],
        "coverage@16": summary["coverage"], "truncated_fraction": summary["truncated_fraction"],
        "length_correct": summary["length_correct"].get("mean"), "length_wrong": summary["length_wrong"].get("mean"),
        "curve": curve, "train_entropy_last": records[-1]["entropy"], "train_length_last": records[-1]["length"],
        "seconds": round(train_seconds + summary["sampling_seconds"], 1),
    }


def _save_row(row: dict, results: Path = RESULTS) -> None:
    """Add ``row`` to the results, replacing an older row of the same config (rewritten whole, atomically)."""
    rows = [r for r in read_jsonl(results) if r["name"] != row["name"]] if results.exists() else []
    write_atomically(results, "".join(json.dumps(r) + "\n" for r in rows + [row]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", metavar="NAME", help="these configs only")
    parser.add_argument("--list", action="store_true", help="list the configs and whether each has a row")
    parser.add_argument("--workers", type=int, default=2, help="runs at once (one torch thread each)")
    parser.add_argument("--rerun", action="store_true", help="run the configs again from scratch, even those with a "
                                                             "row, and replace their rows")
    parser.add_argument("--results", type=Path, default=RESULTS, help=f"the rows' file (default: {RESULTS}; "
                                                                      "`companion reproduce` writes elsewhere)")
    parser.add_argument("--runs", type=Path, default=RUNS, help=f"where the runs go (default: {RUNS})")
    args = parser.parse_args()
    results = args.results
    done = {}
    if results.exists():
        done = {row["name"]: row for row in read_jsonl(results)}
    unknown = sorted(set(args.only or ()) - set(GRID))
    if unknown:
        parser.error(f"unknown config {', '.join(unknown)}; known: {', '.join(GRID)}")
    if args.list:
        for name, overrides in GRID.items():
            row = done.get(name)
            status = f"pass@1 {row['pass@1']:.3f} ({row['ratio_to_base']:.2f}x base)" if row else "not run"
            print(f"{name:36s} {json.dumps(overrides):60s} {status}")
        return 0
    todo = [name for name in (args.only or GRID) if args.rerun or name not in done]
    print(f"{len(todo)} configs to run, {args.workers} at a time: {', '.join(todo)}", flush=True)
    results.parent.mkdir(parents=True, exist_ok=True)
    failed = []
    with ThreadPoolExecutor(args.workers) as pool:
        futures = {pool.submit(_run, name, args.rerun, args.runs): name for name in todo}
        for future in as_completed(futures):
            try:
                row = future.result()
            except subprocess.CalledProcessError as error:  # its output is above; the other runs go on
                failed.append(futures[future])
                print(f"{futures[future]}: failed ({error}); rerun it with --only {futures[future]}", flush=True)
                continue
            _save_row(row, results)
            print(f"{row['name']}: pass@1 {row['pass@1']:.3f} [{row['pass@1_low']:.3f}, {row['pass@1_high']:.3f}] "
                  f"vs base {row['base_pass@1']:.3f}; {row['seconds'] / 60:.1f} min", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
