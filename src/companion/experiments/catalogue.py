"""The catalogue of committed experiments: what each experiment's runs are, and which of them are committed.

An *experiment* is a set of runs committed under ``data/experiments/<experiment>/<run>/``. Each run directory is
what ``companion train`` writes (``config.json``, ``metrics.jsonl``, and for the runs the book evaluates again,
``policy/`` in half precision) plus ``eval/``, the ``companion eval`` of its final policy (``config.json``,
``problems.jsonl``, ``summary.json``). The saved configs are the source of truth; the functions here that generate
them (:data:`GENERATED`) wrote them once (``companion reproduce --init``), and :func:`committed_runs` reads them
back. :mod:`companion.experiments.reproduce` reruns them; :mod:`companion.experiments.results` reads their results
for the book.

Two committed results are not run directories: ``tiny-base`` (the shipped base model, ``companion pretrain``) and
``recipe`` (the learning-rate sweep of ``data/sweeps/recipe.jsonl``, ``scripts/sweep_recipe.py``): :data:`OTHERS`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from companion.runs import RunError, jsonable
from companion.shipped import data_dir

DATA = data_dir() / "experiments"
RUNS = Path("runs") / "reproduce"
"""Where reproductions go, relative to the working directory (the committed configs name it as their ``out``)."""
SWEEP = data_dir() / "sweeps" / "recipe.jsonl"
"""The rows of the recipe sweep (``scripts/sweep_recipe.py``) that chose :data:`COMPARISON`'s learning rate."""

ALGOS = ("grpo", "dr_grpo", "fisft_plus", "fisft_pm")
TASKS = ("countdown", "tinygsm")
SEEDS = (0, 1, 2)
COMPARE_SEEDS = SEEDS + (3, 4)
"""Chapter 6's comparison, and the experiments that test its claims, run five seeds: with three, a t-based 95%
interval of a difference is about twice as wide (t = 4.30 at 2 degrees of freedom against 2.78 at 4)."""

COMPARISON = dict(steps=100, prompts_per_step=16, num_generations=8, learning_rate=3e-4, eval_every=25,
                  eval_problems=100, eval_num_generations=4, save_every=25, num_threads=1)
"""The CPU-world recipe every algorithm of chapter 6 shares (data/sweeps/recipe.jsonl: GRPO's best learning rate
at 16 prompts x 8 completions, 100 steps); each run differs from the others only in algo, task and seed."""

FINAL_EVAL = dict(problems=200, problem_seed=2025, num_generations=16, temperature=1.0, top_p=1.0, num_threads=1)
"""The held-out evaluation of each final policy: the base model's 200 problems (its metrics.json), n = 16, T = 1."""

OTHERS = ("tiny-base", "recipe")
"""Committed results that are not run directories (:func:`other_experiments`): reproduce runs them last."""

def comparison_configs() -> dict[str, tuple[dict, dict]]:
    """Run name -> (TrainConfig fields, EvalConfig fields) of chapter 6's comparison, 4 algos x 2 tasks x 5 seeds,
    and per task the base model itself on the same problems (``<task>-base``: no training, ``None`` for its config).

    For one seed, every algorithm sees the same problems in the same order (the problem stream is a function of the
    seed only) and starts from the same weights.
    """
    runs = {f"{task}-base": (None, dict(FINAL_EVAL, task=task, model="tiny")) for task in TASKS}
    for seed in COMPARE_SEEDS:
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


HARD_TIER = "hard"
"""The Countdown tier of chapter 7's second boundary test (:data:`companion.tasks.TIERS`): numbers from 1..35, where
the base has problems left to miss at k = 256."""
LONG_STEPS = 1000
"""How long chapter 7's long RL runs train on the hard tier: ten times the comparison's 100 steps."""
LONG_RECIPES = {"grpo": {}, "grpo-kl-reset": dict(beta=0.01, ref_reset_every=250)}
"""The long runs' two recipes: GRPO as the comparison trains it (no KL), and with a KL penalty (chapter 9's small β)
toward a reference that is reset to the policy every 250 steps, ProRL's remedy for a KL that would otherwise hold
the policy near the base (arXiv 2505.24864)."""
LONG_SEEDS = (0, 1)
LONG_EVAL_STEPS = (100, LONG_STEPS)
"""The kept policies of each long run scored at n = 256: after the comparison's length, and at the end."""


