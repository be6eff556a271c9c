"""Where a NerfTree's samples go: per-sample statistics along the rays of one test view.

Marches every ``--ray-stride``-th ray of test view ``--view`` at ``--size`` x ``--size`` through a
tree with the numpy reference rule (:mod:`turbonerf.bake.march_numpy`) and reports the fraction
of rays that hit occupied cells, samples per ray (all rays and hit rays), and how the compositing
weights of the samples with density are distributed: a soft surface spreads its opacity over
many samples of small weight, which is what a ray marcher pays for.

    python benchmarks/tree_ray_stats.py --run runs/lego_ngp --tree runs/lego_ngp/baked/nerftree.safetensors
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from bake import square_camera  # noqa: E402

from turbonerf.bake.march_numpy import grid_rays, lookup_nearest  # noqa: E402
from turbonerf.bake.nerftree import T_MIN, load_tree  # noqa: E402
from turbonerf.bake.render import default_step  # noqa: E402
from turbonerf.data.formats import load_scene  # noqa: E402
from turbonerf.app.runs import read_run_spec  # noqa: E402
from turbonerf.rays import image_ray_bundle  # noqa: E402

WEIGHT_EDGES = [1e-4, 1e-3, 1e-2, 1e-1, 0.5]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", type=Path, required=True, help="trained run folder (for the scene and its cameras)")
    p.add_argument("--tree", type=Path, required=True, help="NerfTree file")
    p.add_argument("--size", type=int, default=400, help="square image size")
    p.add_argument("--view", type=int, default=0, help="test view")
    p.add_argument("--ray-stride", type=int, default=13, help="every N-th ray of the image")
    p.add_argument("--step-scale", type=float, default=1.0, help="marching step in fine voxels")
    p.add_argument("--t-min", type=float, default=T_MIN, help="early-termination transmittance (the renderer's default)")
    args = p.parse_args()

    tree = load_tree(args.tree)
    s = read_run_spec(args.run).scene
    cams = load_scene(s.data, downscale=s.downscale, splits=("test",)).split("test").cameras
    rays = image_ray_bundle(square_camera(cams, args.view, args.size), 0, s.near, s.far, s.ndc)
    o = rays.origins[:: args.ray_stride].numpy()
    d = rays.directions[:: args.ray_stride].numpy()
    near, far = float(s.near), float(s.far)
    step = default_step(tree, s.ndc) * args.step_scale
    g0, gd = grid_rays(tree, o, d)
    trans = np.ones(len(o))
    occupied = np.zeros(len(o), np.int64)
    with_density = np.zeros(len(o), np.int64)
    weight_hist = np.zeros(len(WEIGHT_EDGES) + 1, np.int64)
    for i in range(int((far - near) / step) + 1):
        t = near + (i + 0.5) * step
        live = np.flatnonzero(trans >= args.t_min)
        if live.size == 0:
            break
        occ, sigma, _ = lookup_nearest(tree, g0[live] + t * gd[live])
        live, sigma = live[occ], sigma[occ]
        occupied[live] += 1
        pos = sigma > 0
        with_density[live[pos]] += 1
        alpha = 1.0 - np.exp(-sigma * step)
        np.add.at(weight_hist, np.digitize((trans[live] * alpha)[pos], WEIGHT_EDGES), 1)
        trans[live] *= 1.0 - alpha
    hit = occupied > 0
    print(f"{args.tree}: {len(o)} rays of test view {args.view} at {args.size}x{args.size}, step {args.step_scale:g} voxels, t_min {args.t_min:g}")
    print(f"rays that hit occupied cells: {hit.mean():.3f}; rays with opacity > 0.5: {(trans < 0.5).mean():.3f}")
    print(f"samples per ray, all rays: {occupied.mean():.1f} in occupied cells, {with_density.mean():.1f} with density")
    print(f"samples per hit ray: {occupied[hit].mean():.1f} in occupied cells, {with_density[hit].mean():.1f} with density")
    labels = ["< 1e-4", "1e-4..1e-3", "1e-3..1e-2", "1e-2..0.1", "0.1..0.5", ">= 0.5"]
    frac = weight_hist / max(weight_hist.sum(), 1)
    print("weights of the samples with density: " + ", ".join(f"{lab}: {f:.3f}" for lab, f in zip(labels, frac)))


if __name__ == "__main__":
    main()
