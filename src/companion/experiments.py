"""Committed experiments and ``companion reproduce``, the one command that regenerates them.

An *experiment* is a set of runs committed under ``data/experiments/<experiment>/<run>/``. Each run directory is
what ``companion train`` writes (``config.json``, ``metrics.jsonl``, and for the runs the book evaluates again,
``policy/`` in half precision) plus ``eval/``, the ``companion eval`` of its final policy (``config.json``,
``problems.jsonl``, ``summary.json``). The saved configs are the source of truth: ``companion reproduce`` trains
and evaluates every committed run again from them, into ``runs/reproduce/<experiment>/<run>/``, and reports what
differs from the committed results::

    companion reproduce --list                  # the committed runs, their cost, what is reproduced already
    companion reproduce --only compare          # one experiment (or run names: compare/tinygsm-grpo-seed0)
    companion reproduce                         # everything, two runs at a time, one torch thread each

Two committed results are not run directories, and reproduce runs their own commands last: ``tiny-base`` (the
shipped base model, ``companion pretrain``: 25 minutes on both cores, compared by the weights' sha256) and
``recipe`` (the learning-rate sweep of ``data/sweeps/recipe.jsonl``, ``scripts/sweep_recipe.py``, in a source
checkout). ``--only tiny-base`` or ``--only recipe`` picks one.

The book reads committed results only; it never trains during ``make book``.

Decisions, and why:

* **Resumable at two levels.** A finished run (its ``eval/summary.json`` written) is never redone; an
  interrupted one continues from its last checkpoint (``companion train --resume``) and its finished evaluation
  problems (``companion eval`` keeps them). Ctrl-C or a kill loses at most the steps since the last checkpoint.
* **Subprocesses, one thread each.** Two runs side by side at one torch thread each use both cores of the
  2-core machine better than one run at two (decoding the tiny model is latency-bound).
* **What "differs" means.** Training is bit-exact only on the same CPU float path, so reproduce compares the
  held-out pass@1 of each run with the committed one against their bootstrap intervals, says whether the
  per-step metrics are identical (timings aside), and lists the configs that no longer load, by name.
* **The comparison is generated, then committed.** :data:`COMPARISON` and :func:`comparison_configs` define the
  runs of chapter 6; ``companion reproduce --init compare`` writes their configs under ``data/experiments``, and
  ``--save`` copies the results of finished runs there. After that, reproduce reads only the committed configs.
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
from dataclasses import dataclass
from pathlib import Path

from companion.runs import BAD_INPUT, RunError, jsonable, read_jsonl, write_jsonl_gz
from companion.shipped import data_dir

DATA = data_dir() / "experiments"
RUNS = Path("runs") / "reproduce"
"""Where reproductions go, relative to the working directory (the committed configs name it as their ``out``)."""
SWEEP = data_dir() / "sweeps" / "recipe.jsonl"
"""The rows of the recipe sweep (``scripts/sweep_recipe.py``) that chose :data:`COMPARISON`'s learning rate."""

ALGOS = ("grpo", "dr_grpo", "fisft_plus", "fisft_pm")
TASKS = ("countdown", "tinygsm")
SEEDS = (0, 1, 2)

COMPARISON = dict(steps=100, prompts_per_step=16, num_generations=8, learning_rate=3e-4, eval_every=25,
                  eval_problems=100, eval_num_generations=4, save_every=25, num_threads=1)
"""The CPU-world recipe every algorithm of chapter 6 shares (data/sweeps/recipe.jsonl: GRPO's best learning rate
at 16 prompts x 8 completions, 100 steps); each run differs from the others only in algo, task and seed."""

FINAL_EVAL = dict(problems=200, problem_seed=2025, num_generations=16, temperature=1.0, top_p=1.0, num_threads=1)
"""The held-out evaluation of each final policy: the base model's 200 problems (its metrics.json), n = 16, T = 1."""

OTHERS = ("tiny-base", "recipe")
"""Committed results that are not run directories (:func:`other_experiments`): reproduce runs them last."""

POLICY_SEEDS = {"compare": (0,), "distill": (0,)}
"""Per experiment, the seeds whose trained policies are committed (in half precision): chapter 7 evaluates the
comparison's again. The stability map keeps none (its runs are read for their training records only)."""