def hard_configs() -> dict[str, tuple[dict | None, dict]]:
    """Run name -> configs of chapter 7's hard tier (Countdown's :data:`HARD_TIER`, 200 held-out problems): the base at
    n = 256 at each of :data:`BOUNDARY_SAMPLING` (the tier is chosen so that its pass@256 at T = 1 lies well inside
    0..1); the base distilled on the exact solver's traces of this tier (a teacher that solves what the base does
    not); and GRPO trained :data:`LONG_STEPS` steps by each of :data:`LONG_RECIPES`, :data:`LONG_SEEDS`, keeping its
    policy every 100 steps. Each trained policy of :data:`LONG_EVAL_STEPS`, and the distilled one, is scored at n = 256,
    T = 1: the same evaluation as the base's, so that every curve is over the same problems."""
    evaluation = dict(FINAL_EVAL, task="countdown", tier=HARD_TIER, num_generations=256)
    runs: dict[str, tuple[dict | None, dict]] = {
        f"countdown-base-{label}": (None, dict(evaluation, model="tiny", **sampling))
        for label, sampling in BOUNDARY_SAMPLING.items()}
    distill = dict(COMPARISON, algo="fisft_plus", source="teacher", task="countdown", tier=HARD_TIER, seed=0)
    runs["countdown-distill-seed0"] = (distill, dict(FINAL_EVAL, task="countdown", tier=HARD_TIER))
    runs["countdown-distill-T1.0"] = (None, dict(evaluation, model=str(RUNS / "hard" / "countdown-distill-seed0"
                                                                         / "policy")))
    for recipe, options in LONG_RECIPES.items():
        for seed in LONG_SEEDS:
            name = f"countdown-{recipe}-seed{seed}"
            train = dict(COMPARISON, algo="grpo", task="countdown", tier=HARD_TIER, seed=seed, steps=LONG_STEPS,
                         policy_every=100, **options)
            runs[name] = (train, dict(FINAL_EVAL, task="countdown", tier=HARD_TIER))
            for step in LONG_EVAL_STEPS:
                policy = RUNS / "hard" / name / ("policy" if step == LONG_STEPS else f"policy-step{step}")
                runs[f"countdown-{recipe}-seed{seed}-step{step}-T1.0"] = (None, dict(evaluation, model=str(policy)))
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
REWARD_SEEDS = {"binary": COMPARE_SEEDS, "graded": SEEDS}
"""The binary reward runs five seeds, as the comparison does: binary against format is chapter 6's test of the
format score's own effect on length (claim 3)."""


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
    :data:`REWARD_SHAPES` (:data:`REWARD_SEEDS`), the comparison's recipe otherwise. The final evaluation counts
    solves only."""
    runs = {}
    for shape in REWARD_SHAPES:
        for seed in REWARD_SEEDS[shape]:
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


NEGATIVE_ALGOS = ("fisft_minus", "nsr", "w_reinforce")
"""Chapter 6's rules with negatives alone (F-ISFT−, NSR) or mostly (W-REINFORCE): :data:`companion.objectives.FOLLOW_UPS`."""


def negatives_configs() -> dict[str, tuple[dict | None, dict]]:
    """Run name -> configs of chapter 6's negatives-alone claim: each rule of :data:`NEGATIVE_ALGOS` on both tasks,
    five seeds, the comparison's recipe (its learning rate, chosen for GRPO); and each seed-0 policy evaluated again
    at n = 256, T = 1 (chapter 7's second sampling), beside the comparison's policies."""
    runs: dict[str, tuple[dict | None, dict]] = {}
    for seed in COMPARE_SEEDS:
        for task in TASKS:
            for algo in NEGATIVE_ALGOS:
                train = dict(COMPARISON, algo=algo, task=task, seed=seed)
                runs[f"{task}-{algo}-seed{seed}"] = (train, dict(FINAL_EVAL, task=task))
    for task in TASKS:
        for algo in NEGATIVE_ALGOS:
            policy = str(RUNS / "negatives" / f"{task}-{algo}-seed0" / "policy")
            runs[f"{task}-{algo}-T1.0"] = (None, dict(FINAL_EVAL, task=task, model=policy, num_generations=256,
                                                      **BOUNDARY_SAMPLING["T1.0"]))
    return runs


