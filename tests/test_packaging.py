"""A plain (non-editable) install, as Colab's ``%pip install`` does it, carries the data the chapters read."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from conftest import copy_source

ROOT = Path(__file__).resolve().parents[1]


def test_every_subpackage_is_listed_for_the_wheel():
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.relative_to(ROOT / "src").parent.parts) for p in (ROOT / "src").rglob("__init__.py")}
    assert found | {"companion.data"} == listed


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """The package built as a wheel from a copy of the checkout, installed (without its dependencies, which this
    environment has) into a directory outside the checkout."""
    tmp = tmp_path_factory.mktemp("wheel")
    source = copy_source(tmp / "source")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", str(source),
                    "-w", str(tmp / "dist")], check=True, capture_output=True, cwd=tmp)
    wheel = next((tmp / "dist").glob("companion-*.whl"))
    site = tmp / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)],
                   check=True, capture_output=True, cwd=tmp)
    return tmp, site


def _python(tmp: Path, site: Path, code: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(site), OMP_NUM_THREADS="1")
    env.pop("COMPANION_TINY_BASE", None)
    return subprocess.run([sys.executable, "-c", code], cwd=tmp, env=env, capture_output=True, text=True,
                          timeout=300)


def test_the_installed_package_finds_its_data(installed):
    tmp, site = installed
    result = _python(tmp, site, """
import companion, companion.shipped as s
from companion import experiments
from companion.tiny import load_tiny
from companion.viz.tasks import adversarial_cases
assert companion.__file__.startswith(%r), companion.__file__
assert s.data_dir() == s.INSTALLED_DATA, s.data_dir()
model, tokenizer = load_tiny()
runs, broken = experiments.committed_runs()
assert runs and not broken, broken
assert adversarial_cases()
print("parameters", sum(p.numel() for p in model.parameters()), "runs", len(runs))
""" % str(site))
    assert result.returncode == 0, result.stderr
    assert "parameters" in result.stdout


def test_chapter_1_runs_from_the_installed_package(installed):
    import jupytext

    tmp, site = installed
    notebook = jupytext.read(ROOT / "book" / "01_token_mdp.md")
    cells = [c.source for c in notebook.cells
             if c.cell_type == "code" and "remove-cell" not in c.metadata.get("tags", [])]
    result = _python(tmp, site, "\n\n".join(cells))
    assert result.returncode == 0, result.stderr[-3000:]