def comparison_configs() -> dict[str, tuple[dict, dict]]:
    """Run name -> (TrainConfig fields, EvalConfig fields) of chapter 6's comparison, 4 algos x 2 tasks x 3 seeds,
    and per task the base model itself on the same problems (``<task>-base``: no training, ``None`` for its config).

    For one seed, every algorithm sees the same problems in the same order (the problem stream is a function of the
    seed only) and starts from the same weights.
    """
    runs = {f"{task}-base": (None, dict(FINAL_EVAL, task=task, model="tiny")) for task in TASKS}
    for seed in SEEDS:
        for task in TASKS:
            for algo in ALGOS:
                train = dict(COMPARISON, algo=algo, task=task, seed=seed)
                runs[f"{task}-{algo}-seed{seed}"] = (train, dict(FINAL_EVAL, task=task))
    return runs


STABILITY_RATES = (3e-4, 5e-4, 1e-3)
STABILITY_SEEDS = {5e-4: SEEDS}
"""Seeds per learning rate of the stability map (others: seed 0 only). 5e-4 is where GRPO's lengths ran away in the
sweep and in the map's first seed, so it gets all three."""
STABILITY_VARIANTS = {"grpo": ("grpo", ""), "dr_grpo": ("dr_grpo", ""), "fisft_plus": ("fisft_plus", ""),
                      "fisft_pm": ("fisft_pm", ""), "fisft_pm-constant": ("fisft_pm", "constant")}
"""The stability map's rows: each algorithm with its own length normaliser, and F-ISFT± once more with the
``constant`` one, to ask whether negatives under ``sequence`` lengthen answers sooner than without them."""


def stability_configs() -> dict[str, tuple[dict, dict]]:
    """Run name -> configs of the stability map: learning rate x algorithm on the word problems, seed 0, 50 steps.

    The recipe of the comparison otherwise; no in-training evaluation, and a cheaper final one (100 of the 200
    problems, n = 4). At the comparison's own learning rate, a variant the comparison already trains is left out:
    its row is that run's first 50 steps (the same config but for ``steps`` and the evaluation during training).
    """
    runs = {}
    for lr in STABILITY_RATES:
        for variant, (algo, normalizer) in STABILITY_VARIANTS.items():
            if lr == COMPARISON["learning_rate"] and not normalizer:
                continue
            for seed in STABILITY_SEEDS.get(lr, (0,)):
                train = dict(COMPARISON, algo=algo, normalizer=normalizer, task="tinygsm", seed=seed, steps=50,
                             learning_rate=lr, eval_every=0)
                name = f"{variant}-lr{lr:.0e}-seed{seed}".replace("e-0", "e-")
                runs[name] = (train, dict(FINAL_EVAL, task="tinygsm", problems=100, num_generations=4))
    return runs


def distill_configs() -> dict[str, tuple[dict, dict]]:
    """Run name -> configs of chapter 7's stronger teacher: the base fine-tuned on the exact solver's clean traces
    (``--source teacher``), per task and seed, scored like the comparison's policies.

    The comparison's recipe and problem stream (the same problems per step as every algorithm of that seed), so
    the same number of trained completions as one RL run; it costs far less, having nothing to sample.
    """
    runs = {}
    for seed in SEEDS:
        for task in TASKS:
            train = dict(COMPARISON, algo="fisft_plus", source="teacher", task=task, seed=seed)
            runs[f"{task}-distill-seed{seed}"] = (train, dict(FINAL_EVAL, task=task))
    return runs


BOUNDARY_MODELS = ("base", *ALGOS, "distill")
BOUNDARY_SAMPLING = {"T0.6": dict(temperature=0.6, top_p=0.95), "T1.0": dict(temperature=1.0, top_p=1.0)}
"""Chapter 7's sampling: Yue et al.'s (arXiv 2504.13837: T = 0.6, top-p 0.95), and plain T = 1, the training
temperature, since where the curves cross depends on it."""


def boundary_configs() -> dict[str, tuple[None, dict]]:
    """Run name -> configs of chapter 7's evaluations: every model of chapters 6 and 7 (the base, each algorithm's
    seed-0 policy, the distilled seed-0 policy) on the comparison's 200 held-out problems per task, n = 256, at
    each of :data:`BOUNDARY_SAMPLING`. Evaluation only: a policy is the reproduction's when it exists, else the
    committed one (:func:`policy_for`)."""
    runs = {}
    for task in TASKS:
        for model in BOUNDARY_MODELS:
            source = "tiny" if model == "base" else str(
                RUNS / ("distill" if model == "distill" else "compare")
                / f"{task}-{model}-seed0" / "policy")
            for label, sampling in BOUNDARY_SAMPLING.items():
                runs[f"{task}-{model}-{label}"] = (None, dict(FINAL_EVAL, task=task, model=source,
                                                              num_generations=256, **sampling))
    return runs


LENGTH_STEPS = (25, 50, 75, 100)
"""Chapter 7's training-length checkpoints: one GRPO run on Countdown keeps its policy at these steps (step 100 is
its final policy). The run is the comparison's seed-0 run again; on another kind of CPU it is not bit for bit the
committed run (float rounding differs, and sampled outcomes follow it after some steps), so its final policy is
evaluated too rather than borrowed from the comparison."""


