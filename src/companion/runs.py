"""The run layer: what every command that writes a run directory shares.

``companion pretrain``, ``companion train`` and ``companion eval`` each write a directory of results that
took minutes or hours to make. They guard it the same way, once, here:

* :func:`open_run_dir` refuses to mix two runs in one directory and never deletes a file no run wrote;
* :func:`run_lock` keeps a second process out of a directory a run is writing (the operating system releases the
  lock when the process ends, however it ends, so a killed run never leaves it stuck);
* :func:`write_atomically` and :func:`append_jsonl` leave either the old file or the new one after a crash,
  never half of one (a half-written last line of a JSONL file is dropped by :func:`read_jsonl`);
* :func:`torch_threads` sets the torch thread count for a run and restores the caller's afterwards
  (:func:`auto_threads` chooses one when the run leaves it to the package);
* :func:`hub_reachable` asks whether the Hugging Face hub answers, in seconds rather than a long hang.

Every error about a run's inputs is a :class:`RunError` whose message says what to change; the commands
exit with :data:`BAD_INPUT` on it.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable
from urllib.parse import urlparse

BAD_INPUT = 2
"""Exit code of every ``companion`` command for bad input (a bad option, a run directory that does not fit),
as argparse uses for a bad command line."""

CONFIG_FILE = "config.json"


class RunError(ValueError):
    """The run's options or its output directory do not fit the request; the message says what to change."""


# --- the run directory ------------------------------------------------------------------------------------


def open_run_dir(out: str | os.PathLike, config: dict, files: Iterable[str], *, overwrite: bool = False,
                 may_differ: Iterable[str] = (), resume: bool | None = None,
                 config_file: str = CONFIG_FILE, defaults: dict | None = None) -> tuple[Path, bool]:
    """Claim ``out`` for a run whose resolved config is ``config``; returns ``(directory, resuming)``.

    ``files`` are the names the run writes there (``config_file``, its saved config, among them); only they are
    ever deleted.
    With ``overwrite`` they are deleted and the run starts afresh. Otherwise a directory holding a run is
    resumed when its saved config equals ``config`` in every field but ``may_differ``, and refused when it
    differs; a field the saved config lacks (written before the field existed) reads as its value in ``defaults``. ``resume=True`` demands a run to resume; ``resume=False`` refuses any run already there.

    >>> import tempfile
    >>> out = Path(tempfile.mkdtemp()) / "run"
    >>> open_run_dir(out, {"steps": 3}, ["config.json"])[1]
    False
    >>> _ = (out / "config.json").write_text('{"steps": 3}')
    >>> open_run_dir(out, {"steps": 3}, ["config.json"])[1]
    True
    >>> open_run_dir(out, {"steps": 4}, ["config.json"])
    Traceback (most recent call last):
    ...
    companion.runs.RunError: ... holds a run with a different config (steps: 3 there, 4 now): use another --out, or --overwrite to replace it
    """
    out, files = Path(out), tuple(files)
    if out.exists() and not out.is_dir():
        raise RunError(f"--out {out} is a file, not a directory: choose another --out")
    present = [name for name in files if (out / name).exists()]
    if overwrite and resume:
        raise RunError("--overwrite replaces the run that --resume would continue: pass one of them")
    if overwrite:
        for name in present:
            target = out / name
            shutil.rmtree(target) if target.is_dir() else target.unlink()
        present = []
    if not present:
        if resume:
            raise RunError(f"nothing to resume in {out}: it holds no run (start one there without --resume)")
        out.mkdir(parents=True, exist_ok=True)
        return out, False
    if resume is False:
        raise RunError(f"{out} already holds a run ({', '.join(present)}): pass --resume {out} to continue it, "
                       "--overwrite to replace it, or choose another --out")
    if config_file not in present:
        raise RunError(f"{out} holds {', '.join(present)} but no {config_file}, so it cannot be resumed safely: use "
                       "another --out, or --overwrite to replace it")
    saved = {**(defaults or {}), **json.loads((out / config_file).read_text())}
    differences = config_differences(saved, config, ignore=may_differ)
    if differences:
        raise RunError(f"{out} holds a run with a different config ({'; '.join(differences)}): use another --out, or "
                       "--overwrite to replace it")
    return out, True


def config_differences(saved: dict, current: dict, *, ignore: Iterable[str] = ()) -> list[str]:
    """``"field: saved there, current now"`` for every field (but ``ignore``) in which two configs differ.

    >>> config_differences({"n": 4, "seed": 0}, {"n": 8, "seed": 0})
    ['n: 4 there, 8 now']
    """
    saved, current = jsonable(saved), jsonable(current)
    names = sorted((set(saved) | set(current)) - set(ignore))
    return [f"{name}: {saved.get(name)!r} there, {current.get(name)!r} now" for name in names
            if saved.get(name) != current.get(name)]


def jsonable(value):
    """``value`` as it reads back from JSON (tuples become lists)."""
    return json.loads(json.dumps(value))


