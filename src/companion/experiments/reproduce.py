"""``companion reproduce``: every committed experiment, regenerated from its saved configs, and what differs.

::

    companion reproduce --list                  # the committed runs, their cost, what is reproduced already
    companion reproduce --only compare          # one experiment (or run names: compare/tinygsm-grpo-seed0)
    companion reproduce                         # everything, two runs at a time, one torch thread each

It trains and evaluates every committed run (:mod:`companion.experiments.catalogue`) again, into
``runs/reproduce/<experiment>/<run>/``, and reports what differs from the committed results. ``tiny-base`` and
``recipe`` run their own commands last (``--only tiny-base`` or ``--only recipe`` picks one).

Decisions, and why:

* **Resumable at two levels.** A finished run (its ``eval/summary.json`` written) is never redone; an
  interrupted one continues from its last checkpoint (``companion train --resume``) and its finished evaluation
  problems (``companion eval`` keeps them). Ctrl-C or a kill loses at most the steps since the last checkpoint.
* **Subprocesses, one thread each.** Two runs side by side at one torch thread each use both cores of the
  2-core machine better than one run at two (decoding the tiny model is latency-bound).
* **What "differs" means.** Training is bit-exact only on the same CPU float path, so reproduce compares the
  held-out pass@1 of each run with the committed one against their bootstrap intervals, says whether the
  per-step metrics are identical (timings aside), and lists the configs that no longer load, by name.
* **Generated, then committed.** ``companion reproduce --init compare`` writes the configs the catalogue
  generates under ``data/experiments``, and ``--save`` copies the results of finished runs there. After that,
  reproduce reads only the committed configs.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from companion.experiments.catalogue import (DATA, GENERATED, OTHERS, RUNS, SWEEP, Run, committed_runs,
                                             generated_runs, policy_for, producer, relative_out, select)
from companion.runs import BAD_INPUT, RunError, jsonable, read_jsonl, write_jsonl_gz

def _companion() -> list[str]:
    return [sys.executable, "-m", "companion.cli"]


_LIVE: set = set()
"""The subprocesses running now, so that an interrupted reproduce stops them too instead of orphaning them."""


def _call(command: list[str], log) -> None:
    """Run ``command`` to the end (its output to ``log``); CalledProcessError if it fails."""
    process = subprocess.Popen(command, stdout=log or subprocess.DEVNULL, stderr=subprocess.STDOUT if log else None)
    _LIVE.add(process)
    try:
        code = process.wait()
    finally:
        _LIVE.discard(process)
    if code:
        raise subprocess.CalledProcessError(code, command)


def stop_all() -> None:
    """Terminate the runs in flight (each keeps its last checkpoint and its finished evaluation problems)."""
    for process in list(_LIVE):
        process.terminate()
    for process in list(_LIVE):
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()


def run_one(run: Run, runs: Path = RUNS, *, log=None, until_step: int | None = None) -> Path:
    """Train and evaluate ``run`` into ``runs/<experiment>/<name>``, resuming whatever an earlier attempt left.
    ``until_step``: train its first steps only (a later call without it goes on from there), and evaluate nothing."""
    out = run.out(runs)
    out.mkdir(parents=True, exist_ok=True)
    if run.train is None:  # evaluation only: the model the saved config names (a reproduced policy, or the committed)
        model = policy_for(run.eval["model"], runs, run.data)
        _call([*_companion(), "eval", *_flags(dict(run.eval, model=model, out=str(out / "eval"), overwrite=False))],
              log)
        return out
    if not (out / "policy").exists():
        until = [] if until_step is None else ["--until-step", str(until_step)]
        if (out / "checkpoint.pt").exists():
            _call([*_companion(), "train", "--resume", str(out), "--quiet", *until], log)
        else:  # --overwrite: what is there (if anything) died before its first checkpoint
            _call([*_companion(), "train", "--quiet", "--overwrite", *until, *_flags(dict(run.train, out=str(out)))],
                  log)
    if until_step is None:
        _call([*_companion(), "eval", *_flags(dict(run.eval, model=str(out / "policy"), out=str(out / "eval"),
                                                    overwrite=False))], log)
    return out


def _flags(options: dict) -> list[str]:
    flags = []
    for name, value in options.items():
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            flags.append(flag if value else "--no-" + name.replace("_", "-"))
        elif isinstance(value, (list, tuple)):
            flags += [flag, *map(str, value)]
        else:
            flags += [flag, str(value)]
    return flags



def cost_seconds(directory: Path) -> float | None:
    """Wall time a run took, from its records: training steps, in-training evaluation, the final evaluation."""
    records = read_jsonl(directory / "metrics.jsonl")
    summary = directory / "eval" / "summary.json"
    if not records and not summary.exists():
        return None
    seconds = sum((r.get("step_time") or 0.0) + (r.get("time_eval") or 0.0) for r in records)
    if summary.exists():  # an evaluation-only run costs its sampling alone
        seconds += json.loads(summary.read_text()).get("sampling_seconds", 0.0)
    return seconds


def progress_of(run: Run, runs: Path = RUNS) -> tuple[int, int, bool]:
    """(steps trained, evaluation problems scored, finished) of ``run``'s reproduction so far."""
    out = run.out(runs)
    steps = max((r["step"] for r in read_jsonl(out / "metrics.jsonl")), default=0)
    problems = len(read_jsonl(out / "eval" / "problems.jsonl"))
    return steps, problems, (out / "eval" / "summary.json").exists()



