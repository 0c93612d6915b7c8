#!/usr/bin/env bash
# Installs pydiff and everything its tests, demo and benchmarks need, on a fresh machine.
# torch: the CPU build of 2.13.0 (pinned here so pip never pulls a multi-GB CUDA build on a GPU-less machine);
# on a machine that already has torch >= 2.5 (e.g. the GPU box) the existing one is kept.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if ! "$PY" -c "import torch, sys; sys.exit(0 if tuple(map(int, torch.__version__.split('.')[:2])) >= (2, 5) else 1)" 2>/dev/null; then
  "$PY" -m pip install --quiet "torch==2.13.0"
fi
# Build isolation pulls scikit-build-core, pybind11 (and cmake/ninja if the system lacks them) from PyPI.
# -v so the log shows which compiled modules CMake built (the CUDA one whenever nvcc is found).
log=$(mktemp)
if ! "$PY" -m pip install -v -e ".[test]" >"$log" 2>&1; then
  tail -50 "$log"; echo "setup: pip install failed"; exit 1
fi
grep -E -- "-- pydiff:|Successfully installed" "$log" || true
rm -f "$log"
"$PY" - <<'PYEOF'
import importlib
for name in ("pydiff._C_cpu", "pydiff._C_cuda", "pydiff.kernels.lincomb"):
    try:
        importlib.import_module(name)
        print(f"setup: {name} imports")
    except ImportError as exc:
        print(f"setup: {name} NOT importable: {exc}")
PYEOF
"$PY" -c "import pydiff._C_cpu" # the CPU core must exist: fail the set-up otherwise
