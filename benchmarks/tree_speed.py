"""Time several NerfTree files of one run with the numba marcher, interleaved in one process
(the trees are compared, not the kernels: ``benchmarks/marcher_ab.py`` compares kernels).

Per tree: median and minimum ms per frame over ``--reps`` rounds (each round renders every tree
once, rays made outside the timing), samples per ray. One JSON line per tree on stdout.

    python benchmarks/tree_speed.py --run RUN --trees RUN/baked/a.safetensors RUN/baked/b.safetensors
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bake import square_camera  # noqa: E402

from turbonerf.app.runs import read_run_spec  # noqa: E402
from turbonerf.bake.march_cpu import march_cpu, prepare_cpu  # noqa: E402
from turbonerf.bake.nerftree import T_MIN, load_tree  # noqa: E402
from turbonerf.bake.render import default_step  # noqa: E402
from turbonerf.data.formats import load_scene  # noqa: E402
from turbonerf.rays import image_ray_bundle  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", type=Path, required=True, help="trained run folder (scene and cameras)")
    p.add_argument("--trees", type=Path, nargs="+", required=True, help="NerfTree files")
    p.add_argument("--view", type=int, default=0, help="test view")
    p.add_argument("--size", type=int, default=400, help="square image size")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--step-scale", type=float, default=1.0, help="marching step in fine voxels")
    p.add_argument("--reps", type=int, default=7)
    p.add_argument("--t-mins", type=float, nargs="+", default=[T_MIN], help="early-termination transmittances to time (each tree x each)")
    args = p.parse_args()

    s = read_run_spec(args.run).scene
    cams = load_scene(s.data, downscale=s.downscale, splits=("test",)).split("test").cameras
    rays = image_ray_bundle(square_camera(cams, args.view, args.size), 0, s.near, s.far, s.ndc)
    o, d, vd = (np.ascontiguousarray(a.numpy()) for a in (rays.origins, rays.directions, rays.viewdirs))
    near, far = rays.near.numpy(), rays.far.numpy()
    bg = np.asarray(s.background, np.float64).reshape(3)
    trees = {}
    for path in args.trees:
        tree = load_tree(path)
        for t_min in args.t_mins:
            trees[(path, t_min)] = (prepare_cpu(tree), default_step(tree, s.ndc) * args.step_scale, tree.sh_degree)
    times = {key: [] for key in trees}
    samples = {}
    for (path, t_min), (ct, step, _) in trees.items():  # warm-up
        samples[(path, t_min)] = float(march_cpu(ct, o, d, vd, near, far, bg, step, t_min=t_min, threads=args.threads)["samples"].mean())
    for _ in range(args.reps):
        for (path, t_min), (ct, step, _) in trees.items():
            t0 = time.perf_counter()
            march_cpu(ct, o, d, vd, near, far, bg, step, t_min=t_min, threads=args.threads)
            times[(path, t_min)].append(1000 * (time.perf_counter() - t0))
    for (path, t_min), (_, step, degree) in trees.items():
        key = (path, t_min)
        print(json.dumps({"tree": path.name, "sh_degree": degree, "storage_mb": path.stat().st_size / 2**20, "view": args.view,
                          "size": args.size, "threads": args.threads, "step_scale": args.step_scale, "t_min": t_min,
                          "ms_median": float(np.median(times[key])), "ms_min": float(np.min(times[key])),
                          "samples_per_ray": samples[key]}), flush=True)


if __name__ == "__main__":
    main()