def length_configs() -> dict[str, tuple[dict | None, dict]]:
    """Run name -> configs of chapter 7's training-length runs (Yue et al.'s Table 3, pass@1 and pass@256 as GRPO
    trains longer): the comparison's Countdown GRPO seed-0 run again, keeping its policy every 25 steps, and
    evaluation-only runs of each kept policy at n = 256, T = 0.6 / top-p 0.95 (chapter 7's first sampling)."""
    train = dict(COMPARISON, algo="grpo", task="countdown", seed=0, policy_every=LENGTH_STEPS[0])
    runs: dict[str, tuple[dict | None, dict]] = {"countdown-grpo-seed0": (train, dict(FINAL_EVAL, task="countdown"))}
    run = RUNS / "length" / "countdown-grpo-seed0"
    for step in LENGTH_STEPS:
        policy = run / ("policy" if step == train["steps"] else f"policy-step{step}")
        runs[f"countdown-grpo-step{step}-T0.6"] = (None, dict(
            FINAL_EVAL, task="countdown", model=str(policy), num_generations=256, **BOUNDARY_SAMPLING["T0.6"]))
    return runs


def producer(model: str) -> str | None:
    """The run (``experiment/name``) whose reproduction writes the policy ``model`` names, if a run does.

    >>> producer("runs/reproduce/length/countdown-grpo-seed0/policy-step25"), producer("tiny")
    ('length/countdown-grpo-seed0', None)
    """
    path = Path(model)
    if not path.is_relative_to(RUNS) or len(path.relative_to(RUNS).parts) < 3:
        return None
    experiment, name = path.relative_to(RUNS).parts[:2]
    return f"{experiment}/{name}"


def policy_for(model: str, runs: Path = RUNS, data: Path = DATA) -> str:
    """The policy an evaluation-only run names, as found now. A config names it as the reproduction's,
    ``runs/reproduce/<experiment>/<run>/policy``: that one (under ``runs``, reproduce's ``--out``) when it has been
    trained, else the committed one under ``data``. Anything else as given (``tiny``, a directory, a hub name).

    >>> policy_for("tiny")
    'tiny'
    """
    path = Path(model)
    if not path.is_relative_to(RUNS):  # configs name reproductions under the default --out
        return model
    reproduced, committed = runs / path.relative_to(RUNS), data / path.relative_to(RUNS)
    return str(reproduced) if reproduced.exists() or not committed.exists() else str(committed)


OBJECTIONS_TASK = "tinygsm"
"""Chapter 9's experiments run on the word problems: a run there costs about half a Countdown run."""
KL_BETAS = (0.01, 0.04)
"""Chapter 9's KL strengths: a small one, and TRL's old default (0.04). β = 0 is the comparison's own runs."""
KL_ALGOS = ("grpo", "fisft_pm")
KL_COUNTDOWN_BETA = 0.04
"""The one KL strength also run on Countdown, where chapter 6's completions are longest and the KL term sums over
more tokens."""
ITERATIONS = (2, 4)
"""Chapter 9's updates per sampled batch (μ): with μ > 1 the ratio leaves 1 and the clip acts. μ = 1 is the
comparison's."""
ITERATIONS_COUNTDOWN = (4,)
"""The μ also run on Countdown: the one that moved the word problems' accuracy."""
GAP_EVERY = 5
"""Steps between measurements of each update's distance to the weighted-SFT update (``sft_gap_every``)."""


def kl_configs() -> dict[str, tuple[dict, dict]]:
    """Run name -> configs of chapter 9's KL objection: GRPO and F-ISFT± with a KL penalty toward the base (the
    reference), β in :data:`KL_BETAS`, 3 seeds, on the word problems, and at :data:`KL_COUNTDOWN_BETA` on Countdown;
    the comparison's recipe otherwise, measuring every :data:`GAP_EVERY` steps how far each update is from weighted
    SFT. The β = 0 rows are the comparison's runs: measuring the gap does not change a run (tested), and there the gap
    is 0 (chapter 2)."""
    runs = {}
    for task, betas in ((OBJECTIONS_TASK, KL_BETAS), ("countdown", (KL_COUNTDOWN_BETA,))):
        for algo in KL_ALGOS:
            for beta in betas:
                for seed in SEEDS:
                    train = dict(COMPARISON, algo=algo, task=task, seed=seed, beta=beta, sft_gap_every=GAP_EVERY)
                    runs[f"{task}-{algo}-beta{beta:g}-seed{seed}"] = (train, dict(FINAL_EVAL, task=task))
    return runs


