#!/usr/bin/env bash
# The GPU suite, one command on a GPU machine: build (CUDA module included), check correctness on the GPU
# (the gpu-marked tests, plus the CUDA-graph sampling test), then benchmark against the peers and the measured
# ceilings. Results land in benchmarks/results/<date>-<card>/ (or $1), and a short table is printed last.
set -uo pipefail
cd "$(dirname "$0")/.."
card=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1 | tr -cs 'A-Za-z0-9' '-' | sed 's/-$//')
out=${1:-benchmarks/results/$(date -u +%F)-${card:-gpu}}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
python3 -m pip install --no-build-isolation --no-deps -e . >"$out/build.log" 2>&1 || { tail -30 "$out/build.log"; exit 1; }
python3 -m pydiff info | tee "$out/info.txt"
python3 -m pytest -q -m gpu -p no:cacheprovider tests 2>&1 | tee "$out/gpu-tests.log" | tail -25
tests_rc=${PIPESTATUS[0]}
python3 -m pydiff bench --suite full --device cuda --out "$out" 2>&1 | tee "$out/bench.log" | tail -60
bench_rc=${PIPESTATUS[0]}
echo "gpu tests exit code: $tests_rc, bench exit code: $bench_rc, results in $out"
exit $(( tests_rc != 0 || bench_rc != 0 ))
