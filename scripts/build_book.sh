#!/usr/bin/env bash
# Execute every chapter on the CPU (with a cache) and render the book to HTML, warnings as errors.
set -euo pipefail
venv=${1:-.venv}
cd "$(dirname "$0")/.."
bin="$venv/bin"

echo "==> writing each chapter's Colab install cell from _config.yml's repository and tag"
"$bin/python" scripts/colab_cells.py
echo "==> pairing each chapter with its notebook twin for Colab (jupytext)"
for md in book/[0-9]*.md; do
  "$bin/jupytext" --quiet --update --to ipynb -o "${md%.md}.ipynb" "$md"
done

echo "==> copying MathJax and plotly.js into _vendor/ so pages work offline (plotly.js once for the whole site)"
"$bin/python" - <<'PY'
import importlib.util, pathlib, shutil, plotly
vendor = pathlib.Path("_vendor")
shutil.rmtree(vendor, ignore_errors=True)
(vendor / "mathjax").mkdir(parents=True)
# MathJax 3 in one file (PyPI's sphinx-mathjax-offline carries it): TeX in, SVG out, every TeX extension inside,
# so a page fetches nothing else (no fonts, no components)
mathjax = pathlib.Path(importlib.util.find_spec("sphinx-mathjax-offline").submodule_search_locations[0])
shutil.copy2(mathjax / "static" / "mathjax" / "tex-svg-full.js", vendor / "mathjax" / "tex-svg-full.js")
shutil.copy2(pathlib.Path(plotly.__file__).parent / "package_data" / "plotly.min.js", vendor / "plotly.min.js")
PY

echo "==> executing the chapters and rendering HTML (the first build trains nothing but runs every cell: minutes)"
start=$(date +%s)
# No progress bars or widgets in the saved outputs (a static page has no kernel to drive them), no plotly.js per figure
export TQDM_DISABLE=1 COMPANION_BOOK_BUILD=1
"$bin/jupyter-book" build . -W -n --keep-going
find _build/html -name "*.map" -delete  # the theme's source maps: a sixth of the site, for its own developers
echo "==> book built in $(( $(date +%s) - start )) s"
echo "==> open $(pwd)/_build/html/index.html"
