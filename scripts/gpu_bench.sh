#!/usr/bin/env bash
# bench/bench_gpu.py on a lent GPU machine that has no network (the tool library's `device`).
#
#   bash scripts/gpu_bench.sh wheels    # here, where the package registry is reachable: fills .whl/
#   bash scripts/gpu_bench.sh command   # prints the command to give the device's `run`, with carry [".whl"]
#
# The GPU machine has torch (CUDA 13) but not bitsandbytes, and older transformers/peft than constraints.txt
# pins; .whl/ carries the pinned ones. bitsandbytes' wheel (43 MB) holds a library per CUDA and ROCm version;
# only its CUDA 13 and CPU libraries are kept, so that the repository and the wheels travel within 64 MiB.
set -euo pipefail
cd "$(dirname "$0")/.."
pin() { grep -i "^$1==" constraints.txt | cut -d= -f3; }

case "${1:-}" in
wheels)
    rm -rf .whl && mkdir -p .whl
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 -d .whl \
        "transformers==$(pin transformers)" "peft==$(pin peft)" "bitsandbytes==$(pin bitsandbytes)"
    bnb=$(ls .whl/bitsandbytes-*.whl)
    work=$(mktemp -d)
    (cd "$work" && python3 -m zipfile -e "$OLDPWD/$bnb" . \
        && find bitsandbytes -name 'libbitsandbytes_*.so' ! -name '*cuda13*' ! -name '*cpu*' -delete \
        && rm "$OLDPWD/$bnb" && python3 -m zipfile -c "$OLDPWD/$bnb" ./*)
    rm -rf "$work"
    du -ch .whl/* | tail -1
    ;;
command)
    echo 'python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site' \
         '.whl/*.whl && export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1 && nvidia-smi -L &&' \
         'python3 bench/bench_gpu.py --out $OUT/gpu.json 2>&1 | tee $OUT/gpu.log'
    ;;
*)
    echo "usage: bash scripts/gpu_bench.sh wheels|command" >&2
    exit 2
    ;;
esac