# --- what differs ----------------------------------------------------------------------------------------------


OUTCOMES = ("reward", "reward_std", "accuracy", "frac_zero_spread", "length", "length_correct", "length_wrong",
            "frac_truncated", "frac_weighted", "frac_wrong_up", "sampled_at", "eval_accuracy_greedy",
            "eval_accuracy_sampled", "eval_reward_sampled", "eval_length_greedy")
"""Record fields that count what was sampled (rewards, lengths, accuracies): they differ only when a sampled token
does; the others (loss, gradient norm, entropy, ...) also move with the float rounding of the machine."""


def records_difference(committed: list[dict], again: list[dict]) -> dict:
    """How two runs' records differ, on the fields the committed ones hold (a diagnostic added to the trainer later
    is not a difference; timings never are): the first step that differs (None: identical), whether every sampled
    outcome (:data:`OUTCOMES`) is the same, and the largest relative difference of any number and its field."""
    from companion.records import TIMING_METRICS

    keys = {k for r in committed for k in r} - set(TIMING_METRICS)
    strip = [[{k: v for k, v in r.items() if k in keys} for r in rs] for rs in (committed, again)]
    differs_at = next((a["step"] for a, b in zip(*strip) if a != b), None)
    if differs_at is None and len(strip[0]) != len(strip[1]):
        differs_at = min(len(strip[0]), len(strip[1]))
    largest, field = 0.0, None
    for a, b in zip(*strip):
        for key in keys:
            x, y = a.get(key), b.get(key)
            if isinstance(x, float) and isinstance(y, float) and x != y:
                relative = abs(x - y) / max(abs(x), abs(y))
                if relative > largest:
                    largest, field = relative, key
    outcomes = all(a.get(k) == b.get(k) for a, b in zip(*strip) for k in OUTCOMES) and len(strip[0]) == len(strip[1])
    return {"identical": differs_at is None, "differs_at_step": differs_at, "outcomes_identical": outcomes,
            "largest_relative_difference": largest, "largest_in": field}


def compare(run: Run, runs: Path = RUNS) -> dict:
    """The reproduction of ``run`` against its committed results: pass@1 of both and whether training matched."""
    def first(directory: Path) -> dict:
        return json.loads((directory / "eval" / "summary.json").read_text())["pass_at_k"][0]

    committed, again = first(run.committed), first(run.out(runs))
    training = records_difference(*[read_jsonl(d / "metrics.jsonl") for d in (run.committed, run.out(runs))])
    inside = committed["low"] <= again["estimate"] <= committed["high"]
    return {"run": run.key, "committed": committed["estimate"], "committed_low": committed["low"],
            "committed_high": committed["high"], "reproduced": again["estimate"], "within_interval": inside,
            "evaluation_only": run.train is None,
            "training_identical": training["identical"], "training_differs_at_step": training["differs_at_step"]}


