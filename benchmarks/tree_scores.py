"""Score and time NerfTree files of one run, without re-scoring the model (``benchmarks/bake.py``
does that too, with the model row); optionally derive trees whose fine densities below an
opacity floor are zeroed first (the choice of ``bake``'s ``density_floor``), or whose densities are
multiplied by a factor (sharper surfaces: fewer samples per ray).

For each tree and marching step (1 and 2 fine voxels): PSNR / SSIM on ``--limit`` test views at
the training resolution, optionally on 8 views at full resolution, and the numba marcher's median
ms per frame (5 renders, rays made outside the timing) and samples per ray at 800x800 and
400x400 on test view 0. One JSON line per row on stdout.

    python benchmarks/tree_scores.py --run RUN --trees RUN/baked/a.safetensors [--hires]
    python benchmarks/tree_scores.py --run RUN --floor-from RUN/baked/a.safetensors --floors 0 0.01 0.03 0.1
    python benchmarks/tree_scores.py --run RUN --sharpen-from RUN/baked/a.safetensors --sharpen 1 2 4 8
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bake import square_camera, time_renderer  # noqa: E402

from turbonerf.app.evaluate import EvalOptions, evaluate_run  # noqa: E402
from turbonerf.app.runs import TreeOptions, read_run_spec, renderer_for_run  # noqa: E402
from turbonerf.bake.nerftree import NerfTree, density_threshold_for, load_tree, read_tree_header, save_tree  # noqa: E402
from turbonerf.bake.prune import prune_blocks  # noqa: E402
from turbonerf.data.formats import load_scene  # noqa: E402
from turbonerf.rays import image_ray_bundle  # noqa: E402


def with_floor(src: NerfTree, opacity: float) -> tuple[NerfTree, float]:
    """``src`` with fine densities below the density of ``opacity`` per fine voxel set to 0 (their
    colour rows dropped, blocks left empty removed) -> (tree, floor density)."""
    voxel = float((src.aabb[1] - src.aabb[0]).min()) / src.coarse_res / src.fine_res
    floor = density_threshold_for(opacity, voxel) if opacity > 0 else 0.0
    d = src.density.astype(np.float32)
    had = d.reshape(-1) > 0
    new = np.where(d < floor, 0, d).astype(src.density.dtype)
    rows = np.ascontiguousarray(src.sh[(new.reshape(-1) > 0)[had]])
    tree = NerfTree(src.index.copy(), new, rows, src.aabb, src.sh_degree)
    return prune_blocks(tree, (new.reshape(len(new), -1) > 0).any(1)), floor


def sharpened(src: NerfTree, factor: float) -> NerfTree:
    """``src`` with every density multiplied by ``factor`` (saturating at the dtype's maximum)."""
    d = src.density.astype(np.float32) * factor
    d = np.minimum(d, np.finfo(src.density.dtype).max).astype(src.density.dtype)
    return NerfTree(src.index, d, src.sh, src.aabb, src.sh_degree)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", type=Path, required=True)
    p.add_argument("--trees", type=Path, nargs="*", default=[], help="tree files to score")
    p.add_argument("--floor-from", type=Path, default=None, help="derive a tree per --floors from this one (written beside it)")
    p.add_argument("--floors", type=float, nargs="*", default=[], help="opacities per fine voxel below which density becomes 0")
    p.add_argument("--sharpen-from", type=Path, default=None, help="derive a tree per --sharpen from this one (written beside it)")
    p.add_argument("--sharpen", type=float, nargs="*", default=[], help="factors the densities are multiplied by")
    p.add_argument("--hires", action="store_true", help="also score 8 test views (every 25th) at full resolution")
    p.add_argument("--limit", type=int, default=200)
    p.add_argument("--step-scales", type=float, nargs="+", default=[1.0, 2.0])
    args = p.parse_args()

    trees = list(args.trees)
    if args.floor_from is not None:
        src = load_tree(args.floor_from)
        info = read_tree_header(args.floor_from).get("info", {})
        for op in args.floors:
            tree, floor = with_floor(src, op)
            path = args.floor_from.with_name(f"{args.floor_from.stem}_floor{op:g}.safetensors")
            save_tree(path, tree, dict(info, density_floor=floor, floor_opacity=op))
            trees.append(path)
        del src
    if args.sharpen_from is not None:
        src = load_tree(args.sharpen_from)
        info = read_tree_header(args.sharpen_from).get("info", {})
        for k in args.sharpen:
            path = args.sharpen_from.with_name(f"{args.sharpen_from.stem}_sharp{k:g}.safetensors")
            save_tree(path, sharpened(src, k), dict(info, density_scale=k))
            trees.append(path)
        del src
    s = read_run_spec(args.run).scene
    cams = load_scene(s.data, downscale=s.downscale, splits=("test",)).split("test").cameras
    frames = {n: image_ray_bundle(square_camera(cams, 0, n), 0, s.near, s.far, s.ndc) for n in (800, 400)}
    for path in trees:
        header = read_tree_header(path)
        for scale in args.step_scales:
            row = {"tree": path.name, "coarse_res": header["coarse_res"], "blocks": header["n_blocks"], "sh_rows": header.get("n_sh_rows"),
                   "storage_mb": path.stat().st_size / 2**20, "step": scale, "floor_opacity": header.get("info", {}).get("floor_opacity"),
                   "density_scale": header.get("info", {}).get("density_scale")}
            opts = TreeOptions(path, "nearest", scale)
            r = evaluate_run(args.run, EvalOptions(limit=args.limit, every=1, device="cpu", progress=False), baked=True, tree=opts,
                             out_name=f"scores_{path.stem}_{scale:g}")
            row.update(psnr=r["psnr"], ssim=r["ssim"])
            if args.hires:
                r = evaluate_run(args.run, EvalOptions(limit=8, every=25, downscale=1, device="cpu", progress=False), baked=True, tree=opts,
                                 out_name=f"scores_{path.stem}_{scale:g}_full")
                row.update(psnr_full=r["psnr"], ssim_full=r["ssim"])
            marcher = renderer_for_run(args.run, torch.device("cpu"), baked=True, tree=TreeOptions(path, "nearest", scale, "numba", None)).tree
            for n in (800, 400):
                marcher.samples = marcher.rays = 0
                row[f"ms_{n}"] = time_renderer(marcher, frames[n], s.background, 5)
                row[f"samples_per_ray_{n}"] = marcher.samples_per_ray()
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