LENGTH_CAP = 336
"""The completion budget of the normaliser experiment: as long as the tiny model's context allows (448 positions, the
longest Countdown prompt 109 tokens), against the comparison's 256, so that the cap censors fewer of the lengths the
experiment measures."""
NORMALIZER_ALGOS = ("grpo", "fisft_pm")
TESTED_NORMALIZERS = ("sequence", "token", "constant")


def normalizers_configs() -> dict[str, tuple[dict | None, dict]]:
    """Run name -> configs of chapter 6's length claim, isolated: GRPO's weights and F-ISFT±'s under each normaliser
    of :data:`TESTED_NORMALIZERS`, on Countdown with the binary reward (no format score, which ranks a cut-off answer
    below a well-formed wrong one) and :data:`LENGTH_CAP` tokens of room, five seeds, the comparison's recipe
    otherwise; and the base model at the same cap (``countdown-base``), for lengths on matched problems."""
    evaluation = dict(FINAL_EVAL, task="countdown", max_completion_length=LENGTH_CAP)
    runs: dict[str, tuple[dict | None, dict]] = {"countdown-base": (None, dict(evaluation, model="tiny"))}
    for seed in COMPARE_SEEDS:
        for algo in NORMALIZER_ALGOS:
            for normalizer in TESTED_NORMALIZERS:
                train = dict(COMPARISON, algo=algo, normalizer=normalizer, task="countdown", seed=seed,
                             reward="binary", max_completion_length=LENGTH_CAP)
                runs[f"countdown-{algo}-{normalizer}-seed{seed}"] = (train, evaluation)
    return runs


DR_GRPO_VARIANTS = {"dr_grpo-sequence": dict(algo="dr_grpo", normalizer="sequence"),
                    "grpo-constant": dict(algo="grpo", normalizer="constant"),
                    "dr_grpo-binary": dict(algo="dr_grpo", reward="binary"),
                    "dr_grpo-lr6e-4": dict(algo="dr_grpo", learning_rate=6e-4)}
"""Why Dr. GRPO lags GRPO on Countdown, one candidate cause at a time: its weights without the std but GRPO's
normaliser, GRPO's weights with Dr. GRPO's normaliser, Dr. GRPO without the format score, and at twice the learning
rate. The comparison's GRPO and Dr. GRPO runs are the two ends."""
DR_GRPO_CHANGES = {"dr_grpo-sequence": "Dr. GRPO, with GRPO's normaliser (sequence)",
                   "grpo-constant": "GRPO, with Dr. GRPO's normaliser (constant)",
                   "dr_grpo-binary": "Dr. GRPO, without the format score",
                   "dr_grpo-lr6e-4": "Dr. GRPO, at twice the learning rate"}
"""What each variant of :data:`DR_GRPO_VARIANTS` changes, in words, for the book's and the README's tables."""


def dr_grpo_configs() -> dict[str, tuple[dict, dict]]:
    """Run name -> configs of each variant of :data:`DR_GRPO_VARIANTS` on Countdown, five seeds, the comparison's
    recipe otherwise."""
    runs = {}
    for seed in COMPARE_SEEDS:
        for variant, options in DR_GRPO_VARIANTS.items():
            train = dict(COMPARISON, task="countdown", seed=seed, **options)
            runs[f"countdown-{variant}-seed{seed}"] = (train, dict(FINAL_EVAL, task="countdown"))
    return runs