def iterations_configs() -> dict[str, tuple[dict, dict]]:
    """Run name -> configs of chapter 9's μ > 1 objection: GRPO taking :data:`ITERATIONS` optimizer steps on each
    sampled batch, 3 seeds, on the word problems, and :data:`ITERATIONS_COUNTDOWN` on Countdown; the comparison's
    recipe otherwise (the same learning rate per update), measuring the gap to weighted SFT every :data:`GAP_EVERY`
    steps. μ = 1 is the comparison's runs."""
    runs = {}
    for task, mus in ((OBJECTIONS_TASK, ITERATIONS), ("countdown", ITERATIONS_COUNTDOWN)):
        for mu in mus:
            for seed in SEEDS:
                train = dict(COMPARISON, algo="grpo", task=task, seed=seed, num_iterations=mu, sft_gap_every=GAP_EVERY)
                runs[f"{task}-grpo-mu{mu}-seed{seed}"] = (train, dict(FINAL_EVAL, task=task))
    return runs


REFRESH = (10, COMPARISON["steps"])
"""Chapter 9's refresh intervals for F-ISFT+ (``refresh_every``): every 10 steps, and never (one pool the base
samples at step 1: rejection sampling, then SFT on a static dataset). 1 (on-policy) is the comparison's run."""
REWARD_TASK = "countdown"
"""Chapter 9's reward shapes run on Countdown, the task with more than two reward values."""
REWARD_SHAPES = ("binary", "graded")
"""GRPO under binary and graded Countdown rewards; the comparison's runs have the task's own (format: 1 / 0.1 / 0).
F-ISFT± reads only right or wrong, so under every shape its runs are the comparison's."""


def refresh_configs() -> dict[str, tuple[dict, dict]]:
    """Run name -> configs of chapter 9's static-vs-on-policy objection: F-ISFT+ sampling its completions every
    K steps of :data:`REFRESH` (the last: once, by the base), 3 seeds, on the word problems; the comparison's recipe
    otherwise, so each step trains on the correct ones of as many sampled completions. K = 1 is the comparison's."""
    runs = {}
    for k in REFRESH:
        for seed in SEEDS:
            train = dict(COMPARISON, algo="fisft_plus", task=OBJECTIONS_TASK, seed=seed, refresh_every=k)
            name = "static" if k >= COMPARISON["steps"] else f"refresh{k}"
            runs[f"{OBJECTIONS_TASK}-fisft_plus-{name}-seed{seed}"] = (train, dict(FINAL_EVAL, task=OBJECTIONS_TASK))
    return runs


def rewards_configs() -> dict[str, tuple[dict, dict]]:
    """Run name -> configs of chapter 9's non-binary-reward objection: GRPO on Countdown under each reward shape of
    :data:`REWARD_SHAPES`, 3 seeds, the comparison's recipe otherwise. The final evaluation counts solves only."""
    runs = {}
    for shape in REWARD_SHAPES:
        for seed in SEEDS:
            train = dict(COMPARISON, algo="grpo", task=REWARD_TASK, seed=seed, reward=shape)
            runs[f"{REWARD_TASK}-grpo-{shape}-seed{seed}"] = (train, dict(FINAL_EVAL, task=REWARD_TASK))
    return runs


PPO_TASK = "countdown"
"""Chapter 9's per-token credit runs on Countdown, where chapter 6's wrong answers grew longest."""


PPO_LAMBDAS = (0.95, 1.0)
"""GAE's λ of chapter 9's PPO runs: the trainer's default, and 1, where every token's advantage is the reward minus
the value (the terminal reward reaches every token undiminished; chapter 9 says why the second was added)."""


def ppo_configs() -> dict[str, tuple[dict, dict]]:
    """Run name -> configs of chapter 9's per-token-credit objection: PPO with a value head and GAE (γ = 1,
    value_coef = 0.1, the token-mean normaliser) at each λ of :data:`PPO_LAMBDAS`, 3 seeds, on Countdown, the
    comparison's recipe otherwise (its learning rate, chosen for GRPO, not retuned)."""
    runs = {}
    for lam in PPO_LAMBDAS:
        for seed in SEEDS:
            name = f"{PPO_TASK}-ppo-seed{seed}" if lam == 0.95 else f"{PPO_TASK}-ppo-lambda{lam:g}-seed{seed}"
            runs[name] = (dict(COMPARISON, algo="ppo", task=PPO_TASK, seed=seed, gae_lambda=lam),
                          dict(FINAL_EVAL, task=PPO_TASK))
    return runs


