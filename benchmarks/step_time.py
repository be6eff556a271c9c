"""Seconds per training step of a method at 1024 rays, with and without the CPU settings turbonerf uses.

Each variant runs in its own process (the allocator setting cannot be undone in-process):
  fp32          torch defaults
  fp32+alloc    glibc malloc thresholds raised (turbonerf.engine.runtime.tune_allocator; the default of `turbonerf train`)
  medium+alloc  + torch.set_float32_matmul_precision("medium")
  bf16+alloc    + bf16 autocast forced on (emulated, and ~20x slower per matmul, on CPUs without
                AVX512-BF16 / AMX)
  auto+alloc    + bf16 autocast only where the CPU has native bf16 (what `turbonerf train --bf16` does,
                turbonerf.engine.runtime.native_bf16)

    python benchmarks/step_time.py --data ../shared/data/nerf_synthetic/lego --method vanilla-nerf --steps 5
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

VARIANTS = ["fp32", "fp32+alloc", "medium+alloc", "bf16+alloc", "auto+alloc"]


def worker(args: argparse.Namespace) -> None:
    import torch

    from turbonerf.data.formats import load_scene
    from turbonerf.engine import runtime
    from turbonerf.app.train import sample_pixels
    from turbonerf.methods.registry import get_method
    from turbonerf.rays import make_rays

    v = args.variant
    if "alloc" in v:
        runtime.tune_allocator()
    torch.set_float32_matmul_precision("medium" if v.startswith(("medium", "bf16", "auto")) else "highest")
    scene = load_scene(args.data, downscale=args.downscale, splits=("train",))
    split = scene.split("train")
    cfg_cls, model_cls = get_method(args.method)
    model = model_cls(cfg_cls(), scene.aabb)
    opt, _ = model.make_optimizer()
    gen = torch.Generator().manual_seed(0)
    times = []
    for step in range(args.warmup + args.steps):
        idx, u, vv = sample_pixels(len(split), split.images.shape[1], split.images.shape[2], args.rays, 1.0, gen)
        rays = make_rays(split.cameras, idx, u, vv, scene.near, scene.far, scene.ndc)
        target = split.images[idx, vv, u].float() / 255.0
        t0 = time.perf_counter()
        forced = torch.autocast("cpu", dtype=torch.bfloat16, enabled=v.startswith("bf16"))
        with runtime.autocast(torch.device("cpu"), True) if v.startswith("auto") else forced:
            loss, _ = model.training_loss(rays, target, scene.background)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step >= args.warmup:
            times.append(time.perf_counter() - t0)
    print(json.dumps({"variant": v, "method": args.method, "s_per_step": sum(times) / len(times), "rays": args.rays,
                      "native_bf16": runtime.native_bf16("cpu")}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--downscale", type=int, default=4)
    p.add_argument("--method", default="vanilla-nerf")
    p.add_argument("--rays", type=int, default=1024)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.variant:
        worker(args)
        return
    rows = []
    for v in VARIANTS:
        cmd = [sys.executable, __file__, "--data", str(args.data), "--downscale", str(args.downscale), "--method", args.method,
               "--rays", str(args.rays), "--steps", str(args.steps), "--warmup", str(args.warmup), "--variant", v]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
        rows.append(json.loads(out))
        print(out, flush=True)
    base = rows[0]["s_per_step"]
    print("| variant | s/step | speed-up vs fp32 |\n|---|---|---|")
    for r in rows:
        print(f"| {r['variant']} | {r['s_per_step']:.3f} | {base / r['s_per_step']:.2f}x |")


if __name__ == "__main__":
    main()