REAL_MODEL, REAL_TASK = "smollm2-135m", "tinygsm"
"""Chapter 10's model and task: SmolLM2-135M-Instruct (:mod:`companion.named_models`), the one pretrained model this
machine can reach, on the word problems, the one task it sometimes solves (Countdown and GSM8K: 0 of 64 samples)."""
REAL_CAP = 256
"""Chapter 10's completion budget, train and test: at 160 tokens, a third of the base's first samples were cut off."""
REAL_RECIPE = dict(model=REAL_MODEL, task=REAL_TASK, prompt_style="chat", lora=True, steps=50, prompts_per_step=8,
                   num_generations=8, max_completion_length=REAL_CAP, eval_every=25, eval_problems=50,
                   eval_num_generations=4, save_every=5, num_threads=1, micro_batch_size=8)
"""What every run of chapter 10 shares: the instruct model on its own chat prompt, LoRA (rank 16 on every linear layer,
the GPU recipe's), 8 prompts x 8 completions (a pilot at 4 prompts had half of its groups with no spread), 50 steps,
the update in passes of 8 completions (all 64 at once would need ~40 GiB; two runs side by side must fit in 24).
A step costs ~50 s at one thread: generation and the forward/backward of 135M parameters, against the tiny model's
~3 s."""
REAL_RATES = (3e-4, 1e-3)
"""The learning rates the recipe sweep tries, for GRPO at seed 0 (the sweep's runs are the experiment's runs)."""
REAL_EVAL = dict(FINAL_EVAL, task=REAL_TASK, prompt_style="chat", max_completion_length=REAL_CAP, batch_size=128,
                 num_generations=8)
"""The held-out evaluation of each final policy: the comparison's 200 problems, T = 1, on the chat prompt, n = 8 (1,600
samples a policy: at ~100 tokens/s a sample costs about as much as a training step's share of one, and the seeds'
spread, not these samples, is the noise that decides the verdicts; the seed-0 policies get n = 64 besides). The batch
is 128 samples: fast at one thread, and a fraction of the memory of 1024 caches of a 30-layer model (~15 GiB)."""


REAL_RATE = 3e-4
"""The sweep's choice, the rate every algorithm and seed of chapter 10 trains at. At 1e-3 GRPO's completions ran to
the 256-token limit within 15 steps (95% of them cut off, batch accuracy 0.02: the length blow-up of chapter 6's
stability map), while at 3e-4 they settled near 45 tokens with batch accuracy 0.1-0.2 by step 20; the choice was made
there, and the 1e-3 run goes on to 50 steps for the sweep's record."""
REAL_N = 64
"""Samples per held-out problem for chapter 10's pass@k curves: the base's and each seed-0 policy's."""

POLICY_KEPT = {"compare": {"seed": 0}, "distill": {"seed": 0}, "negatives": {"seed": 0},
               "real": {"algo": "grpo", "seed": 0, "learning_rate": REAL_RATE}}
"""Per experiment, which trained policies are committed (in half precision): those whose training config holds these
values. Chapter 7 evaluates the comparison's seed-0 policies again. Chapter 10 keeps GRPO's seed-0 adapters (9.8 MB):
the other rules' seed-0 adapters, evaluated at n = 64 like it, would take data/ past its 50 MB, and
``companion reproduce`` trains them again. The stability map keeps none (its runs are read for their training
records only)."""


def keeps_policy(experiment: str, train: dict | None) -> bool:
    """Whether :data:`POLICY_KEPT` commits the policy that ``train`` (a training config's fields) makes."""
    kept = POLICY_KEPT.get(experiment)
    return train is not None and kept is not None and all(train.get(k) == v for k, v in kept.items())


def _rate_name(rate: float) -> str:
    return f"lr{rate:.0e}".replace("e-0", "e-")


def real_run_name(algo: str, seed: int, rate: float) -> str:
    """The name of chapter 10's run of ``algo`` at ``seed`` and learning rate ``rate``.

    >>> real_run_name("fisft_pm", 2, 3e-4)
    'tinygsm-fisft_pm-lr3e-4-seed2'
    """
    return f"{REAL_TASK}-{algo}-{_rate_name(rate)}-seed{seed}"


