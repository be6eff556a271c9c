"""PSNR of a NerfTree against early termination: for each marching step and ``t_min``, the mean
PSNR over the test views with the marcher's raw output (the background composited over the
transmittance left when a ray stops) and with the renderer's closing of stopped rays
(:func:`turbonerf.bake.render.close_terminated`), and the samples per ray. One JSON line per row.

    python benchmarks/tree_t_min.py --run RUN --tree RUN/baked/nerftree.safetensors --t-mins 0.01 0.03 0.05 0.1
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from turbonerf.app.runs import read_run_spec
from turbonerf.bake.march_cpu import march_cpu, prepare_cpu
from turbonerf.bake.nerftree import load_tree
from turbonerf.bake.render import close_terminated, default_step
from turbonerf.data.formats import load_scene
from turbonerf.rays import image_ray_bundle


def psnr(rgb: np.ndarray, gt: np.ndarray) -> float:
    return float(-10 * np.log10(np.mean((np.clip(rgb, 0, 1) - gt) ** 2)))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", type=Path, required=True)
    p.add_argument("--tree", type=Path, required=True)
    p.add_argument("--t-mins", type=float, nargs="+", default=[0.01, 0.03, 0.05, 0.1])
    p.add_argument("--step-scales", type=float, nargs="+", default=[1.0, 2.0])
    p.add_argument("--every", type=int, default=1, help="score every K-th test view")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()

    s = read_run_spec(args.run).scene
    test = load_scene(s.data, downscale=s.downscale, splits=("test",)).split("test")
    tree = load_tree(args.tree)
    ct = prepare_cpu(tree)
    bg = np.asarray(s.background, np.float64).reshape(3)
    rows = {(sc, tm): {"raw": [], "closed": [], "samples": []} for sc in args.step_scales for tm in args.t_mins}
    for v in range(0, len(test), args.every):
        rays = image_ray_bundle(test.cameras, v, s.near, s.far, s.ndc)
        o, d, vd = (np.ascontiguousarray(a.numpy()) for a in (rays.origins, rays.directions, rays.viewdirs))
        gt = test.images[v].numpy().reshape(-1, 3).astype(np.float64) / 255.0
        for (sc, tm), row in rows.items():
            out = march_cpu(ct, o, d, vd, rays.near.numpy(), rays.far.numpy(), bg, default_step(tree, s.ndc) * sc, t_min=tm, threads=args.threads)
            closed = close_terminated({k: torch.from_numpy(x) for k, x in out.items()}, torch.from_numpy(bg).float(), tm)
            row["raw"].append(psnr(out["rgb"].astype(np.float64), gt))
            row["closed"].append(psnr(closed["rgb"].numpy().astype(np.float64), gt))
            row["samples"].append(float(out["samples"].mean()))
    for (sc, tm), row in rows.items():
        print(json.dumps({"tree": args.tree.name, "step_scale": sc, "t_min": tm, "views": len(row["raw"]),
                          "psnr_raw": round(float(np.mean(row["raw"])), 3), "psnr_closed": round(float(np.mean(row["closed"])), 3),
                          "samples_per_ray": round(float(np.mean(row["samples"])), 2)}), flush=True)


if __name__ == "__main__":
    main()
