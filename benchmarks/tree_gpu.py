"""Time the torch NerfTree marcher on a GPU (issue 16's GPU path), and check it against the numba
marcher on the same rays.

Per image size and ``samples_per_round`` (lattice samples per ray and round of the torch
marcher): the median ms per frame over ``--reps`` renders of each test view (rays made on the
device outside the timing, ``torch.cuda.synchronize`` around each render), the median over
views, FPS, samples per ray and the peak GPU memory. The timed call is what ``eval --baked`` and
``view`` run per frame: :func:`march_torch` followed by :func:`close_terminated`. One JSON line
per row on stdout; a last line compares the torch marcher (float32, on the device) with the numba
marcher (CPU) on one view.

    python benchmarks/tree_gpu.py --run RUN --tree RUN/baked/nerftree.safetensors --sizes 400 800
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bake import square_camera  # noqa: E402

from turbonerf.app.runs import read_run_spec  # noqa: E402
from turbonerf.bake.march_cpu import march_cpu, prepare_cpu  # noqa: E402
from turbonerf.bake.march_torch import march_torch, prepare_torch  # noqa: E402
from turbonerf.bake.nerftree import T_MIN, load_tree  # noqa: E402
from turbonerf.bake.render import close_terminated, default_step  # noqa: E402
from turbonerf.data.formats import load_scene  # noqa: E402
from turbonerf.rays import image_ray_bundle  # noqa: E402


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", type=Path, required=True, help="trained run folder (scene and cameras)")
    p.add_argument("--tree", type=Path, required=True, help="NerfTree file")
    p.add_argument("--device", default="cuda")
    p.add_argument("--sizes", type=int, nargs="+", default=[400, 800], help="square image sizes")
    p.add_argument("--views", type=int, nargs="+", default=[0, 2, 4, 6], help="test views")
    p.add_argument("--rounds", type=int, nargs="+", default=[64, 128, 256], help="samples_per_round values")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--t-min", type=float, default=T_MIN)
    args = p.parse_args()

    device = torch.device(args.device)
    s = read_run_spec(args.run).scene
    cams = load_scene(s.data, downscale=s.downscale, splits=("test",)).split("test").cameras
    tree = load_tree(args.tree)
    step = default_step(tree, s.ndc)
    bg = torch.as_tensor(s.background, dtype=torch.float32).reshape(3)
    t0 = time.perf_counter()
    tt = prepare_torch(tree, device)
    sync(device)
    print(json.dumps({"prepare_s": round(time.perf_counter() - t0, 3), "device": str(device),
                      "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None}), flush=True)

    def frame(rays, spr):
        out = march_torch(tt, rays.origins, rays.directions, rays.viewdirs, rays.near, rays.far, bg.to(device), step,
                          t_min=args.t_min, samples_per_round=spr)
        return close_terminated(out, bg.to(device), args.t_min)

    for size in args.sizes:
        bundles = [image_ray_bundle(square_camera(cams, v, size), 0, s.near, s.far, s.ndc).to(device) for v in args.views]
        for spr in args.rounds:
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            per_view, samples = [], []
            for rays in bundles:
                out = frame(rays, spr)  # warm-up
                samples.append(float(out["samples"].float().mean()))
                times = []
                for _ in range(args.reps):
                    sync(device)
                    t0 = time.perf_counter()
                    frame(rays, spr)
                    sync(device)
                    times.append(1000 * (time.perf_counter() - t0))
                per_view.append(float(np.median(times)))
            ms = float(np.median(per_view))
            row = {"size": size, "samples_per_round": spr, "ms_median": round(ms, 2), "fps": round(1000 / ms, 1),
                   "ms_per_view": [round(x, 2) for x in per_view], "samples_per_ray": round(float(np.mean(samples)), 2)}
            if device.type == "cuda":
                row["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
            print(json.dumps(row), flush=True)

    # agreement with the numba marcher on the first view at the first size
    rays = image_ray_bundle(square_camera(cams, args.views[0], args.sizes[0]), 0, s.near, s.far, s.ndc)
    o, d, vd = (np.ascontiguousarray(a.numpy()) for a in (rays.origins, rays.directions, rays.viewdirs))
    ref = march_cpu(prepare_cpu(tree), o, d, vd, rays.near.numpy(), rays.far.numpy(), bg.double().numpy(), step, t_min=args.t_min)
    got = march_torch(tt, rays.origins.to(device), rays.directions.to(device), rays.viewdirs.to(device),
                      rays.near.to(device), rays.far.to(device), bg.to(device), step, t_min=args.t_min)
    diff = np.abs(got["rgb"].cpu().numpy() - ref["rgb"])
    print(json.dumps({"parity_view": args.views[0], "size": args.sizes[0], "max_abs_rgb": float(diff.max()),
                      "share_over_1_255": float((diff.max(1) > 1 / 255).mean()),
                      "samples_torch": float(got["samples"].float().mean()), "samples_numba": float(ref["samples"].mean())}), flush=True)


if __name__ == "__main__":
    main()
