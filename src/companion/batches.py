"""Phase 1 of the training step, sample: where a step's problems and completions come from.

A *batch source* is chosen once, when a run starts, and the step asks it for each step's batch
(:meth:`sample`); what it keeps between steps is in the checkpoint (:attr:`state`). Three sources:

* :class:`PolicySource`: the policy samples G completions of each of the step's problems (RL, F-ISFT);
* :class:`TeacherSource`: the task's exact solver writes them (``--source teacher``: distillation);
* :class:`RefreshingSource`: every K steps the policy of that moment samples the next K steps' batches at once,
  and the steps between train on them (``--refresh-every K``: chapter 9's static data when K >= steps).

The problems come from a :class:`ProblemStream`, the same order for every algorithm of one seed. Under data
parallelism every process draws the step's problems and samples its own share of them.
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass

import torch

from companion.decode import problem_seed
from companion.rollout import Rollout, generate, teacher_rollout


class ProblemStream:
    """Training problems in a reproducible order: a fixed pool, reshuffled at every epoch.

    ``position`` (problems handed out so far) is all a checkpoint needs to continue the same stream.

    >>> stream = ProblemStream(["a", "b", "c"], seed=0)
    >>> first = stream.take(2) + stream.take(2)
    >>> again = ProblemStream(["a", "b", "c"], seed=0, position=2).take(2)
    >>> first[2:] == again, stream.position
    (True, 4)
    """

    def __init__(self, problems: list, *, seed: int, position: int = 0):
        self.problems, self.seed, self.position = problems, seed, position

    def _order(self, epoch: int) -> list[int]:
        order = list(range(len(self.problems)))
        random.Random(self.seed * 1_000_003 + epoch).shuffle(order)
        return order

    def take(self, n: int) -> list:
        batch = []
        for _ in range(n):
            epoch, index = divmod(self.position, len(self.problems))
            batch.append(self.problems[self._order(epoch)[index]])
            self.position += 1
        return batch


@dataclass
class Samples:
    """One step's batch, as phase 1 hands it on: this process's problems and their G completions each."""

    problems: list[dict]
    rollout: Rollout
    generated_tokens: int  # completion tokens sampled for this step's call (0: taken from a pool sampled earlier)
    record: dict = dataclasses.field(default_factory=dict)  # what the step's record says of the batch's origin


class PolicySource:
    """The policy samples ``num_generations`` completions of each of the step's problems, with the global torch
    generator (seeded by the run; its state is in the checkpoint)."""

    state = None  # nothing beyond the stream's position and the generators

    def __init__(self, config, model, tokenizer, task, stream: ProblemStream, processes):
        self.config, self.model, self.tokenizer, self.task = config, model, tokenizer, task
        self.stream, self.processes = stream, processes

    def problems(self) -> tuple[list[dict], list[int]]:
        """The step's problems (every process draws them all): this process's share of them, and their positions
        in the run's stream of problems."""
        start = self.stream.position
        problems = self.stream.take(self.config.prompts_per_step)
        return self.processes.share(problems), self.processes.share(list(range(start, start + len(problems))))

    def prompts(self, problems: list[dict]) -> list[str]:
        """The problems as the model is prompted with them (``prompt_style``: plain, or the chat template)."""
        return [self.task.prompt(p, style=self.config.prompt_style, tokenizer=self.tokenizer) for p in problems]

    def draws(self, positions: list[int]) -> dict:
        """How the sampler draws (``fast_sampler``): each problem's tokens from uniforms seeded by the run's seed and
        the problem's position in the stream, so that a sample depends on nothing else (not the batching, the
        processes or the global generator); or, as every run committed before that, the exponential race on the
        global generator (bit for bit ``model.generate``'s)."""
        if not self.config.fast_sampler:
            return {}
        return {"fast": True, "seeds": [problem_seed(self.config.seed, position) for position in positions]}

    def sample(self, step: int) -> Samples:
        c, (problems, positions) = self.config, self.problems()
        rollout = generate(self.model, self.tokenizer, self.prompts(problems),
                           num_generations=c.num_generations, max_completion_length=c.max_completion_length,
                           temperature=c.temperature, top_p=c.top_p, **self.draws(positions))
        return Samples(problems, rollout, int(rollout.completion_mask.sum()))

    def load_state(self, state, device) -> None:
        pass


class TeacherSource(PolicySource):
    """The task's exact solver writes ``num_generations`` clean traces of each problem (each its own random solution
    path, drawn from a seed of the run's seed, the step and the process: an interrupted run redraws the same)."""

    def sample(self, step: int) -> Samples:
        c, (problems, _), world, rank = self.config, self.problems(), self.processes.world, self.processes.rank
        device = next(self.model.parameters()).device
        rollout = teacher_rollout(self.tokenizer, c.task, problems, self.prompts(problems),
                                  num_generations=c.num_generations, max_completion_length=c.max_completion_length,
                                  seed=(c.seed * 1_000_003 + step) * world + rank, device=device)
        return Samples(problems, rollout, int(rollout.completion_mask.sum()))


class RefreshingSource:
    """Every ``every`` steps, ``source`` samples the batches of the next ``every`` steps (no further than the run's
    last step) with the policy of that moment; each step trains on the next batch of that pool, and its record says
    which step's policy sampled it (``sampled_at``)."""

    def __init__(self, source: PolicySource, *, every: int, steps: int):
        self.source, self.every, self.steps = source, every, steps
        self.pool: list[dict] = []  # {"problems", "rollout", "sampled_at"}, the batches not trained on yet

    def sample(self, step: int) -> Samples:
        generated = 0
        if not self.pool:
            for _ in range(min(self.every, self.steps - step + 1)):
                batch = self.source.sample(step)
                generated += batch.generated_tokens
                self.pool.append({"problems": batch.problems, "rollout": batch.rollout, "sampled_at": step})
        batch = self.pool.pop(0)
        return Samples(batch["problems"], batch["rollout"], generated, {"sampled_at": batch["sampled_at"]})

    @property
    def state(self) -> dict:
        return {"pool": self.pool}

    def load_state(self, state: dict, device) -> None:
        self.pool = [{"problems": b["problems"], "rollout": _rollout_to(b["rollout"], device),
                      "sampled_at": b["sampled_at"]} for b in state["pool"]]


def batch_source(config, model, tokenizer, task, stream: ProblemStream, processes):
    """The source ``config`` asks for (``source``, ``refresh_every``)."""
    kind = TeacherSource if config.source == "teacher" else PolicySource
    source = kind(config, model, tokenizer, task, stream, processes)
    return RefreshingSource(source, every=config.refresh_every, steps=config.steps) if config.refresh_every > 1 else source


def _rollout_to(rollout: Rollout, device) -> Rollout:
    """A rollout (from a checkpoint's pool) with its tensors on ``device``."""
    return dataclasses.replace(rollout, **{f.name: getattr(rollout, f.name).to(device)
                                           for f in dataclasses.fields(rollout)
                                           if isinstance(getattr(rollout, f.name), torch.Tensor)})
