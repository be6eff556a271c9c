#!/usr/bin/env bash
# Create .venv with the CPU build of torch and turbonerf (editable) plus test tools.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
# torch pinned here (a CPU build on the development machines); the package itself accepts torch>=2.1
.venv/bin/python -m pip install -q "torch==${TURBONERF_TORCH:-2.13.0}"
.venv/bin/python -m pip install -q -e ".[dev]"
echo "turbonerf installed in $(pwd)/.venv"