PRECISION_TASK = "tinygsm"
"""Chapter 8's precision runs are on the word problems: a run there costs about half a Countdown run, and an
fp16 step about three times a float32 one on the CPU."""
LORA_RATE = 1e-3
"""The learning rate of every precision run: about three times the comparison's full-parameter 3e-4, since LoRA's
few parameters usually want a larger step. Chosen, not swept."""
PRECISION_VARIANTS = {"lora": dict(lora=True), "4bit": dict(lora=True, load_in_4bit=True),
                      "4bit-fp16": dict(lora=True, load_in_4bit=True, dtype="float16")}
"""Chapter 8's path in the tiny world, one step at a time: LoRA on the float32 base (rank 16, alpha 32, the GPU
recipe's), the base in 4-bit nf4 with float32 compute, and 4-bit with fp16 compute (a T4's policy: the 4-bit layers
multiply in fp16, the adapters, norms and embeddings stay float32). Full-parameter training is the comparison's."""


def precision_configs() -> dict[str, tuple[dict, dict]]:
    """Run name -> configs of chapter 8's question whether the GPU recipe's path trains: GRPO on the word problems
    with each of :data:`PRECISION_VARIANTS` at :data:`LORA_RATE`, 3 seeds, the comparison's recipe otherwise (the
    same problems per step as its GRPO runs of the same seed). The final evaluation computes in float32."""
    runs = {}
    for variant, options in PRECISION_VARIANTS.items():
        for seed in SEEDS:
            train = dict(COMPARISON, algo="grpo", task=PRECISION_TASK, seed=seed, learning_rate=LORA_RATE, **options)
            runs[f"{PRECISION_TASK}-grpo-{variant}-seed{seed}"] = (train, dict(FINAL_EVAL, task=PRECISION_TASK))
    return runs


GENERATED = {"compare": comparison_configs, "stability": stability_configs, "distill": distill_configs,
             "boundary": boundary_configs, "length": length_configs, "kl": kl_configs,
             "iterations": iterations_configs, "refresh": refresh_configs, "rewards": rewards_configs,
             "ppo": ppo_configs, "precision": precision_configs}
"""Experiments whose configs the package generates (``--init``)."""


# --- one run ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Run:
    """One committed run: where it lives, and its two configs as saved (field dicts). ``train`` is ``None`` for an
    evaluation-only run (a model as it is, such as the base, scored on the same problems as the trained ones)."""

    experiment: str
    name: str
    train: dict | None
    eval: dict
    keep_policy: bool
    data: Path = DATA

    @property
    def key(self) -> str:
        return f"{self.experiment}/{self.name}"

    @property
    def committed(self) -> Path:
        return self.data / self.experiment / self.name

    def out(self, runs: Path = RUNS) -> Path:
        return runs / self.experiment / self.name

    @property
    def steps(self) -> int:
        return int(self.train["steps"]) if self.train else 0


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


def run_one(run: Run, runs: Path = RUNS, *, log=None) -> Path:
    """Train and evaluate ``run`` into ``runs/<experiment>/<name>``, resuming whatever an earlier attempt left."""
    out = run.out(runs)
    out.mkdir(parents=True, exist_ok=True)
    if run.train is None:  # evaluation only: the model the saved config names (a reproduced policy, or the committed)
        model = policy_for(run.eval["model"], runs, run.data)
        _call([*_companion(), "eval", *_flags(dict(run.eval, model=model, out=str(out / "eval"), overwrite=False))],
              log)
        return out
    if not (out / "policy").exists():
        if (out / "checkpoint.pt").exists():
            _call([*_companion(), "train", "--resume", str(out), "--quiet"], log)
        else:  # --overwrite: what is there (if anything) died before its first checkpoint
            _call([*_companion(), "train", "--quiet", "--overwrite", *_flags(dict(run.train, out=str(out)))], log)
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


def generated_runs(experiment: str) -> list[Run]:
    """The runs :data:`GENERATED` defines for ``experiment``, before anything is committed."""
    return [Run(experiment, name, train, evaluation,
                keep_policy=train is not None and train["seed"] in POLICY_SEEDS.get(experiment, ()))
            for name, (train, evaluation) in GENERATED[experiment]().items()]


# --- what is committed -----------------------------------------------------------------------------------------