def describe_steps(run: Run, runs: Path, steps: int) -> str:
    """One line of ``companion reproduce --steps N``'s report: the first ``steps`` steps against the committed."""
    records = [[r for r in read_jsonl(d / "metrics.jsonl") if r["step"] <= steps] for d in (run.committed, run.out(runs))]
    d = records_difference(*records)
    if d["identical"]:
        return f"{run.key}: steps 0-{steps} identical to the committed records"
    detail = (f"every sampled outcome identical; the largest relative difference of any number is "
              f"{d['largest_relative_difference']:.1e} ({d['largest_in']}): float rounding of this machine"
              if d["outcomes_identical"] else "the sampled outcomes differ")
    return f"{run.key}: steps 0-{steps} differ from step {d['differs_at_step']}: {detail}"


def describe(difference: dict) -> str:
    """One line of the report that ends ``companion reproduce``."""
    d = difference
    training = ("no training (evaluation only)" if d.get("evaluation_only") else
                "training identical step for step" if d["training_identical"] else
                f"training differs from step {d['training_differs_at_step']}")
    verdict = "within" if d["within_interval"] else "OUTSIDE"
    return (f"{d['run']}: pass@1 {d['reproduced']:.3f}, committed {d['committed']:.3f} "
            f"[{d['committed_low']:.3f}, {d['committed_high']:.3f}]: {verdict} the committed interval; {training}")


# --- the committed results that are not run directories: the base model and the recipe sweep ----------------------


SWEEP_SCRIPT = Path(__file__).resolve().parents[3] / "scripts" / "sweep_recipe.py"


def other_experiments() -> dict[str, dict]:
    """``tiny-base`` (``companion pretrain``) and ``recipe`` (``scripts/sweep_recipe.py``): name -> ``cost`` (committed
    wall seconds), ``command`` (what regenerates it into ``OUT``, a placeholder), ``note``."""
    from companion.tiny import tiny_dir

    base = json.loads((tiny_dir() / "metrics.json").read_text())
    rows = read_jsonl(SWEEP)
    return {
        "tiny-base": {"cost": base["pretrain"]["seconds"] + sum(e.get("seconds", 0.0) for e in base["eval"].values()),
                      "command": [sys.executable, "-m", "companion.cli", "pretrain", "--out", "OUT"],
                      "note": "two threads, not resumable: an interrupted pretraining starts again"},
        "recipe": {"cost": sum(r["seconds"] for r in rows),
                   "command": [sys.executable, str(SWEEP_SCRIPT), "--results", "OUT/recipe.jsonl", "--runs", "OUT/runs",
                               "--only", *[r["name"] for r in rows]],
                   "note": f"{len(rows)} GRPO runs, two at a time"},
    }


