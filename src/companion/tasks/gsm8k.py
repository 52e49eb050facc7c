"""GSM8K: loading the dataset (hub or local file) and reading its gold answers.

A GSM8K record is ``{"question": "...", "answer": "worked solution ... #### 72"}``; the gold
answer is the text after the last ``####``. :func:`load` fetches ``openai/gsm8k`` (config
``"main"``) from the Hugging Face hub when it is reachable, or reads a local JSONL file in the
same format. Reachability is probed first with a short timeout, so an offline machine gets an
actionable error in seconds instead of a long hang in the download code.
"""

from __future__ import annotations

import os
import random

HUB_DATASET = ("openai/gsm8k", "main")
PROBE_TIMEOUT_S = 3.0
"""How long :func:`load` waits for the hub to answer before giving up."""


def extract_gold(answer_text: str) -> str:
    """The gold answer of a GSM8K ``answer`` field: the text after the last ``####``, without
    thousands commas. Raises ``ValueError`` when there is no ``####``.

    >>> extract_gold("Natalia sold 48/2 = <<48/2=24>>24 clips in May.\\n#### 72")
    '72'
    >>> extract_gold("#### 1,250")
    '1250'
    """
    head, sep, gold = answer_text.rpartition("####")
    if not sep or not gold.strip():
        raise ValueError(f"no '#### N' gold answer in {answer_text[-80:]!r}; GSM8K answers end with '#### <number>'")
    return gold.strip().replace(",", "")


def read_records(data_file: str | os.PathLike) -> list[dict]:
    """The ``{"question", "answer"}`` records of a local JSONL file in GSM8K's format, each checked: a ValueError
    naming the file and the line when a line is not JSON, lacks a field, or has no ``#### N`` gold answer, or when
    the file holds no record at all."""
    import json

    if not os.path.isfile(data_file):
        raise FileNotFoundError(f"GSM8K data file {data_file} does not exist; pass a JSONL file with question/answer "
                                "fields")
    shape = '{"question": ..., "answer": "... #### N"}'
    records = []
    with open(data_file, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{data_file}, line {number}, is not JSON ({error.msg}): each line must be {shape}")
            if not isinstance(record, dict) or not {"question", "answer"} <= set(record):
                raise ValueError(f"{data_file}, line {number}, lacks a question or an answer: each line must be {shape}")
            try:
                extract_gold(str(record["answer"]))
            except ValueError as error:
                raise ValueError(f"{data_file}, line {number}: {error}") from None
            records.append({"question": str(record["question"]), "answer": str(record["answer"])})
    if not records:
        raise ValueError(f"{data_file} holds no problem: each line must be {shape}")
    return records


class GSM8KUnavailable(RuntimeError):
    """GSM8K could not be read: no hub and no local file. The message says what to pass instead."""


def load(split: str = "train", *, data_file: str | os.PathLike | None = None):
    """GSM8K's ``split`` as a :class:`datasets.Dataset` with ``question`` and ``answer`` columns.

    With ``data_file``, read that JSONL file (one ``{"question", "answer"}`` object per line)
    as the requested split; otherwise download ``openai/gsm8k`` from the hub. When neither
    works, raise :class:`GSM8KUnavailable` (a ``RuntimeError``) naming both options.

    >>> from companion.shipped import data_dir
    >>> sample = data_dir() / "verifier" / "gsm8k_sample.jsonl"
    >>> ds = load("test", data_file=sample)
    >>> sorted(ds.column_names), extract_gold(ds[0]["answer"])
    (['answer', 'question'], '17')
    """
    import datasets  # heavy; only needed here

    if data_file is not None:
        return datasets.Dataset.from_list(read_records(data_file))
    if split not in ("train", "test"):
        raise ValueError(f'GSM8K has splits "train" and "test", got {split!r}')
    offline_help = (
        "pass a local JSONL in GSM8K's format ({\"question\": ..., \"answer\": \"... #### 72\"}) as data_file= "
        "(--data-file; for training, --eval-data-file holds the held-out ones), "
        f"or run where the Hugging Face hub is reachable to download {HUB_DATASET[0]} ({HUB_DATASET[1]!r})"
    )
    from companion.runs import hub_reachable

    if not hub_reachable(PROBE_TIMEOUT_S):
        raise GSM8KUnavailable(f"cannot load GSM8K: the Hugging Face hub is unreachable (or offline mode is set); {offline_help}")
    try:
        return datasets.load_dataset(*HUB_DATASET, split=split)
    except Exception as err:  # the hub answered but the download failed; say what to do instead
        raise GSM8KUnavailable(f"cannot load GSM8K from the hub ({type(err).__name__}: {err}); {offline_help}") from err


def generate(n_problems: int | None = None, *, seed: int = 0, split: str = "train", data_file=None) -> list[dict]:
    """``n_problems`` GSM8K records of ``split`` (all when ``None``), shuffled by ``seed``, as
    ``{"question", "answer"}`` dicts: the same shape as :func:`companion.tasks.tinygsm.generate`.

    >>> from companion.shipped import data_dir
    >>> sample = data_dir() / "verifier" / "gsm8k_sample.jsonl"
    >>> len(generate(3, seed=0, data_file=sample)), len(generate(seed=0, data_file=sample)) >= 8
    (3, True)
    """
    records = [{"question": r["question"], "answer": r["answer"]} for r in load(split, data_file=data_file)]
    random.Random(seed).shuffle(records)
    if n_problems is None:
        return records
    if not 0 <= n_problems <= len(records):
        raise ValueError(f"asked for {n_problems} problems but the {split} split has {len(records)}")
    return records[:n_problems]
