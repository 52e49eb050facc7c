"""Shared pytest fixtures: a tiny random Qwen2 policy with the project's character tokenizer.

``tiny_policy_dir`` saves one random model + tokenizer per test session (``save_pretrained``), so code that
loads from a directory (``AutoModelForCausalLM.from_pretrained``, ``companion.models.load_policy``) can be
tested without the shipped checkpoint. ``tiny_policy`` loads a fresh copy from it for each test, so a test
may train the model without changing what the next test sees.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

CHECKOUT = Path(__file__).resolve().parents[1]


def copy_source(dest: Path) -> Path:
    """What a wheel is built from (pyproject, README, src/, data/), copied to ``dest``: building or installing from the
    copy writes nothing into the checkout."""
    dest.mkdir(parents=True)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(CHECKOUT / name, dest / name)
    for name in ("src", "data"):
        shutil.copytree(CHECKOUT / name, dest / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return dest

def load_bench(name: str):
    """The script ``bench/<name>.py`` as a module (the benches are scripts, not part of the package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, CHECKOUT / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def script_tables_in_readme(script: str, capsys) -> list[str]:
    """Run ``scripts/<script>.py`` and check that every table line it prints is in README.md (so the README's
    table changes with the committed runs it is made from); the lines, for further checks."""
    import runpy

    runpy.run_path(str(CHECKOUT / "scripts" / f"{script}.py"), run_name="__main__")
    printed = [line for line in capsys.readouterr().out.splitlines() if line.startswith("|")]
    readme = (CHECKOUT / "README.md").read_text().splitlines()
    missing = [line for line in printed if line not in readme]
    assert not missing, f"rerun scripts/{script}.py into README.md: {missing[:2]}"
    return printed


# ~80k parameters: big enough to exercise every Qwen2 code path (grouped-query attention, rotary positions,
# tied embeddings, the KV cache), small enough that a forward/backward pass takes milliseconds.
TINY_RANDOM_SIZES = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         intermediate_size=128, max_position_embeddings=384)


@pytest.fixture
def one_thread():
    """One torch thread for the test: a tiny model gains nothing from a second one, and two threads on two shared
    cores spin against other processes and run several times slower."""
    from companion.runs import torch_threads

    with torch_threads(1):
        yield


@pytest.fixture(scope="session")
def tiny_policy_dir(tmp_path_factory):
    """A directory holding a random tiny Qwen2 (safetensors) and the character tokenizer."""
    from companion.tiny import build_tokenizer, random_model

    path = tmp_path_factory.mktemp("tiny-random-policy")
    tokenizer = build_tokenizer()
    random_model(tokenizer, seed=0, **TINY_RANDOM_SIZES).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture
def tiny_policy(tiny_policy_dir):
    """``(model, tokenizer)``: a fresh copy of the random tiny policy, in train mode, on the CPU."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_policy_dir)
    model.train()
    return model, AutoTokenizer.from_pretrained(tiny_policy_dir)
