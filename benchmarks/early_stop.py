"""Early ray termination: quality and speed of a NerfTree at several stopping transmittances.

For each ``--t-mins`` value, in one run: the numba marcher's time on test view 0 at ``--size``
(median of ``--reps``, alternating the values twice so drift hits all alike), then PSNR / SSIM
and samples per ray on the test views (``--every``) at the training resolution.

    python benchmarks/early_stop.py --run runs/lego_ngp --tree runs/lego_ngp/baked/tree_192.safetensors --step-scale 2
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from bake import square_camera, time_renderer  # noqa: E402

from turbonerf.bake.nerftree import load_tree  # noqa: E402
from turbonerf.bake.render import TreeRenderer, default_step  # noqa: E402
from turbonerf.data.formats import load_scene  # noqa: E402
from turbonerf.app.evaluate import EvalOptions, evaluate_renderer  # noqa: E402
from turbonerf.app.runs import RunRenderer, read_run_spec  # noqa: E402
from turbonerf.rays import image_ray_bundle  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", type=Path, required=True, help="trained run folder")
    p.add_argument("--tree", type=Path, required=True, help="NerfTree file of that run")
    p.add_argument("--step-scale", type=float, default=1.0, help="marching step in fine voxels")
    p.add_argument("--t-mins", type=float, nargs="+", default=[1e-3, 1e-2])
    p.add_argument("--size", type=int, default=400, help="square size of the timed frame")
    p.add_argument("--reps", type=int, default=7)
    p.add_argument("--every", type=int, default=1, help="every K-th test view is scored")
    args = p.parse_args()

    tree = load_tree(args.tree)
    s = read_run_spec(args.run).scene
    cams = load_scene(s.data, downscale=s.downscale, splits=("test",)).split("test").cameras
    rays = image_ray_bundle(square_camera(cams, 0, args.size), 0, s.near, s.far, s.ndc)
    step = args.step_scale * default_step(tree, s.ndc)
    times = {t: [] for t in args.t_mins}
    for _ in range(2):
        for t_min in args.t_mins:
            times[t_min].append(time_renderer(TreeRenderer(tree, "numba", step=step, t_min=t_min), rays, s.background, args.reps))
    print(f"{args.tree}, step {args.step_scale:g} voxels; time: test view 0 at {args.size}x{args.size}, best of 2 medians")
    print("| t_min | ms/frame | PSNR | SSIM | samples/ray |\n|---|---|---|---|---|")
    for t_min in args.t_mins:
        r = TreeRenderer(tree, "numba", step=step, t_min=t_min)
        renderer = RunRenderer(r, r.name, read_run_spec(args.run), {}, 1 << 20, tree=r, tree_path=args.tree)
        opts = EvalOptions(every=args.every, device="cpu", progress=False)
        res = evaluate_renderer(args.run, renderer, opts, torch.device("cpu"), args.run / f"eval_tmin_{t_min:g}")
        print(f"| {t_min:g} | {min(times[t_min]):.1f} | {res['psnr']:.3f} | {res['ssim']:.4f} | {r.samples_per_ray():.2f} |", flush=True)


if __name__ == "__main__":
    main()