def committed_runs(data: Path = DATA) -> tuple[list[Run], list[str]]:
    """Every run committed under ``data``, and one line per run directory whose configs do not load (by name)."""
    from companion.config import load_config
    from companion.evaluate import EvalConfig
    from companion.trainer import TrainConfig

    runs, broken = [], []
    if not data.is_dir():
        return runs, broken
    for experiment in sorted(p for p in data.iterdir() if p.is_dir()):
        for directory in sorted(p for p in experiment.iterdir() if p.is_dir()):
            key = f"{experiment.name}/{directory.name}"
            try:
                train = (dataclasses.asdict(load_config(TrainConfig, directory / "config.json"))
                         if (directory / "config.json").exists() or not (directory / "eval").is_dir() else None)
                evaluation = dataclasses.asdict(load_config(EvalConfig, directory / "eval" / "config.json"))
            except (OSError, ValueError, TypeError) as error:  # json.JSONDecodeError is a ValueError
                broken.append(f"{key}: its config does not load ({error})")
                continue
            runs.append(Run(experiment.name, directory.name, jsonable(train), jsonable(evaluation),
                            keep_policy=train is not None and _keeps_policy(experiment.name, train, directory),
                            data=data))
    return runs, broken


def _keeps_policy(experiment: str, train: dict, directory: Path) -> bool:
    """Whether a run's trained policy is committed: it is there already, or the generator says so."""
    return (directory / "policy").is_dir() or train["seed"] in POLICY_SEEDS.get(experiment, ())


def select(runs: list[Run], only: list[str] | None, others: tuple[str, ...] = ()) -> list[Run]:
    """The runs ``only`` names (experiment names or ``experiment/run`` keys); all of them without ``only``.

    An unknown name raises a RunError that lists the known ones (``others`` among them: names handled elsewhere).
    """
    if not only:
        return runs
    experiments = sorted({r.experiment for r in runs}) + list(others)
    unknown = [name for name in only if name not in experiments and name not in {r.key for r in runs}]
    if unknown:
        known = ", ".join(experiments) or "none (nothing is committed under data/experiments)"
        raise RunError(f"unknown experiment or run {', '.join(unknown)}; experiments: {known}; a single run is "
                       "named EXPERIMENT/RUN, e.g. " + (runs[0].key if runs else "compare/tinygsm-grpo-seed0")
                       + " (`companion reproduce --list` shows them all)")
    return [r for r in runs if r.experiment in only or r.key in only]


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


def compare(run: Run, runs: Path = RUNS) -> dict:
    """The reproduction of ``run`` against its committed results: pass@1 of both and whether training matched."""
    from companion.trainer import TIMING_METRICS

    def first(directory: Path) -> dict:
        return json.loads((directory / "eval" / "summary.json").read_text())["pass_at_k"][0]

    committed, again = first(run.committed), first(run.out(runs))
    records = [read_jsonl(d / "metrics.jsonl") for d in (run.committed, run.out(runs))]  # none: evaluation only
    # Only what the committed records hold: a diagnostic added to the trainer later is not a difference.
    keys = {k for r in records[0] for k in r} - set(TIMING_METRICS)
    strip = [[{k: v for k, v in r.items() if k in keys} for r in rs] for rs in records]
    differs_at = next((a["step"] for a, b in zip(*strip) if a != b), None)
    if differs_at is None and len(strip[0]) != len(strip[1]):
        differs_at = min(len(strip[0]), len(strip[1]))
    inside = committed["low"] <= again["estimate"] <= committed["high"]
    return {"run": run.key, "committed": committed["estimate"], "committed_low": committed["low"],
            "committed_high": committed["high"], "reproduced": again["estimate"], "within_interval": inside,
            "evaluation_only": run.train is None,
            "training_identical": differs_at is None, "training_differs_at_step": differs_at}


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


SWEEP_SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "sweep_recipe.py"


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


def _relative_out(run: Run) -> str:
    return f"runs/reproduce/{run.experiment}/{run.name}"


def init(experiment: str, data: Path = DATA) -> list[Run]:
    """Write the configs of a generated experiment under ``data`` (runs already there are left alone)."""
    from companion.config import save_config
    from companion.evaluate import EvalConfig
    from companion.trainer import TrainConfig

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
        out = _relative_out(run)
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
    out = _relative_out(run)
    model = f"{out}/policy" if run.train is not None else run.eval["model"]
    if run.train is not None:
        train = json.loads((source / "config.json").read_text())
        (staging / "config.json").write_text(json.dumps(dict(train, out=out), indent=2, sort_keys=True) + "\n")
        write_jsonl_gz(source / "metrics.jsonl", staging / "metrics.jsonl.gz")
    evaluation = json.loads((source / "eval" / "config.json").read_text())
    (staging / "eval" / "config.json").write_text(json.dumps(
        dict(evaluation, model=model, out=f"{out}/eval"), indent=2, sort_keys=True) + "\n")
    shutil.copy2(source / "eval" / "model.json", staging / "eval" / "model.json")
    write_jsonl_gz(source / "eval" / "problems.jsonl", staging / "eval" / "problems.jsonl.gz")
    summary = json.loads((source / "eval" / "summary.json").read_text())
    (staging / "eval" / "summary.json").write_text(json.dumps(dict(summary, model=model), indent=2) + "\n")
    if run.keep_policy:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        model = AutoModelForCausalLM.from_pretrained(source / "policy", dtype=torch.float32)
        model.to(torch.float16).save_pretrained(staging / "policy")
        AutoTokenizer.from_pretrained(source / "policy").save_pretrained(staging / "policy")
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
    total = 0.0
    print(f"{'run':40s} {'cost':>8s} {'committed pass@1':>17s}  reproduction in {out}")
    for run in runs:
        seconds = cost_seconds(run.committed)
        total += seconds or 0.0
        summary = run.committed / "eval" / "summary.json"
        score = (f"{json.loads(summary.read_text())['pass_at_k'][0]['estimate']:.3f}" if summary.exists()
                 else "configs only")
        cost = f"{seconds / 60:.1f} min" if seconds else "?"
        print(f"{run.key:40s} {cost:>8s} {score:>17s}  {_status(run, out)}")
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