def _file_sha256(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def reproduce_other(name: str, out: Path, log=None) -> list[str]:
    """Regenerate ``tiny-base`` or ``recipe`` into ``out/<name>`` and return what differs from the committed result,
    one line each (an empty list: nothing)."""
    from companion.tiny import tiny_dir

    target = out / name
    if name == "tiny-base":
        from companion.pretrain import PretrainConfig

        committed = json.loads((tiny_dir() / "pretrain_config.json").read_text())
        ignore = {"out", "overwrite"}
        differs = [k for k in committed if k not in ignore and committed[k] != jsonable(
            dataclasses.asdict(PretrainConfig())).get(k)]
        if differs:
            return [f"tiny-base: the committed pretrain_config.json differs from the defaults in {', '.join(differs)}; "
                    "rebuild it by hand with those options"]
        if not (target / "metrics.json").exists():
            _call([*_command(name, target), "--overwrite"], log)
        lines = []
        same = _file_sha256(target / "model.safetensors") == _file_sha256(tiny_dir() / "model.safetensors")
        lines.append("tiny-base: weights " + ("identical (same sha256)" if same else "differ (another sha256)"))
        again = json.loads((target / "metrics.json").read_text())["eval"]
        for task, summary in json.loads((tiny_dir() / "metrics.json").read_text())["eval"].items():
            a, b = summary["pass_at_k"][0], again[task]["pass_at_k"][0]
            lines.append(f"tiny-base {task}: pass@1 {b['estimate']:.3f}, committed {a['estimate']:.3f} "
                         f"[{a['low']:.3f}, {a['high']:.3f}]")
        return lines
    if not SWEEP_SCRIPT.exists():
        return ["recipe: scripts/sweep_recipe.py is only in a source checkout; clone the repository to rerun it"]
    _call(_command(name, target), log)
    fresh = {r["name"]: r for r in read_jsonl(target / "recipe.jsonl")}
    lines = []
    for row in read_jsonl(SWEEP):
        again = fresh.get(row["name"])
        if again is None:
            lines.append(f"recipe {row['name']}: not reproduced")
            continue
        inside = row["pass@1_low"] <= again["pass@1"] <= row["pass@1_high"]
        lines.append(f"recipe {row['name']}: pass@1 {again['pass@1']:.3f}, committed {row['pass@1']:.3f} "
                     f"[{row['pass@1_low']:.3f}, {row['pass@1_high']:.3f}]: "
                     f"{'within' if inside else 'OUTSIDE'} the committed interval")
    return lines


def _command(name: str, target: Path) -> list[str]:
    target.mkdir(parents=True, exist_ok=True)
    return [str(target) + part[3:] if part.startswith("OUT") else part for part in other_experiments()[name]["command"]]



# --- writing to data/ ------------------------------------------------------------------------------------------


def init(experiment: str, data: Path = DATA) -> list[Run]:
    """Write the configs of a generated experiment under ``data`` (runs already there are left alone)."""
    from companion.config import save_config
    from companion.evaluate import EvalConfig
    from companion.train_config import TrainConfig

    if experiment not in GENERATED:
        raise RunError(f"--init knows {', '.join(GENERATED)}, not {experiment!r}")
    written = []
    for run in generated_runs(experiment):
        directory = data / experiment / run.name
        if (directory / "config.json").exists():
            continue
        if (directory / "eval" / "config.json").exists():
            continue
        (directory / "eval").mkdir(parents=True, exist_ok=True)
        out = relative_out(run)
        if run.train is None:
            save_config(EvalConfig(**dict(run.eval, out=f"{out}/eval")), directory / "eval" / "config.json")
        else:
            save_config(TrainConfig(**dict(run.train, out=out)), directory / "config.json")
            save_config(EvalConfig(**dict(run.eval, model=f"{out}/policy", out=f"{out}/eval")),
                        directory / "eval" / "config.json")
        written.append(run)
    return written


def save(run: Run, runs: Path = RUNS) -> Path:
    """Copy the finished reproduction of ``run`` into ``data`` (replacing what is there, in one rename).

    Paths inside the configs become the relative ``runs/reproduce/...`` ones; the policy, for runs that keep it,
    is stored in half precision (:func:`companion.models.load_policy` loads it back in float32 on a CPU), and the
    JSONL files compressed (``metrics.jsonl.gz``, ``eval/problems.jsonl.gz``: :func:`companion.runs.read_jsonl`
    reads either form), which keeps chapter 7's n = 256 rows within data/'s budget.
    """
    source, target = run.out(runs), run.committed
    if not (source / "eval" / "summary.json").exists():
        raise RunError(f"{run.key} is not finished in {source}: run `companion reproduce --only {run.key}` first")
    staging = target.with_name(target.name + ".saving")
    shutil.rmtree(staging, ignore_errors=True)
    (staging / "eval").mkdir(parents=True)
    out = relative_out(run)
    model = f"{out}/policy" if run.train is not None else run.eval["model"]
    if run.train is not None:
        train = json.loads((source / "config.json").read_text())
        (staging / "config.json").write_text(json.dumps(dict(train, out=out), indent=2, sort_keys=True) + "\n")
        write_jsonl_gz(source / "metrics.jsonl", staging / "metrics.jsonl.gz")
        from companion.train_setup import MODEL_SOURCE

        if (source / MODEL_SOURCE).exists():  # a model known by name: the GGUF and the weights it trained from
            shutil.copy2(source / MODEL_SOURCE, staging / MODEL_SOURCE)
    evaluation = json.loads((source / "eval" / "config.json").read_text())
    (staging / "eval" / "config.json").write_text(json.dumps(
        dict(evaluation, model=model, out=f"{out}/eval"), indent=2, sort_keys=True) + "\n")
    shutil.copy2(source / "eval" / "model.json", staging / "eval" / "model.json")
    write_jsonl_gz(source / "eval" / "problems.jsonl", staging / "eval" / "problems.jsonl.gz")
    summary = json.loads((source / "eval" / "summary.json").read_text())
    (staging / "eval" / "summary.json").write_text(json.dumps(dict(summary, model=model), indent=2) + "\n")
    if run.keep_policy:
        from companion.models import store_half_precision

        store_half_precision(source / "policy", staging / "policy")
    if target.exists():
        shutil.rmtree(target)
    staging.rename(target)
    return target


# --- command line ----------------------------------------------------------------------------------------------


def _status(run: Run, runs: Path) -> str:
    steps, problems, finished = progress_of(run, runs)
    if finished:
        return "reproduced"
    if steps or problems:
        return f"step {steps}/{run.steps}" + (f", eval {problems}/{run.eval['problems']}" if problems else "")
    return "not started"


def _list(runs: list[Run], out: Path) -> None:
    total, width = 0.0, max([40, *(len(run.key) for run in runs)])
    print(f"{'run':{width}s} {'cost':>8s} {'committed pass@1':>17s}  reproduction in {out}")
    for run in runs:
        seconds = cost_seconds(run.committed)
        total += seconds or 0.0
        summary = run.committed / "eval" / "summary.json"
        score = (f"{json.loads(summary.read_text())['pass_at_k'][0]['estimate']:.3f}" if summary.exists()
                 else "configs only")
        cost = f"{seconds / 60:.1f} min" if seconds else "?"
        print(f"{run.key:{width}s} {cost:>8s} {score:>17s}  {_status(run, out)}")
    print(f"{len(runs)} runs, {total / 60:.0f} min of committed wall time at one thread each "
          "(two at a time: about half that)")


def _list_others(names: list[str], out: Path) -> None:
    for name, info in other_experiments().items():
        if name not in names:
            continue
        done = (out / name / ("metrics.json" if name == "tiny-base" else "recipe.jsonl")).exists()
        print(f"{name:40s} {info['cost'] / 60:4.0f} min {'':>17s}  {'reproduced' if done else 'not started'} "
              f"({info['note']})")


def _dependencies(todo: list[Run], out: Path) -> dict[str, str]:
    """Evaluation-only run -> the run of ``todo`` whose policy it evaluates (so it starts after that one ends).

    A run whose policy is neither reproduced under ``out``, nor committed, nor made by a run of ``todo`` is refused
    before anything starts, with the run to add.
    """
    keys, waits, missing = {r.key for r in todo}, {}, []
    for run in todo:
        if run.train is not None:
            continue
        maker = producer(run.eval["model"])
        if maker in keys:
            waits[run.key] = maker
        elif maker is not None and not Path(policy_for(run.eval["model"], out, run.data)).exists():
            missing.append(f"{run.key} evaluates {run.eval['model']}, which {maker} writes: reproduce it too "
                           f"(--only {maker} {run.key})")
    if missing:
        raise RunError("; ".join(missing))
    return waits


def finished(run: Run, out: Path, until_step: int | None = None) -> bool:
    """Whether ``run``'s reproduction under ``out`` is done: evaluated, or with ``until_step`` trained that far."""
    steps, _, evaluated = progress_of(run, out)
    return evaluated if until_step is None else steps >= min(until_step, run.steps)


def _show_progress(futures: list, todo: list[Run], out: Path, until_step: int | None) -> None:
    """A progress bar over the runs of ``todo`` until their ``futures`` are done. Work is counted as training steps
    plus evaluated problems, so that evaluation-only runs move the bar too."""
    from tqdm.auto import tqdm

    def work_of(run: Run) -> int:
        return run.steps + run.eval["problems"] if until_step is None else min(run.steps, until_step)

    with tqdm(total=sum(map(work_of, todo)), unit=" steps+problems", desc=f"reproduce {len(todo)} runs") as bar:
        while not all(f.done() for f in futures):
            time.sleep(2)
            states = [progress_of(r, out) for r in todo]
            bar.n = sum(min(steps + problems, work_of(r)) for r, (steps, problems, _) in zip(todo, states))
            bar.set_postfix(finished=f"{sum(finished(r, out, until_step) for r in todo)}/{len(todo)}")
            bar.refresh()


def _reproduce(runs: list[Run], out: Path, workers: int, until_step: int | None = None, after=None) -> list[str]:
    """Run every unfinished run of ``runs``, ``workers`` at a time, with a progress bar; returns the failures.
    ``until_step``: only the first steps of the runs that train (:func:`run_one`); ``after(run)``: called as each
    run ends well."""
    todo = [r for r in runs if not finished(r, out, until_step)]
    failed: list[str] = []
    if not todo:
        return failed
    waits = _dependencies(todo, out)
    todo.sort(key=lambda r: r.key in waits)  # stable: the runs that wait on another go last
    done = {r.key: threading.Event() for r in todo}
    stopping = threading.Event()  # set on Ctrl-C: a run still waiting for another does not start
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)

    def work(run: Run) -> None:
        try:
            if run.key in waits:
                done[waits[run.key]].wait()
                if stopping.is_set():
                    return
                if any(line.startswith(waits[run.key] + ":") for line in failed):
                    failed.append(f"{run.key}: not run, the policy it evaluates comes from {waits[run.key]}, "
                                  "which failed")
                    return
            with (logs / f"{run.experiment}-{run.name}.log").open("a") as log:
                try:
                    run_one(run, out, log=log, until_step=until_step)
                    if after is not None:
                        after(run)
                except subprocess.CalledProcessError as error:
                    failed.append(f"{run.key}: exit code {error.returncode}; see {log.name} in {logs}")
        finally:
            done[run.key].set()

    pool = ThreadPoolExecutor(workers)
    futures = [pool.submit(work, run) for run in todo]
    try:
        _show_progress(futures, todo, out, until_step)
    except KeyboardInterrupt:
        stopping.set()
        pool.shutdown(wait=False, cancel_futures=True)
        stop_all()
        for event in done.values():  # release the runs that wait, so that their threads end
            event.set()
        raise
    pool.shutdown()
    return failed


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="companion reproduce", description=__doc__.split("\n\n")[0],
                                     epilog="Runs go to --out; data/ changes only with --init or --save.")
    parser.add_argument("--list", action="store_true", help="list the committed runs, their cost and status")
    parser.add_argument("--only", nargs="+", metavar="NAME",
                        help="experiments (e.g. compare) or single runs (e.g. compare/tinygsm-grpo-seed0)")
    parser.add_argument("--workers", type=int, default=2, help="runs at once, one torch thread each (default: 2)")
    parser.add_argument("--out", default=str(RUNS), help=f"where reproductions go (default: {RUNS})")
    parser.add_argument("--data", default=str(DATA), help=f"where committed experiments live (default: {DATA})")
    parser.add_argument("--init", metavar="EXPERIMENT", help=f"write the configs of a generated experiment "
                                                             f"({', '.join(GENERATED)}) under data/experiments")
    parser.add_argument("--save", action="store_true", help="copy the finished reproductions into data/experiments, "
                                                            "replacing the committed results")
    parser.add_argument("--steps", type=int, metavar="N", help="train only the first N steps of each run (no "
                        "evaluation) and compare their records with the committed ones: does this code, on this "
                        "machine, still make the committed runs? (a later run without --steps goes on from there)")
    return parser


