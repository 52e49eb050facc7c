"""A training run's checkpoint: everything exact resume needs, in one file written atomically.

``checkpoint.pt`` holds the trainable weights, the optimizer and scheduler states, every random generator's state
(each data-parallel process's own), the step and the position in the problem stream, and the state of the parts
that keep one: the batch source's pool of samples (``--refresh-every``) and PPO's value head. N steps straight and
N/2 + resume + N/2 give the same records, bit for bit on a CPU (``tests/test_trainer.py``).

The checkpoint before it is kept too (``checkpoint.previous.pt``): a resume falls back to it when the last one cannot
be read (:func:`usable_checkpoint`), and a run whose policy collapsed goes back to it when the last one holds the
update that broke the policy (:func:`roll_back`).
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch

from companion.parallel import SINGLE, Processes
from companion.runs import RunError

CHECKPOINT, PREVIOUS = "checkpoint.pt", "checkpoint.previous.pt"


def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: Path, *, model, optimizer, scheduler, step: int, data_position: int,
                    processes: Processes = SINGLE, parts: dict | None = None) -> None:
    """Write the checkpoint atomically (a crash mid-write leaves the previous one). Over several processes, every
    one must call it (each adds its RNG states); the main process writes. ``parts``: the extra state of the run's
    batch source and algorithm, by name (``pool``, ``value_head``), each saved only when not None."""
    from companion.models import trainable_state_dict

    rng = _rng_state()
    if processes.world > 1:
        rng = {"by_process": processes.gather_object(rng)}
    if not processes.is_main:
        return
    state = dict(step=step, data_position=data_position, model=trainable_state_dict(model),
                 optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(), rng=rng)
    state.update({name: value for name, value in (parts or {}).items() if value is not None})
    partial = path.with_name(path.name + ".partial")
    try:
        torch.save(state, partial)
    except (OSError, RuntimeError) as error:  # torch reports an unwritable file as a RuntimeError
        raise RunError(f"cannot write the checkpoint {partial} ({error}): is the run directory writable, and is "
                       "there room on its disk? Make it so, then continue with `companion train --resume "
                       f"{path.parent}`") from error
    if path.exists():
        path.replace(path.with_name(PREVIOUS))
    partial.replace(path)


def _step_of(path: Path) -> int:
    """The step of a checkpoint file, read without loading its tensors (a RunError when it cannot be read)."""
    import pickle
    import zipfile

    try:
        return int(torch.load(path, map_location="cpu", weights_only=False, mmap=True)["step"])
    except (OSError, RuntimeError, EOFError, KeyError, ValueError, pickle.UnpicklingError,
            zipfile.BadZipFile) as error:
        raise RunError(f"{path} cannot be read: it is damaged or cut short ({type(error).__name__})") from None


def usable_checkpoint(out: Path) -> tuple[Path, int, str | None]:
    """The checkpoint a resume of the run in ``out`` starts from, its step, and a note when it is not the last one:
    ``checkpoint.pt``, or ``checkpoint.previous.pt`` when the last cannot be read (a crash or a full disk while it
    was written). A RunError saying what to do when neither can."""
    problems = []
    for name in (CHECKPOINT, PREVIOUS):
        if (out / name).exists():
            try:
                step = _step_of(out / name)
            except RunError as error:
                problems.append(str(error))
                continue
            note = f"{'; '.join(problems)}: resuming from {name} (step {step}) instead" if problems else None
            return out / name, step, note
    if problems:
        raise RunError(f"{'; '.join(problems)}, and no earlier checkpoint can be: start the run again with "
                       "--overwrite")
    raise RunError(f"nothing to resume in {out}: it has no {CHECKPOINT} (start a new run there with --overwrite)")


def roll_back(out: Path) -> str:
    """Make the checkpoint before the last one the run's checkpoint again (the last one holds a broken policy);
    returns what was done, in words."""
    last, previous = out / CHECKPOINT, out / PREVIOUS
    if previous.exists():
        previous.replace(last)
        return f"{last} holds step {_step_of(last)} again, from before the update that broke the policy"
    if last.exists():
        last.replace(out / "checkpoint.collapsed.pt")
        return (f"{last} held the broken policy and no earlier checkpoint was kept: it is now checkpoint.collapsed.pt, "
                "and the run can only start again (--overwrite)")
    return "no checkpoint was saved yet"


def load_checkpoint(path: Path, *, model, optimizer, scheduler, processes: Processes = SINGLE,
                    parts: tuple[str, ...] = ()) -> dict:
    """Restore a checkpoint written by :func:`save_checkpoint`; returns ``{"step", "data_position"}`` and each of
    ``parts`` the run keeps (None where the checkpoint holds none). A checkpoint of another kind of run (other
    trainable parameters, another process count, with or without a value head) is refused, saying why."""
    state = torch.load(path, map_location="cpu", weights_only=False)  # our own file: RNG states are pickled
    saved = len(state["rng"]["by_process"]) if "by_process" in state["rng"] else 1
    if saved != processes.world:
        raise RunError(f"{path} was saved by {saved} process(es) and this launch has {processes.world}: each "
                       f"process resumes its own sampling stream, so resume with {saved}")
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    if set(state["model"]) != trainable:
        raise RunError(f"{path} holds weights for other parameters than this model trains "
                       "(full-parameter vs LoRA, or another model): resume with the run's own config")
    if ("value_head" in parts) != ("value_head" in state):
        raise RunError(f"{path} was saved by a run {'with' if 'value_head' in state else 'without'} a value head "
                       "(--algo ppo): resume with the run's own config")
    device = next(model.parameters()).device
    with torch.no_grad():
        params = dict(model.named_parameters())
        for name, value in state["model"].items():
            params[name].copy_(value.to(device))
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    _set_rng_state(state["rng"]["by_process"][processes.rank] if saved > 1 else state["rng"])
    return {"step": state["step"], "data_position": state["data_position"],
            **{name: state.get(name) for name in parts}}
