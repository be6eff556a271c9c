"""Time one NerfTree with its pools in the file buffer ``load_tree`` leaves them in (4 KB pages)
against copies in numpy's memory (transparent huge pages where the kernel offers them),
interleaved in one process with the numba marcher; also the time the copies took.

Prints one JSON line per view and size: median ms per frame of each, the huge pages (kB) the
process held, and the speed-up.

    python benchmarks/tree_pages.py --run RUN --tree RUN/baked/nerftree.safetensors
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bake import square_camera  # noqa: E402

from turbonerf.app.runs import read_run_spec  # noqa: E402
from turbonerf.bake.march_cpu import march_cpu, prepare_cpu  # noqa: E402
from turbonerf.bake.nerftree import load_tree  # noqa: E402
from turbonerf.bake.render import default_step  # noqa: E402
from turbonerf.data.formats import load_scene  # noqa: E402
from turbonerf.rays import image_ray_bundle  # noqa: E402


def huge_kb() -> int:
    """AnonHugePages of this process (kB)."""
    return int(re.search(r"AnonHugePages:\s+(\d+)", Path("/proc/self/smaps_rollup").read_text()).group(1))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", type=Path, required=True, help="trained run folder (scene and cameras)")
    p.add_argument("--tree", type=Path, required=True, help="NerfTree file")
    p.add_argument("--views", type=int, nargs="+", default=[0, 50, 100])
    p.add_argument("--sizes", type=int, nargs="+", default=[400])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--reps", type=int, default=7)
    args = p.parse_args()

    tree = load_tree(args.tree)
    s = read_run_spec(args.run).scene
    cams = load_scene(s.data, downscale=s.downscale, splits=("test",)).split("test").cameras
    step = default_step(tree, s.ndc)
    bg = np.asarray(s.background, np.float64).reshape(3)
    small = prepare_cpu(tree)
    t0 = time.perf_counter()
    huge = replace(small, density=np.array(small.density), sh=np.array(small.sh), tables={})
    copy_s = time.perf_counter() - t0
    layouts = {"huge_pages": huge, "small_pages": small}
    for size in args.sizes:
        for view in args.views:
            rays = image_ray_bundle(square_camera(cams, view, size), 0, s.near, s.far, s.ndc)
            o, d, vd = (np.ascontiguousarray(a.numpy()) for a in (rays.origins, rays.directions, rays.viewdirs))
            near, far = rays.near.numpy(), rays.far.numpy()
            times = {k: [] for k in layouts}
            outs = {k: march_cpu(ct, o, d, vd, near, far, bg, step, threads=args.threads) for k, ct in layouts.items()}
            for _ in range(args.reps):
                for k, ct in layouts.items():
                    t0 = time.perf_counter()
                    march_cpu(ct, o, d, vd, near, far, bg, step, threads=args.threads)
                    times[k].append(1000 * (time.perf_counter() - t0))
            row = {"view": view, "size": size, "threads": args.threads, "anon_huge_kb": huge_kb(), "copy_seconds": copy_s,
                   "same_image": bool(np.array_equal(outs["huge_pages"]["rgb"], outs["small_pages"]["rgb"]))}
            for k, t in times.items():
                row[f"{k}_ms_median"] = float(np.median(t))
            row["speedup"] = row["small_pages_ms_median"] / row["huge_pages_ms_median"]
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