def chosen(only: list[str] | None, data: Path) -> tuple[list[Run], list[str], list[str]]:
    """The committed runs and the other results (:data:`OTHERS`) that ``only`` picks (all without it), and one
    line per committed run whose configs do not load."""
    runs, broken = committed_runs(data)
    selected = select(runs, only, OTHERS)
    # tiny-base and recipe are the shipped data's; another --data holds only run directories
    others = [name for name in OTHERS if (not only or name in only) and data.resolve() == DATA.resolve()]
    return (selected if not only or any(name not in OTHERS for name in only) else []), others, broken


def difference_line(run: Run, out: Path) -> str:
    """What differs between ``run``'s finished reproduction and its committed results, in one line."""
    if not (run.committed / "eval" / "summary.json").exists():
        return f"{run.key}: nothing committed to compare with (configs only)"
    return describe(compare(run, out))


def compare_and_save(run: Run, out: Path) -> str:
    """``--save``, as soon as a run finishes: what differs, then its copy into data/ (so that a later failure or a
    kill loses no finished run)."""
    line = difference_line(run, out)
    return f"{line}\n  saved to {save(run, out)}"


def report(runs: list[Run], out: Path, saved: dict[str, str]) -> None:
    """What differs from the committed results, one line per finished run (``saved``: the lines of the runs already
    saved into data/, by key)."""
    print("what differs from the committed results:")
    for run in runs:
        if run.key in saved:
            print(saved[run.key])
        elif progress_of(run, out)[2]:
            print(difference_line(run, out))