def _reproduce(runs: list[Run], out: Path, workers: int) -> list[str]:
    """Run every unfinished run of ``runs``, ``workers`` at a time, with a progress bar; returns the failures."""
    from tqdm.auto import tqdm

    todo = [r for r in runs if not progress_of(r, out)[2]]
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
                    run_one(run, out, log=log)
                except subprocess.CalledProcessError as error:
                    failed.append(f"{run.key}: exit code {error.returncode}; see {log.name} in {logs}")
        finally:
            done[run.key].set()

    # Work is counted as training steps plus evaluated problems, so that evaluation-only runs move the bar too.
    bar = tqdm(total=sum(r.steps + r.eval["problems"] for r in todo), unit=" steps+problems",
               desc=f"reproduce {len(todo)} runs")
    pool = ThreadPoolExecutor(workers)
    futures = [pool.submit(work, run) for run in todo]
    try:
        while not all(f.done() for f in futures):
            time.sleep(2)
            states = [progress_of(r, out) for r in todo]
            bar.n = sum(min(steps, r.steps) + min(problems, r.eval["problems"])
                        for r, (steps, problems, _) in zip(todo, states))
            bar.set_postfix(finished=f"{sum(done for _, _, done in states)}/{len(todo)}")
            bar.refresh()
        bar.close()
    except KeyboardInterrupt:
        bar.close()
        stopping.set()
        pool.shutdown(wait=False, cancel_futures=True)
        stop_all()
        for event in done.values():  # release the runs that wait, so that their threads end
            event.set()
        raise
    pool.shutdown()
    return failed


def main(argv: list[str] | None = None) -> int:
    import signal

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
    args = parser.parse_args(argv)
    out, data = Path(args.out), Path(args.data)
    try:
        if args.workers < 1:
            raise RunError(f"--workers must be at least 1, got {args.workers}")
        if args.init:
            written = init(args.init, data)
            print(f"wrote the configs of {len(written)} runs under {data / args.init}")
            return 0
        runs, broken = committed_runs(data)
        for line in broken:
            print(f"companion reproduce: {line}", file=sys.stderr)
        selected = select(runs, args.only, OTHERS)
        # tiny-base and recipe are the shipped data's; another --data holds only run directories
        others = [name for name in OTHERS if (not args.only or name in args.only)
                  and data.resolve() == DATA.resolve()]
        runs = selected if not args.only or any(name not in OTHERS for name in args.only) else []
    except RunError as error:
        print(f"companion reproduce: error: {error}", file=sys.stderr)
        return BAD_INPUT
    if args.list:
        if runs:
            _list(runs, out)
        _list_others(others, out)
        return 0
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # a kill stops the runs as Ctrl-C does
    try:
        failed = _reproduce(runs, out, args.workers)
    except RunError as error:
        print(f"companion reproduce: error: {error}", file=sys.stderr)
        return BAD_INPUT
    except KeyboardInterrupt:
        finished = sum(progress_of(r, out)[2] for r in runs)
        print(f"\ninterrupted: {finished} of {len(runs)} runs finished and kept, the others keep their last "
              "checkpoint; run the same command to go on", file=sys.stderr)
        return 130
    for line in failed:
        print(f"companion reproduce: failed: {line}", file=sys.stderr)
    print("what differs from the committed results:")
    for run in runs:
        if not progress_of(run, out)[2]:
            continue
        if not (run.committed / "eval" / "summary.json").exists():
            print(f"{run.key}: nothing committed to compare with (configs only)")
        else:
            print(describe(compare(run, out)))
        if args.save:
            print(f"  saved to {save(run, out)}")
    for name in others:  # after the runs: pretraining takes both cores
        try:
            for line in reproduce_other(name, out):
                print(line)
        except subprocess.CalledProcessError as error:
            failed.append(f"{name}: exit code {error.returncode}")
            print(f"companion reproduce: failed: {name}: exit code {error.returncode}", file=sys.stderr)
    for line in broken:
        print(f"{line}: not reproduced")
    return 1 if failed or broken else 0


