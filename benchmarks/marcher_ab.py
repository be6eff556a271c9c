"""A/B timing of the numba NerfTree marcher: this checkout's kernel against the kernel of a git
revision, interleaved in one process on the same tree and rays (timings on a shared VM drift
by +-20% over minutes, so a comparison must alternate).

For each test view, image size and thread count: the median and minimum ms per frame of each
kernel over ``--reps`` alternating renders (rays made outside the timing), samples per ray, and
whether both images agree (max abs difference of rgb). One JSON line per row on stdout.

    python benchmarks/marcher_ab.py --run RUN --tree RUN/baked/nerftree.safetensors --baseline-rev HEAD~1
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from at_revision import module_at  # noqa: E402
from bake import square_camera  # noqa: E402

from turbonerf.app.runs import read_run_spec  # noqa: E402
from turbonerf.bake import march_cpu as current  # noqa: E402
from turbonerf.bake.nerftree import load_tree  # noqa: E402
from turbonerf.bake.render import default_step  # noqa: E402
from turbonerf.data.formats import load_scene  # noqa: E402
from turbonerf.rays import image_ray_bundle  # noqa: E402


def kernel_at(rev: str, folder: Path, file: Path | None = None):
    """The march_cpu module of git revision ``rev`` (or the copy of it in ``file``), imported from a
    copy in ``folder``."""
    return module_at(rev, "turbonerf/bake/march_cpu.py", folder, "march_cpu_baseline", file)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", type=Path, required=True, help="trained run folder (scene and cameras)")
    p.add_argument("--tree", type=Path, required=True, help="NerfTree file")
    p.add_argument("--baseline-rev", default="HEAD", help="git revision whose march_cpu.py is the baseline")
    p.add_argument("--baseline-file", type=Path, default=None, help="a march_cpu.py to use as the baseline instead of a revision")
    p.add_argument("--views", type=int, nargs="+", default=[0, 50, 100])
    p.add_argument("--sizes", type=int, nargs="+", default=[400, 800])
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--step-scale", type=float, default=1.0, help="marching step in fine voxels")
    p.add_argument("--reps", type=int, default=7)
    args = p.parse_args()

    tree = load_tree(args.tree)
    s = read_run_spec(args.run).scene
    cams = load_scene(s.data, downscale=s.downscale, splits=("test",)).split("test").cameras
    step = default_step(tree, s.ndc) * args.step_scale
    bg = np.asarray(s.background, np.float64).reshape(3)
    with tempfile.TemporaryDirectory() as tmp:
        baseline = kernel_at(args.baseline_rev, Path(tmp), args.baseline_file)
        kernels = {"baseline": (baseline, baseline.prepare_cpu(tree)), "current": (current, current.prepare_cpu(tree))}
        for size in args.sizes:
            for view in args.views:
                rays = image_ray_bundle(square_camera(cams, view, size), 0, s.near, s.far, s.ndc)
                o, d, vd = (np.ascontiguousarray(a.numpy()) for a in (rays.origins, rays.directions, rays.viewdirs))
                near, far = rays.near.numpy(), rays.far.numpy()
                for threads in args.threads:
                    times = {k: [] for k in kernels}
                    outs = {}
                    for name, (mod, ct) in kernels.items():  # warm-up (compile, caches)
                        outs[name] = mod.march_cpu(ct, o, d, vd, near, far, bg, step, threads=threads)
                    for _ in range(args.reps):
                        for name, (mod, ct) in kernels.items():
                            t0 = time.perf_counter()
                            mod.march_cpu(ct, o, d, vd, near, far, bg, step, threads=threads)
                            times[name].append(1000 * (time.perf_counter() - t0))
                    row = {"view": view, "size": size, "threads": threads, "step_scale": args.step_scale,
                           "samples_per_ray": float(outs["current"]["samples"].mean()),
                           "max_abs_diff": float(np.abs(outs["current"]["rgb"] - outs["baseline"]["rgb"]).max())}
                    for name, t in times.items():
                        row[f"{name}_ms_median"] = float(np.median(t))
                        row[f"{name}_ms_min"] = float(np.min(t))
                    row["speedup_median"] = row["baseline_ms_median"] / row["current_ms_median"]
                    print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