def regenerate_others(names: list[str], out: Path) -> list[str]:
    """Regenerate ``tiny-base`` and ``recipe`` (after the runs: pretraining takes both cores); returns the failures."""
    failed = []
    for name in names:
        try:
            for line in reproduce_other(name, out):
                print(line)
        except subprocess.CalledProcessError as error:
            failed.append(f"{name}: exit code {error.returncode}")
            print(f"companion reproduce: failed: {name}: exit code {error.returncode}", file=sys.stderr)
    return failed


def check_arguments(args: argparse.Namespace) -> None:
    """Refuse, with what to change, options that cannot work together or paths that cannot be used."""
    if args.workers < 1 or (args.steps is not None and args.steps < 1):
        raise RunError(f"--workers and --steps must be at least 1, got {args.workers} and {args.steps}")
    if args.steps is not None and args.save:
        raise RunError("--save copies finished runs; --steps trains the first steps only: pass one of them")
    if not Path(args.data).is_dir() and not args.init:
        raise RunError(f"--data {args.data} is not a directory of committed experiments (the default is {DATA})")
    if Path(args.out).exists() and not Path(args.out).is_dir():
        raise RunError(f"--out {args.out} is a file; reproductions go into a directory: choose another --out")


def run_selected(runs: list[Run], out: Path, args: argparse.Namespace, saved: dict[str, str]) -> list[str]:
    """Reproduce ``runs`` (with ``--steps``, the first steps of those that train; with ``--save``, each saved as it
    ends, its line in ``saved``); returns the failures."""
    import signal

    signal.signal(signal.SIGTERM, signal.default_int_handler)  # a kill stops the runs as Ctrl-C does
    after = (lambda run: saved.__setitem__(run.key, compare_and_save(run, out))) if args.save else None
    return _reproduce(runs, out, args.workers, args.steps, after)