# --- reading results back (the book) ---------------------------------------------------------------------------


def load_results(experiment: str, data: Path = DATA) -> list[dict]:
    """The committed runs of ``experiment`` that have results, as records for the book's figures.

    Each record: ``name``, ``algo``, ``task``, ``seed``, ``learning_rate``, ``normalizer`` (the one in use),
    ``beta``, ``num_iterations``, ``refresh_every``, ``reward`` (the shape in use), ``gae_lambda`` (ppo's, else
    None), ``lora``, ``load_in_4bit`` and ``dtype`` (all None for an evaluation-only run),
    ``steps`` (trained: the run's, or a kept policy's step for an evaluation-only run; 0 for the base),
    ``records`` (``metrics.jsonl``), ``summary`` (the final evaluation's ``summary.json``) and ``rows`` (its
    per-problem rows: ``index``, ``rewards``, ``lengths``).
    """
    from companion.objectives import resolve_normalizer

    results = []
    runs, broken = committed_runs(data)
    if broken:
        raise RunError("; ".join(broken))
    trained = {f"{_relative_out(r)}/policy": r.steps for r in runs if r.train is not None}  # final policy -> steps
    for run in runs:
        if run.experiment != experiment or not (run.committed / "eval" / "summary.json").exists():
            continue
        t, e = run.train, run.eval
        scored = {"temperature": e["temperature"], "top_p": e["top_p"], "num_generations": e["num_generations"],
                  "summary": json.loads((run.committed / "eval" / "summary.json").read_text()),
                  "rows": read_jsonl(run.committed / "eval" / "problems.jsonl")}
        if t is None:  # a model as it is: the base, or (chapter 7) a committed policy evaluated again
            results.append({"name": run.name, "algo": model_key(e["model"]), "task": e["task"], "seed": None,
                            "learning_rate": None, "normalizer": None, "beta": None, "num_iterations": None,
                            "refresh_every": None, "reward": None, "gae_lambda": None, "lora": None,
                            "load_in_4bit": None, "dtype": None,
                            "steps": policy_step(e["model"]) or trained.get(e["model"], 0),
                            "records": [], **scored})
            continue
        results.append({"name": run.name, "algo": "distill" if t.get("source") == "teacher" else t["algo"],
                        "task": t["task"], "seed": t["seed"], "learning_rate": t["learning_rate"],
                        "normalizer": resolve_normalizer(t["algo"], t["normalizer"]), "steps": t["steps"],
                        "beta": t.get("beta", 0.0), "num_iterations": t.get("num_iterations", 1),
                        "refresh_every": t.get("refresh_every", 1), "reward": _reward_shape(t),
                        "gae_lambda": t.get("gae_lambda", 0.95) if t["algo"] == "ppo" else None,
                        "lora": t.get("lora", False), "load_in_4bit": t.get("load_in_4bit", False),
                        "dtype": t.get("dtype", "auto"),
                        "records": read_jsonl(run.committed / "metrics.jsonl"), **scored})
    return results


def _reward_shape(train: dict) -> str:
    """The reward shape a run trained with: its ``reward``, or its task's own."""
    from companion.tasks import REWARDS

    return train.get("reward") or next(iter(REWARDS[train["task"]]))


def model_key(model: str) -> str:
    """What an evaluation-only run evaluates, by the name chapters use: ``base`` for the shipped tiny model, an
    algorithm (``grpo``, ...) or ``distill`` for a seed-0 policy that :func:`boundary_configs` names, else the model
    as given.

    >>> model_key("tiny"), model_key("runs/reproduce/compare/countdown-grpo-seed0/policy")
    ('base', 'grpo')
    """
    names = {evaluation["model"]: name.split("-")[1]
             for configs in (boundary_configs, length_configs) for name, (train, evaluation) in configs().items()
             if train is None}
    return names.get(model, model)


def policy_step(model: str) -> int | None:
    """The training step of a policy that ``--policy-every`` kept (``.../policy-step<N>``), else None.

    >>> policy_step("runs/reproduce/length/countdown-grpo-seed0/policy-step25"), policy_step("tiny")
    (25, None)
    """
    name = Path(model).name
    return int(name.removeprefix("policy-step")) if name.startswith("policy-step") else None