def real_configs(rate: float = REAL_RATE) -> dict[str, tuple[dict | None, dict]]:
    """Run name -> configs of chapter 10: the recipe sweep (GRPO, seed 0, each rate of :data:`REAL_RATES`), the base
    model evaluated at n = :data:`REAL_N` on the held-out problems (``tinygsm-base``), and the four algorithms x 3
    seeds at the sweep's choice ``rate``, with each seed-0 policy evaluated at n = :data:`REAL_N` too
    (``tinygsm-<algo>-n64``)."""
    runs: dict[str, tuple[dict | None, dict]] = {
        f"{REAL_TASK}-base": (None, dict(REAL_EVAL, model=REAL_MODEL, num_generations=REAL_N))}
    for swept in REAL_RATES:
        runs[real_run_name("grpo", 0, swept)] = (dict(REAL_RECIPE, algo="grpo", seed=0, learning_rate=swept), REAL_EVAL)
    for seed in SEEDS:
        for algo in ALGOS:
            runs[real_run_name(algo, seed, rate)] = (dict(REAL_RECIPE, algo=algo, seed=seed, learning_rate=rate),
                                                     REAL_EVAL)
    for algo in ALGOS:
        policy = str(RUNS / "real" / real_run_name(algo, 0, rate) / "policy")
        runs[f"{REAL_TASK}-{algo}-n{REAL_N}"] = (None, dict(REAL_EVAL, model=policy, num_generations=REAL_N))
    return runs


GENERATED = {"compare": comparison_configs, "stability": stability_configs, "distill": distill_configs,
             "boundary": boundary_configs, "length": length_configs, "kl": kl_configs,
             "iterations": iterations_configs, "refresh": refresh_configs, "rewards": rewards_configs,
             "ppo": ppo_configs, "precision": precision_configs, "negatives": negatives_configs,
             "normalizers": normalizers_configs, "drgrpo": dr_grpo_configs, "hard": hard_configs,
             "real": real_configs}
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



def generated_runs(experiment: str) -> list[Run]:
    """The runs :data:`GENERATED` defines for ``experiment``, before anything is committed."""
    return [Run(experiment, name, train, evaluation,
                keep_policy=keeps_policy(experiment, train))
            for name, (train, evaluation) in GENERATED[experiment]().items()]



# --- what is committed -----------------------------------------------------------------------------------------


def committed_runs(data: Path = DATA) -> tuple[list[Run], list[str]]:
    """Every run committed under ``data``, and one line per run directory whose configs do not load (by name)."""
    from companion.config import load_config
    from companion.evaluate import EvalConfig
    from companion.train_config import TrainConfig

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
    return (directory / "policy").is_dir() or keeps_policy(experiment, train)


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



def relative_out(run: Run) -> str:
    """Where ``run``'s reproduction goes, relative to the working directory: the ``out`` its committed configs name."""
    return f"runs/reproduce/{run.experiment}/{run.name}"


def model_key(model: str) -> str:
    """What an evaluation-only run evaluates, by the name chapters use: ``base`` for the shipped tiny model, an
    algorithm (``grpo``, ...) or ``distill`` for a seed-0 policy that :func:`boundary_configs` names, else the model
    as given.

    >>> model_key("tiny"), model_key("runs/reproduce/compare/countdown-grpo-seed0/policy")
    ('base', 'grpo')
    """
    names = {evaluation["model"]: name.split("-")[1]
             for configs in (boundary_configs, length_configs, negatives_configs, normalizers_configs, hard_configs,
                             real_configs)
             for name, (train, evaluation) in configs().items() if train is None}
    return names.get(model, model)


def policy_step(model: str) -> int | None:
    """The training step of a policy that ``--policy-every`` kept (``.../policy-step<N>``), else None.

    >>> policy_step("runs/reproduce/length/countdown-grpo-seed0/policy-step25"), policy_step("tiny")
    (25, None)
    """
    name = Path(model).name
    return int(name.removeprefix("policy-step")) if name.startswith("policy-step") else None
