"""The committed experiments: what they are (:mod:`~companion.experiments.catalogue`), ``companion reproduce``
(:mod:`~companion.experiments.reproduce`) and their results read back for the book
(:mod:`~companion.experiments.results`). The names chapters and scripts use are handed on here."""

from companion.experiments import catalogue, reproduce, results  # noqa: F401
from companion.experiments.catalogue import (  # noqa: F401
    ALGOS, BOUNDARY_MODELS, BOUNDARY_SAMPLING, COMPARISON, DATA, FINAL_EVAL, GAP_EVERY, GENERATED, ITERATIONS,
    ITERATIONS_COUNTDOWN, KL_ALGOS, KL_BETAS, KL_COUNTDOWN_BETA, LENGTH_STEPS, LORA_RATE, OBJECTIONS_TASK, OTHERS,
    POLICY_SEEDS, PPO_LAMBDAS, PPO_TASK, PRECISION_TASK, PRECISION_VARIANTS, REFRESH, REWARD_SHAPES, REWARD_TASK,
    RUNS, SEEDS, STABILITY_RATES, STABILITY_SEEDS, STABILITY_VARIANTS, SWEEP, TASKS, Run, boundary_configs,
    committed_runs, comparison_configs, distill_configs, generated_runs, iterations_configs, kl_configs,
    length_configs, model_key, policy_for, policy_step, ppo_configs, precision_configs, producer, refresh_configs,
    rewards_configs, select, stability_configs)
from companion.experiments.reproduce import (  # noqa: F401
    compare, cost_seconds, describe, init, main, other_experiments, progress_of, reproduce_other, run_one, save)
from companion.experiments.results import load_results  # noqa: F401
