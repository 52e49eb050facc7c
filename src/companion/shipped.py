"""Where the files the package ships live: ``data/`` of a source checkout, or its copy inside an installed wheel.

``data/`` holds the tiny base model, the committed experiments the book plots, the recipe sweep and the verifier's
test cases. In a source checkout (``pip install -e .``) it is the repository's ``data/``; a built wheel carries the
same files as the package ``companion.data`` (``pyproject.toml`` maps it onto ``data/``), so a plain
``pip install`` (Colab's) finds them too.
"""

from __future__ import annotations

from pathlib import Path

_HERE = Path(__file__).resolve().parent
CHECKOUT_DATA = _HERE.parents[1] / "data"
"""``data/`` of the source checkout this module sits in (absent after a wheel install)."""
INSTALLED_DATA = _HERE / "data"
"""The wheel's copy of ``data/``."""


def data_dir() -> Path:
    """The shipped data directory: the checkout's when this is a source checkout, else the installed copy."""
    return CHECKOUT_DATA if (CHECKOUT_DATA / "tiny-base").is_dir() else INSTALLED_DATA