def conclude(runs: list[Run], others: list[str], broken: list[str], failed: list[str], out: Path,
             args: argparse.Namespace, saved: dict[str, str]) -> int:
    """Report what differs (and save, or regenerate the other results); the exit code."""
    for line in failed:
        print(f"companion reproduce: failed: {line}", file=sys.stderr)
    if args.steps is not None:
        for run in (r for r in runs if finished(r, out, args.steps)):
            print(describe_steps(run, out, args.steps))
        return 1 if failed else 0
    if args.save:  # runs that an earlier invocation finished without --save are copied too, not only compared
        for run in runs:
            if run.key not in saved and progress_of(run, out)[2]:
                saved[run.key] = compare_and_save(run, out)
    report(runs, out, saved)
    failed = failed + regenerate_others(others, out)
    for line in broken:
        print(f"{line}: not reproduced")
    return 1 if failed or broken else 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    out, data, runs, saved = Path(args.out), Path(args.data), [], {}
    try:
        check_arguments(args)
        if args.init:
            print(f"wrote the configs of {len(init(args.init, data))} runs under {data / args.init}")
            return 0
        runs, others, broken = chosen(args.only, data)
        runs = runs if args.steps is None else [r for r in runs if r.train is not None]  # eval-only: no steps
        for line in broken:
            print(f"companion reproduce: {line}", file=sys.stderr)
        if args.list:
            if runs:
                _list(runs, out)
            _list_others(others, out)
            return 0
        failed = run_selected(runs, out, args, saved)
    except RunError as error:
        print(f"companion reproduce: error: {error}", file=sys.stderr)
        return BAD_INPUT
    except KeyboardInterrupt:
        done = sum(finished(r, out, args.steps) for r in runs)
        print(f"\ninterrupted: {done} of {len(runs)} runs finished and kept, the others keep their last "
              "checkpoint; run the same command to go on", file=sys.stderr)
        return 130
    return conclude(runs, others, broken, failed, out, args, saved)
