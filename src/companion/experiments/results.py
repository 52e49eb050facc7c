"""The committed experiments read back for the book: one record per run, with its config and its results."""

from __future__ import annotations

import json
from pathlib import Path

from companion.experiments.catalogue import DATA, committed_runs, model_key, policy_step, relative_out
from companion.runs import RunError, read_jsonl



RUN_FIELDS = ("seed", "learning_rate", "beta", "num_iterations", "refresh_every", "lora", "load_in_4bit", "dtype")
"""The fields of a trained run's config that its record carries as they are (None for an evaluation-only run)."""


def load_results(experiment: str, data: Path = DATA) -> list[dict]:
    """The committed runs of ``experiment`` that have results, as records for the book's figures.

    Each record: ``name``, ``algo`` (``distill`` for a run on the teacher's traces; for an evaluation-only run the
    model's name in the chapters, :func:`companion.experiments.catalogue.model_key`), ``task``, :data:`RUN_FIELDS`,
    ``normalizer`` (the one in use), ``reward`` (the shape in use), ``gae_lambda`` (ppo's, else None), ``steps``
    (trained: the run's, or a kept policy's step for an evaluation-only run; 0 for the base), ``config`` (the run's
    :class:`companion.train_config.TrainConfig`, None for an evaluation-only run), ``records`` (``metrics.jsonl``),
    ``summary`` (the final evaluation's ``summary.json``) and ``rows`` (its per-problem rows: ``index``, ``rewards``,
    ``lengths``), with the evaluation's ``temperature``, ``top_p`` and ``num_generations``.
    """
    runs, broken = committed_runs(data)
    if broken:
        raise RunError("; ".join(broken))
    trained = {f"{relative_out(r)}/policy": r.steps for r in runs if r.train is not None}  # final policy -> steps
    results = []
    for run in runs:
        if run.experiment != experiment or not (run.committed / "eval" / "summary.json").exists():
            continue
        e = run.eval
        scored = {"temperature": e["temperature"], "top_p": e["top_p"], "num_generations": e["num_generations"],
                  "summary": json.loads((run.committed / "eval" / "summary.json").read_text()),
                  "rows": read_jsonl(run.committed / "eval" / "problems.jsonl")}
        if run.train is None:  # a model as it is: the base, or (chapter 7) a committed policy evaluated again
            results.append({"name": run.name, "algo": model_key(e["model"]), "task": e["task"],
                            **dict.fromkeys(RUN_FIELDS + ("normalizer", "reward", "gae_lambda", "config")),
                            "steps": policy_step(e["model"]) or trained.get(e["model"], 0), "records": [], **scored})
        else:
            results.append({"name": run.name, **_trained(run.train),
                            "records": read_jsonl(run.committed / "metrics.jsonl"), **scored})
    return results


def _trained(fields: dict) -> dict:
    """What a trained run's record says of its config."""
    from companion.tasks import REWARDS
    from companion.train_config import TrainConfig

    config = TrainConfig(**fields)
    return {"algo": "distill" if config.source == "teacher" else config.algo, "task": config.task,
            **{name: getattr(config, name) for name in RUN_FIELDS}, "normalizer": config.loss_normalizer,
            "reward": config.reward or next(iter(REWARDS[config.task])),
            "gae_lambda": config.gae_lambda if config.algo == "ppo" else None, "steps": config.steps,
            "config": config}
