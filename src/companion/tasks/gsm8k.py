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
        if not os.path.isfile(data_file):
            raise FileNotFoundError(f"GSM8K data file {data_file} does not exist; pass a JSONL file with question/answer fields")
        ds = datasets.load_dataset("json", data_files=str(data_file), split="train")
        missing = {"question", "answer"} - set(ds.column_names)
        if missing:
            raise ValueError(f"{data_file} lacks the field(s) {sorted(missing)}; each line must be {{\"question\": ..., \"answer\": \"... #### N\"}}")
        return ds
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
