"""Run by tests/test_data_parallel.py in each of two processes under
``accelerate launch --multi_gpu --num_processes 2`` (gloo on a CPU): ``python dp_worker.py MODEL_DIR OUT_DIR``.

1. One update, split over the two processes, against the same update of the whole batch in one process, for every
   length normaliser, with micro-batches, two iterations (SGD, so that the weights move by the gradient), and once
   with no weighted row on the second process.
   And one ppo update (its value head, GAE advantages whitened over both processes' tokens, the critic's loss).
2. Training runs: the weights stay the same in both processes, and a run interrupted and resumed (each process
   its own sampling stream) writes the same records as one run straight through.

The main process writes ``OUT_DIR/result.json``; the test reads and checks it.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import sys
from pathlib import Path

import torch

from companion.algorithms import GroupRule
from companion.batches import Samples
from companion.models import load_policy
from companion.objectives import NORMALIZERS
from companion.ppo import PPO
from companion.records import Clock, weight_metrics
from companion.rollout import Rollout, generate
from companion.tasks import get_task
from companion.train_setup import Reference
from companion.parallel import SINGLE, Processes
from companion.records import TIMING_METRICS
from companion.trainer import TrainConfig, Training, train, update


def rows_of(rollout: Rollout, rows: slice) -> Rollout:
    picked = {f.name: getattr(rollout, f.name) for f in dataclasses.fields(rollout)}
    for name, value in picked.items():
        if isinstance(value, (torch.Tensor, list)):
            picked[name] = value[rows]
    return Rollout(**picked)


def one_step_update(config, model, algorithm, rollout, weights, processes):
    """Phase 4 of the trainer on one batch, with SGD: parameters move by lr x gradient, so they compare."""
    params = algorithm.parameters(model)
    optimizer = torch.optim.SGD(params, lr=config.learning_rate)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda u: 1.0)
    run = Training(config, model, None, None, [], None, None, algorithm, Reference(config, model), params, optimizer,
                   scheduler, processes, Path(config.out))
    metrics = update(run, Samples([], rollout, 0), weights, Clock(), 1)
    metrics["frac_weighted"] = weight_metrics(torch.zeros(len(weights)), weights, processes)["frac_weighted"]
    return metrics, torch.cat([p.detach().reshape(-1) for p in params])


def one_update(config, model, rollout, weights, processes):
    return one_step_update(config, model, GroupRule(config), rollout, weights, processes)


def one_ppo_update(config, model, rollout, rewards, processes):
    algorithm = PPO(config, model)
    torch.nn.init.normal_(algorithm.head.linear.weight, std=0.5, generator=torch.Generator().manual_seed(4))  # V != 0
    weights, _ = algorithm.weights(model, rollout, rewards, processes)
    return one_step_update(config, model, algorithm, rollout, weights, processes)


def checksum(model) -> float:
    return float(sum(p.detach().double().sum() for p in model.parameters()))


def main(model_dir: str, out: str) -> None:
    processes = Processes.launched(torch.device("cpu"))
    assert processes.world == 2, f"launch two processes, got {processes.world}"
    torch.set_num_threads(1)
    result = {"world": processes.world, "updates": []}

    # 1. one update of one batch, split or whole
    torch.manual_seed(0)
    model, tokenizer = load_policy(model_dir, device="cpu")
    task = get_task("countdown")
    prompts = [task.prompt(p) for p in task.generate(4, seed=0, split="train")]
    rollout = generate(model, tokenizer, prompts, num_generations=4, max_completion_length=24)  # the same in both
    weights = torch.randn(16, generator=torch.Generator().manual_seed(1))
    weights[[2, 5, 6]] = 0.0
    half = slice(8 * processes.rank, 8 * (processes.rank + 1))
    for normalizer in NORMALIZERS:
        for idle_second in (False, True):
            w = weights.clone()
            if idle_second:
                w[8:] = 0.0  # the second process has no row with a weight: it runs no micro-batch
            config = TrainConfig(model=model_dir, normalizer=normalizer, micro_batch_size=3, num_iterations=2,
                                 learning_rate=1e-2, max_completion_length=24, out=out)
            whole, whole_params = one_update(config, copy.deepcopy(model), rollout, w, SINGLE)
            split, split_params = one_update(config, copy.deepcopy(model), rows_of(rollout, half), w[half], processes)
            same_everywhere = processes.gather_object(float(split_params.double().sum()))
            result["updates"].append({
                "normalizer": normalizer, "idle_second": idle_second, "whole": whole, "split": split,
                "max_param_diff": (whole_params - split_params).abs().max().item(),
                "moved": (whole_params - torch.cat([p.detach().reshape(-1) for p in model.parameters()
                                                    if p.requires_grad])).abs().max().item(),
                "checksums": same_everywhere})

    rewards = (torch.rand(16, generator=torch.Generator().manual_seed(2)) > 0.5).float()
    config = TrainConfig(model=model_dir, algo="ppo", micro_batch_size=3, num_iterations=2, learning_rate=1e-2,
                         max_completion_length=24, out=out)
    whole, whole_params = one_ppo_update(config, copy.deepcopy(model), rollout, rewards, SINGLE)
    split, split_params = one_ppo_update(config, copy.deepcopy(model), rows_of(rollout, half), rewards[half],
                                         processes)
    result["ppo"] = {"whole": whole, "split": split, "max_param_diff": (whole_params - split_params).abs().max().item(),
                     "moved": (whole_params[:-(model.config.hidden_size + 1)] - torch.cat([p.detach().reshape(-1) for p in model.parameters()
                                                                if p.requires_grad])).abs().max().item(),
                     "checksums": processes.gather_object(float(split_params.double().sum()))}

    # 2. training: straight, and interrupted after step 1 then resumed. A reward the random policy can earn (a
    #    completion holding a '7'), so that groups have a spread and the weights move.
    from companion.tasks import CountdownTask

    CountdownTask.reward = lambda self, completion, problem: float("7" in completion)
    settings = dict(model=model_dir, task="countdown", steps=3, prompts_per_step=4, num_generations=4,
                    max_completion_length=24, train_problems=16, eval_every=2, eval_problems=2,
                    eval_num_generations=2, save_every=1, num_threads=1, device="cpu", learning_rate=1e-2)
    straight = train(TrainConfig(out=f"{out}/straight", **settings), progress=False)
    halves = TrainConfig(out=f"{out}/halves", **settings)
    train(halves, until_step=1, progress=False)
    resumed = train(halves, resume=True, progress=False)
    result["train_checksums"] = processes.gather_object(checksum(straight.model))
    result["resumed_checksums"] = processes.gather_object(checksum(resumed.model))

    def comparable(records):
        return [{k: v for k, v in r.items() if k not in TIMING_METRICS} for r in records]

    result["straight"] = comparable(straight.metrics)
    result["resumed"] = comparable(resumed.metrics)
    if processes.is_main:
        Path(out, "result.json").write_text(json.dumps(result))


if __name__ == "__main__":
    main(*sys.argv[1:3])
