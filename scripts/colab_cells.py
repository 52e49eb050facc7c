"""Write every chapter's Colab install cell from _config.yml, the one place that names the repository and its tag.

    python scripts/colab_cells.py           # rewrite the cells (make book runs it)
    python scripts/colab_cells.py --check   # exit 1, naming the chapters, when a cell differs from _config.yml

The book's launch buttons open ``book/<chapter>.ipynb`` of ``repository.url`` at ``repository.branch``; the install
cell of each chapter installs the package from the same repository at the same ref, so that a notebook runs the
code it was written for. A fork changes ``repository`` in _config.yml, and this script (``make book``) rewrites the
cells. The ref should be a tag (or a commit) that exists in that repository.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CELL = re.compile(r"```\{code-cell\} ipython3\n:tags: \[remove-cell\]\n# On Colab: install the companion package\n"
                  r".*?\n```", re.S)


def repository(config: Path = ROOT / "_config.yml") -> tuple[str, str]:
    """``repository.url`` and ``repository.branch`` of the book's _config.yml."""
    text = config.read_text()
    block = text[text.index("\nrepository:"):]
    url = re.search(r"^\s+url:\s*(\S+)", block, re.M).group(1)
    ref = re.search(r"^\s+branch:\s*(\S+)", block, re.M).group(1)
    return url, ref


def install_cell(url: str, ref: str) -> str:
    """The hidden first cell of every chapter: on Colab, install the package from ``url`` at ``ref``, and say so
    plainly (not with an ImportError three cells later) when that failed."""
    source = f"companion @ git+{url}@{ref}"
    return f'''```{{code-cell}} ipython3
:tags: [remove-cell]
# On Colab: install the companion package
# (this cell is hidden in the rendered book).
import sys
if "google.colab" in sys.modules:
    %pip install -q "{source}"
    import importlib.util
    if importlib.util.find_spec("companion") is None:
        raise RuntimeError(
            "The companion package could not be installed from {url} at {ref} "
            "(pip says why above): check that the repository and the tag exist, "
            "or install it by hand with %pip install and run this cell again")
```'''


def main(argv: list[str]) -> int:
    cell = install_cell(*repository())
    stale = []
    for md in sorted((ROOT / "book").glob("[0-9]*.md")):
        text = md.read_text()
        updated, found = CELL.subn(lambda _: cell, text, count=1)
        if not found:
            stale.append(f"{md.name}: no install cell")
        elif updated != text:
            stale.append(md.name)
            if "--check" not in argv:
                md.write_text(updated)
    if stale and "--check" in argv:
        print("install cells that differ from _config.yml's repository: " + ", ".join(stale), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
