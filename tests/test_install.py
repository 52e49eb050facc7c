"""The package installs into an environment that has its own torch (Colab's) without replacing it.

Colab's first cell runs ``pip install "companion @ git+..."`` into an environment with a CUDA torch. The package
states ranges (``pyproject.toml``), not pins, so pip keeps that torch. This test stands in for Colab: a fresh
virtual environment holding a stand-in ``torch`` of another version, then the same install.
"""

from __future__ import annotations

import base64
import hashlib
import json
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
from conftest import copy_source

ROOT = Path(__file__).resolve().parents[1]
OTHER_TORCH = "2.9.0"  # not the 2.13.0 of constraints.txt: what a Colab runtime might hold


def _fake_torch_wheel(directory: Path) -> Path:
    """A wheel named torch that holds only ``torch.__version__``: pip sees an installed torch of that version."""
    name = f"torch-{OTHER_TORCH}"
    files = {
        "torch/__init__.py": f'__version__ = "{OTHER_TORCH}"\n',
        f"{name}.dist-info/METADATA": f"Metadata-Version: 2.1\nName: torch\nVersion: {OTHER_TORCH}\n",
        f"{name}.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    records = []
    for path, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        records.append(f"{path},sha256={digest},{len(text.encode())}")
    records.append(f"{name}.dist-info/RECORD,,")
    wheel = directory / f"{name}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        for path, text in files.items():
            z.writestr(path, text)
        z.writestr(f"{name}.dist-info/RECORD", "\n".join(records) + "\n")
    return wheel


def test_constraints_pin_inside_the_stated_ranges():
    from packaging.requirements import Requirement

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    stated = [Requirement(r) for r in project["dependencies"]]
    stated += [Requirement(r) for extra in project["optional-dependencies"].values() for r in extra]
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            requirement = Requirement(line)
            pins[requirement.name] = next(iter(requirement.specifier)).version
    assert "torch" in pins and pins["torch"] == "2.13.0", "keep the CPU torch pin in constraints.txt"
    for requirement in stated:
        assert "==" not in str(requirement.specifier), f"{requirement}: pyproject.toml states ranges; pins go in constraints.txt"
        if requirement.name in pins:
            assert requirement.specifier.contains(pins[requirement.name]), f"{requirement.name}=={pins[requirement.name]} is outside {requirement}"


@pytest.mark.slow
def test_installing_like_colab_keeps_the_torch_already_there(tmp_path):
    source = copy_source(tmp_path / "companion")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    subprocess.run([python, "-m", "pip", "install", "-q", str(_fake_torch_wheel(tmp_path))], check=True)

    # The Colab cell's install, resolved without installing: what would pip add or replace?
    report = tmp_path / "report.json"
    resolved = subprocess.run([python, "-m", "pip", "install", "--dry-run", "-q", "--report", str(report),
                               f"companion @ {source.as_uri()}"], capture_output=True, text=True, timeout=900)
    if resolved.returncode != 0 and "No matching distribution" in resolved.stderr + resolved.stdout:
        pytest.skip(f"a dependency is not reachable from here: {resolved.stderr[-500:]}")
    assert resolved.returncode == 0, resolved.stderr[-3000:]
    planned = {item["metadata"]["name"].lower(): item["metadata"]["version"]
               for item in json.loads(report.read_text())["install"]}
    assert "companion" in planned and "transformers" in planned
    assert "torch" not in planned, f"the install would replace the environment's torch with torch {planned.get('torch')}"

    # And the package installed there imports beside that torch, which is untouched.
    subprocess.run([python, "-m", "pip", "install", "-q", "--no-deps", f"companion @ {source.as_uri()}"], check=True)
    check = subprocess.run([python, "-c", "import companion, torch; print(companion.__version__, torch.__version__)"],
                           capture_output=True, text=True, cwd=tmp_path)
    assert check.returncode == 0, check.stderr
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert check.stdout.split() == [version, OTHER_TORCH]
