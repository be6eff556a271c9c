"""Does ``distill --compile`` pay? MobileR2L (``cpu`` preset, or with ``--stride 4`` a 50x50 ray grid
and SR 32-16) on a Blender scene's training images, batch 4, bf16 autocast: an eager and a
``runtime.compile_networks`` copy trained in one process, alternating blocks of 20 steps; the median
seconds per step of each.

    python benchmarks/compile_ab.py --data ../shared/data/nerf_synthetic/lego --stride 8
"""
import argparse
import statistics
import time
from dataclasses import replace
from pathlib import Path

import torch

from turbonerf.data.formats import load_scene
from turbonerf.engine.runtime import compile_networks
from turbonerf.methods.mobile_r2l import MobileR2L, mobile_r2l_preset

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--downscale", type=int, default=4)
    ap.add_argument("--stride", type=int, choices=(4, 8), default=8)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    scene = load_scene(args.data, downscale=args.downscale, splits=("train",))
    tr = scene.split("train")
    stride = args.stride
    cfg = replace(mobile_r2l_preset("cpu"), height=tr.images.shape[1], width=tr.images.shape[2], near=scene.near, far=scene.far,
                  **({"stride": 4, "sr_channels": "32,16"} if stride == 4 else {}))
    aabb = torch.tensor([[-1.5] * 3, [1.5] * 3])
    imgs = tr.images.float() / 255.0
    def make(compiled):
        torch.manual_seed(0)
        m = MobileR2L(cfg, aabb).train()
        if compiled:
            compile_networks(m, torch.device("cpu"))
        return m, torch.optim.Adam(m.parameters(), lr=2e-3), torch.Generator().manual_seed(0)
    def block(mog, n):
        m, opt, g = mog
        t = time.perf_counter()
        for _ in range(n):
            idx = torch.randint(len(imgs), (4,), generator=g)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = m.image_loss(tr.cameras[idx], imgs[idx])[0]
            opt.zero_grad(set_to_none=True); loss.backward(); opt.step()
        return (time.perf_counter() - t) / n
    eager, comp = make(False), make(True)
    t = time.perf_counter(); block(comp, 3); print("compile + 3 steps s", round(time.perf_counter() - t, 1), flush=True)
    block(eager, 3)
    res = {"eager": [], "compiled": []}
    for r in range(6):
        res["eager"].append(block(eager, 20)); res["compiled"].append(block(comp, 20))
    for k, v in res.items():
        print(k, "median s/step", round(statistics.median(v), 4), [round(x, 4) for x in v])
    print("speed-up", round(statistics.median(res["eager"]) / statistics.median(res["compiled"]), 3))


if __name__ == "__main__":
    main()
