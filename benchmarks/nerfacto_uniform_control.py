"""The control of activation-based sampling on nerfacto: uniform weights in place of the first
proposal network's (and of any activation estimate), the second proposal network and the field
as always. If the control scores what the activation estimate scores, the second proposal
network, not the estimate, is what keeps the quality.

Renders every ``--every``-th test view twice (the model's own first proposal network, then
uniform weights), chunk by chunk, and prints PSNR per view and seconds per image for both.

    python benchmarks/nerfacto_uniform_control.py --run RUN --every 50
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from turbonerf.app.runs import read_run_spec, renderer_for_run
from turbonerf.data.formats import load_scene
from turbonerf.rays import image_ray_bundle


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", type=Path, required=True, help="a trained nerfacto run")
    p.add_argument("--every", type=int, default=50, help="every k-th test view (as eval --every)")
    p.add_argument("--chunk", type=int, default=4096, help="rays per render call")
    args = p.parse_args()

    spec = read_run_spec(args.run).scene
    scene = load_scene(spec.data, downscale=spec.downscale, splits=("test",)).split("test")
    model = renderer_for_run(args.run, torch.device("cpu")).model.eval()
    bg = torch.as_tensor(spec.background, dtype=torch.float32).reshape(3)
    psnr: dict[str, list[float]] = {"base": [], "uniform": []}
    seconds = {k: 0.0 for k in psnr}
    with torch.no_grad():
        for i in range(0, len(scene.cameras), args.every):
            rays = image_ray_bundle(scene.cameras, i, spec.near, spec.far, spec.ndc)
            gt = scene.images[i].reshape(-1, 3).float() / 255.0
            for kind in psnr:
                t0 = time.perf_counter()
                parts = []
                for a in range(0, len(rays), args.chunk):
                    r = rays[a:a + args.chunk]
                    edges = model.initial_edges(r)
                    if kind == "base":
                        weights = model.coarse_stage(r, bg)[1]
                    else:
                        weights = torch.full((len(r), edges.shape[1] - 1), 1.0 / (edges.shape[1] - 1))
                    parts.append(model.fine_stage(r, bg, model.fine_edges(r, edges, weights))["rgb"])
                seconds[kind] += time.perf_counter() - t0
                mse = float(((torch.cat(parts).clamp(0, 1) - gt) ** 2).mean())
                psnr[kind].append(-10.0 * np.log10(mse))
    for kind, values in psnr.items():
        print(f"{kind}: PSNR {np.mean(values):.3f} dB (per view {', '.join(f'{v:.2f}' for v in values)}), "
              f"{seconds[kind] / len(values):.3f} s per image")


if __name__ == "__main__":
    main()