@contextmanager
def run_lock(out: str | os.PathLike, command: str):
    """Hold the run directory ``out`` (created if missing) while the block runs: an advisory ``flock`` on the
    directory itself, which the operating system releases when this process ends, however it ends, and which leaves
    no file behind. A second process (a second writer, or a ``--resume`` of a run still going) gets a
    :class:`RunError` saying so."""
    import fcntl

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise RunError(f"--out {out} is a file, not a directory: choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    handle = os.open(out, os.O_RDONLY)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(handle)
        raise RunError(f"{out} is in use by another process (a {command} or another companion command writing "
                       "there): wait for it to end, or stop it, and run this again (two commands writing one run "
                       "directory would mix their records)") from None
    try:
        yield out
    finally:
        fcntl.flock(handle, fcntl.LOCK_UN)
        os.close(handle)


# --- files that survive a crash ----------------------------------------------------------------------------


def write_atomically(path: str | os.PathLike, text: str) -> None:
    """Replace ``path`` by ``text`` in one step: a crash leaves the old file or the new one."""
    path = Path(path)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text)
    os.replace(partial, path)


def append_jsonl(f, record: dict) -> None:
    """Append one JSON line to the open file ``f`` and make it durable before going on."""
    f.write(json.dumps(record, allow_nan=False) + "\n")
    f.flush()
    os.fsync(f.fileno())


def read_jsonl(path: str | os.PathLike, *, repair: bool = False) -> list[dict]:
    """The records of a JSONL file (none if it does not exist). A last line without its newline is what a
    crash mid-write leaves: it is skipped, and with ``repair`` cut off the file so appending can go on.

    When ``path`` is missing but ``path.gz`` is there (committed results are stored compressed,
    :func:`write_jsonl_gz`), that is read instead.
    """
    path = Path(path)
    packed = path.with_name(path.name + ".gz")
    if not path.exists() and packed.exists():
        import gzip

        path, data = packed, gzip.decompress(packed.read_bytes())
        repair = False  # a compressed file is written whole, never appended to
    elif not path.exists():
        return []
    else:
        data = path.read_bytes()
    complete = data[: data.rfind(b"\n") + 1]  # everything up to the last newline
    if repair and len(complete) < len(data):
        with path.open("r+b") as f:
            f.truncate(len(complete))
            os.fsync(f.fileno())
    records = []
    for number, line in enumerate(complete.decode().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as error:
            raise RunError(f"{path}, line {number}, is not valid JSON ({error.msg}): the file was edited or "
                           "corrupted; fix or delete that line, or rerun with --overwrite") from None
    return records


def write_jsonl_gz(source: str | os.PathLike, target: str | os.PathLike) -> Path:
    """Compress the JSONL file ``source`` to ``target`` (its name ending ``.jsonl.gz``), byte for byte the same for
    the same content (no timestamp in the header), so that committing it again changes nothing."""
    import gzip

    target = Path(target)
    target.write_bytes(gzip.compress(Path(source).read_bytes(), compresslevel=9, mtime=0))
    return target


# --- the machine -------------------------------------------------------------------------------------------


@contextmanager
def torch_threads(num_threads: int):
    """Run the block with ``num_threads`` torch CPU threads (0 leaves the count as it is), then restore it."""
    import torch

    previous = torch.get_num_threads()
    if num_threads:
        torch.set_num_threads(num_threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def auto_threads(parameters: int) -> int:
    """The torch thread count for a run that leaves it to the package (``--num-threads 0``): one for a model of a few
    million parameters or less, whose steps are many small operations that a second thread slows down (and, on a
    busy machine, stalls: one generation of the tiny model took 82 s at two threads against ~1 s at one, with other
    work on the cores); otherwise one per core that the machine's load leaves free, and at least one.

    >>> auto_threads(625_000)
    1
    """
    if parameters < 10_000_000:
        return 1
    cores = os.cpu_count() or 1
    busy = int(os.getloadavg()[0] + 0.5) if hasattr(os, "getloadavg") else 0
    return max(1, cores - busy)


@contextmanager
def quiet_progress():
    """transformers' progress bars ("Loading weights", "Writing model shards") off while a model loads or saves:
    they say nothing a reader needs, and a notebook keeps them in its saved outputs."""
    from transformers.utils import logging as hf_logging

    shown = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if shown:
            hf_logging.enable_progress_bar()


def available_memory() -> int | None:
    """The memory this machine can give a new allocation now (Linux's MemAvailable, in bytes), or None elsewhere."""
    try:
        with open("/proc/meminfo") as f:
            fields = dict(line.split(":", 1) for line in f)
        return int(fields["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return None


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face hub accepts a TCP connection within ``timeout`` seconds.

    False at once in offline mode (``HF_HUB_OFFLINE`` or ``HF_DATASETS_OFFLINE``). The probe runs in a daemon
    thread with a deadline, because name resolution ignores socket timeouts and can hang for minutes.
    """
    import socket

    if any(os.environ.get(name, "0") not in ("0", "") for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")):
        return False
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    result: list[bool] = []

    def connect():
        try:
            socket.create_connection((host, 443), timeout=timeout).close()
            result.append(True)
        except OSError:
            result.append(False)

    worker = threading.Thread(target=connect, daemon=True)
    worker.start()
    worker.join(timeout)
    return bool(result and result[0])
