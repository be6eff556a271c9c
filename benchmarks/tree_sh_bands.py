"""How view-dependent is a NerfTree's colour? For every SH row, the RMS over the sphere of the
part of each channel's colour logit carried by coefficients ``--first`` and above (real
orthonormal SH: sqrt(sum c_j^2 / 4 pi), the worst of the three channels); then, per threshold,
a copy of the tree with those coefficients zeroed in the rows below it, to score with
``turbonerf eval --tree``. A bound for trees that store fewer SH bands where the view dependence
is weak (issue 16): what the quality would cost, before a format and kernels that store them.

    python benchmarks/tree_sh_bands.py --tree R/baked/nerftree.safetensors --out-dir /tmp/bands --first 1 --thresholds 0.1 0.2 0.3
    turbonerf eval --run R --tree /tmp/bands/bands1_0.2.safetensors --every 1 --no-lpips-vgg
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
from safetensors import safe_open
from safetensors.numpy import load_file, save_file


def band_rms(sh: np.ndarray, k: int, first: int, batch: int = 1 << 20) -> np.ndarray:
    """[N, 3k] float16 SH rows (channel-major) -> [N] float32: the worst channel's RMS over the
    sphere of the logit carried by coefficients first..k-1."""
    out = np.empty(len(sh), np.float32)
    for i in range(0, len(sh), batch):
        c = sh[i:i + batch].astype(np.float32).reshape(-1, 3, k)
        out[i:i + batch] = np.sqrt((c[:, :, first:] ** 2).sum(-1).max(-1) / (4 * math.pi))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tree", type=Path, required=True)
    p.add_argument("--out-dir", type=Path, required=True)
    p.add_argument("--first", type=int, default=1, help="zero the coefficients from this one on (1: keep only DC; 4: keep degree <= 1)")
    p.add_argument("--thresholds", type=float, nargs="+", default=[0.1, 0.2, 0.3], help="logit RMS below which a row loses them")
    args = p.parse_args()
    meta = safe_open(str(args.tree), "np").metadata()
    tensors = load_file(str(args.tree))
    sh = tensors["sh"]
    k = sh.shape[1] // 3
    rms = band_rms(sh, k, args.first)
    print("rows", len(sh), "logit RMS quantiles", {q: round(float(np.quantile(rms, q)), 4) for q in (0.1, 0.25, 0.5, 0.75, 0.9, 0.99)})
    cols = np.arange(3 * k).reshape(3, k)[:, args.first:].reshape(-1)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    for tau in args.thresholds:
        rows = np.flatnonzero(rms < tau)
        cut = sh.copy()
        cut[rows[:, None], cols[None, :]] = 0
        path = args.out_dir / f"bands{args.first}_{tau}.safetensors"
        save_file({**tensors, "sh": cut}, str(path), metadata=meta)
        print(f"threshold {tau}: {len(rows) / len(sh):.3f} of the rows cut -> {path}")


if __name__ == "__main__":
    main()
