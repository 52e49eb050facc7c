"""Data parallelism, kept out of the training step: the processes that train one run together.

One process is the common case (a CPU, one GPU, Colab) and every method here is then the identity, so the step
calls them without asking how many processes there are. Under ``accelerate launch --multi_gpu`` (or ``torchrun``)
each process samples its share of a step's prompts (:meth:`Processes.share`), runs its share of the update, and
the gradients are summed once per optimizer step (:meth:`Processes.sum_gradients_`), which every process then
takes alike, so the weights stay the same everywhere (``tests/test_data_parallel.py``).

Why not DDP (``accelerator.prepare(model)``): the update runs only the rows with a weight, so processes run
different numbers of micro-batches, and DDP's per-backward all-reduce would wait forever for the process with
fewer; one sum of the gradients per optimizer step does not.
"""

from __future__ import annotations

import dataclasses
import os

import torch

from companion.config import need


class Processes:
    """This process alone, or the data-parallel ones a launcher started (one per GPU; gloo processes on a CPU).
    The communication is accelerate's (``reduce``, ``gather``, ``broadcast``)."""

    def __init__(self, world: int = 1, rank: int = 0, state=None):
        self.world, self.rank, self.state = world, rank, state

    @classmethod
    def launched(cls, device: torch.device) -> "Processes":
        """The processes of this launch: one, unless a launcher set ``WORLD_SIZE`` above 1."""
        if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
            return cls()
        from accelerate import PartialState

        state = PartialState(cpu=device.type == "cpu")
        return cls(state.num_processes, state.process_index, state)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def device(self) -> torch.device | None:
        """This process's GPU under a multi-GPU launch (each process its own), else None."""
        if self.state is None or self.state.device.type != "cuda":
            return None
        return self.state.device

    def share(self, items: list) -> list:
        """This process's consecutive share of ``items`` (all of them for one process).

        >>> Processes(2, 1).share(["a", "b", "c", "d"]), SINGLE.share(["a", "b"])
        (['c', 'd'], ['a', 'b'])
        """
        size = len(items) // self.world
        return items[self.rank * size:(self.rank + 1) * size]

    def sum(self, values: torch.Tensor) -> torch.Tensor:
        """The element-wise sum over processes (``values`` itself for one)."""
        if self.world == 1:
            return values
        from accelerate.utils import reduce

        return reduce(values, reduction="sum")

    def gather(self, values: torch.Tensor) -> torch.Tensor:
        """Every process's ``values`` (the same shape on each), concatenated along dim 0 in process order."""
        if self.world == 1:
            return values
        from accelerate.utils import gather

        return gather(values)

    def gather_object(self, value) -> list:
        if self.world == 1:
            return [value]
        from accelerate.utils import gather_object

        return gather_object([value])

    def broadcast_(self, tensors) -> None:
        """Overwrite each tensor with the main process's (in place)."""
        if self.world == 1:
            return
        from accelerate.utils import broadcast

        for t in tensors:
            t.data.copy_(broadcast(t.data.contiguous(), from_process=0))

    def sum_gradients_(self, params: list) -> None:
        """Replace each parameter's gradient by its sum over processes: one all-reduce of all of them."""
        if self.world == 1:
            return
        flat = self.sum(torch.cat([p.grad.reshape(-1) for p in params]))
        offset = 0
        for p in params:
            p.grad.copy_(flat[offset:offset + p.grad.numel()].view_as(p.grad))
            offset += p.grad.numel()

    def token_mean(self, loss: float, stats: dict, tokens: float, keys: tuple) -> tuple[float, dict]:
        """One update's loss and token-weighted diagnostics (``keys``) of the whole batch, from each process's
        share: the loss shares add up, the diagnostics average weighted by the tokens each process ran (absent
        where none ran)."""
        if self.world == 1:
            return loss, stats
        local = [loss, tokens] + [stats.get(k, 0.0) * tokens for k in keys] + [float(k in stats) for k in keys]
        summed = self.sum(torch.tensor(local, dtype=torch.float64)).tolist()
        loss, tokens_all = summed[0], summed[1]
        weighted, present = summed[2:2 + len(keys)], summed[2 + len(keys):]
        return loss, {k: w / tokens_all for k, w, n in zip(keys, weighted, present) if n > 0 and tokens_all > 0}

    def wait(self) -> None:
        if self.world > 1:
            self.state.wait_for_everyone()


SINGLE = Processes()


def check_processes(config, processes: Processes):
    """``config`` (a :class:`companion.train_config.TrainConfig`) with the launch's process count, after checking
    that the run was set for it and that a step's prompts split evenly."""
    need(config.num_processes in (1, processes.world),
         f"the run is set for {config.num_processes} data-parallel processes (--num-processes, or the config.json "
         f"of a run being resumed) but this launch started {processes.world}: launch {config.num_processes} "
         f"(accelerate launch --multi_gpu --num_processes {config.num_processes} -m companion.cli train ...), or "
         f"leave --num-processes out of a new run (the launch sets it)")
    need(config.refresh_every == 1 or processes.world == 1,
         f"refresh_every > 1 runs in one process (its pool of samples is not split over processes): launch one "
         f"process, or use --refresh-every 1 across {processes.world}")
    need(config.prompts_per_step % processes.world == 0,
         f"prompts_per_step ({config.prompts_per_step}) must split evenly over the {processes.world} processes, "
         f"each sampling its own prompts: use a multiple of {processes.world}")
    return dataclasses.replace(config, num_processes=processes.world)
