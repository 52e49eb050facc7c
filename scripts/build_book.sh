#!/usr/bin/env bash
# Execute every chapter on the CPU (with a cache) and render the book to HTML, warnings as errors.
set -euo pipefail
venv=${1:-.venv}
cd "$(dirname "$0")/.."
bin="$venv/bin"

echo "==> pairing each chapter with its notebook twin for Colab (jupytext)"
for md in book/[0-9]*.md; do
  "$bin/jupytext" --quiet --update --to ipynb -o "${md%.md}.ipynb" "$md"
done

echo "==> copying MathJax into _vendor/ so pages render math offline"
"$bin/python" - <<'PY'
import pathlib, shutil, jupyter_server_mathjax
src = pathlib.Path(jupyter_server_mathjax.__file__).parent / "static"
dst = pathlib.Path("_vendor/mathjax")
if not (dst / "MathJax.js").exists():
    shutil.copytree(src, dst, dirs_exist_ok=True)
PY

echo "==> executing the chapters and rendering HTML (the first build trains nothing but runs every cell: minutes)"
start=$(date +%s)
"$bin/jupyter-book" build . -W -n --keep-going
echo "==> book built in $(( $(date +%s) - start )) s"
echo "==> open $(pwd)/_build/html/index.html"
