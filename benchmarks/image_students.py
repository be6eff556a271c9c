"""The image-space students side by side with their teacher and vanilla NeRF (issue 13).

For every student run (``turbonerf distill --student ...``, already evaluated with ``turbonerf
eval``) and the teacher run, one table row: PSNR / SSIM / LPIPS from ``RUN/eval/results.json``,
latency as the "Faster NeRFs" report measured it (mean of ``--passes`` forward passes after
``--warmup``, batch 1, at the evaluation size), parameters, FLOPs per frame (torch's
FlopCounterMode: matmuls and convolutions), weights MB, distillation time (pseudo-data generation
+ training) and pseudo images used; for the students with an upsampler, the checkerboard share of
the error (:mod:`turbonerf.eval.checkerboard`) on the evaluated test views and its white-noise
level. The teacher's latency is its frame time from its ``eval`` results (a frame takes seconds).
Vanilla NeRF's frame time at the same size is measured in the same process (one frame of
its default architecture, 64 + 128 samples per ray; its cost does not depend on its weights, so
an untrained model is timed unless ``--vanilla RUN`` is given).

    python benchmarks/image_students.py --teacher runs/lego_ngp --students runs/lego_pose2image ... \\
        --json runs/image_students_lego.json

``--throughput`` instead times training steps (``--batch-images`` images at the teacher's size)
and forward passes of several mobile-r2l sizes: how the ``cpu`` preset was chosen.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import time
from pathlib import Path

import numpy as np
import torch

from turbonerf.app.runs import load_trained, read_run_spec, renderer_for_run
from turbonerf.data.formats import load_scene
from turbonerf.engine import runtime
from turbonerf.engine.checkpoint import read_checkpoint_meta
from turbonerf.eval.checkerboard import checkerboard_share, white_noise_share
from turbonerf.io.media import load_png
from turbonerf.methods.image_student import example_camera
from turbonerf.methods.mobile_r2l import MobileR2L, MobileR2LConfig
from turbonerf.methods.registry import get_method
from turbonerf.render.renderer import render_image

UPSAMPLING = {"hybrid": lambda c: c["stride"], "mobile-r2l": lambda c: c["stride"],
              "pose2image": lambda c: 2 ** c["stages"], "shared-backbone": lambda c: 2 ** c["stages"]}


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        return next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except (OSError, StopIteration):
        return platform.processor()


def latency_ms(fn, warmup: int, passes: int) -> float:
    """Mean wall time of ``fn()`` over ``passes`` calls after ``warmup`` calls, in ms."""
    for _ in range(warmup):
        fn()
    t0 = time.perf_counter()
    for _ in range(passes):
        fn()
    return 1000.0 * (time.perf_counter() - t0) / passes


def checkerboard_of_eval(run: Path, results: dict, scene, stride: int) -> float:
    """Mean checkerboard share over the evaluated test views (the PNGs eval wrote vs the targets)."""
    split = scene.split("test")
    names = [Path(p).stem for p in split.paths]
    shares = []
    for row in results["per_image"]:
        pred = load_png(run / "eval" / "images" / f"{row['name']}.png")[..., :3].astype(np.float64) / 255.0
        target = split.images[names.index(row["name"])].numpy().astype(np.float64) / 255.0
        shares.append(checkerboard_share(pred, target, stride))
    return float(np.mean(shares))


def row_for(run: Path, device: torch.device, warmup: int, passes: int, scene) -> dict:
    spec = read_run_spec(run)
    results = json.loads((run / "eval" / "results.json").read_text())
    meta = read_checkpoint_meta(run / "checkpoints" / "latest.safetensors")
    h, w = results["height"], results["width"]
    renderer = renderer_for_run(run, device)
    model = renderer.model
    test = scene.split("test")
    cam = test.cameras[[0]]
    row = {"run": str(run), "method": spec.method, "psnr": results["psnr"], "ssim": results["ssim"], "lpips": results.get("lpips"),
           "params": results["params"], "storage_mb": results["storage_mb"], "eval_ms_per_frame": results["ms_per_frame"],
           "steps": meta.get("step"), "train_seconds": meta.get("seconds"),
           "generation_seconds": meta.get("generation_seconds"), "pseudo_images": meta.get("pseudo_images")}
    if model.image_space:
        with torch.no_grad():
            row["latency_ms"] = latency_ms(lambda: model.render_views(cam), warmup, passes)
        row["flops_per_frame"] = model.flops_per_frame(h, w)
        row["distill_seconds"] = (meta.get("seconds") or 0.0) + (meta.get("generation_seconds") or 0.0)
        stride = UPSAMPLING[spec.method](spec.config)
        row["upsampling"] = stride
        row["upsampler"] = spec.config.get("upsampler", "transposed")
        row["checkerboard"] = checkerboard_of_eval(run, results, scene, stride)
        row["checkerboard_white_noise"] = white_noise_share(h, w, stride)
    else:  # a ray renderer (the teacher): its frame time as `turbonerf eval` measured it (a frame takes seconds)
        row["latency_ms"] = results["ms_per_frame"]
        row["latency_from"] = "eval ms_per_frame"
        row["flops_per_frame"] = results["flops_per_ray"] * h * w if results.get("flops_per_ray") else None
    return row


def vanilla_frame_ms(scene, run: Path | None, device: torch.device) -> tuple[float, str]:
    """ms for one frame of vanilla NeRF at the scene's test size (after one warm-up batch)."""
    if run is not None:
        model = load_trained(run, device)[0]
        what = f"trained run {run}"
    else:
        cfg_cls, cls = get_method("vanilla-nerf")
        model = cls(cfg_cls(), scene.aabb).to(device).eval()
        what = "default architecture, untrained weights (its cost does not depend on them)"
    test = scene.split("test")
    with torch.no_grad():
        rays_fn = model.render
        render_image(rays_fn, test.cameras[[0]].scaled(0.1), 0, scene.near, scene.far, scene.ndc, scene.background)  # warm-up
        t0 = time.perf_counter()
        render_image(rays_fn, test.cameras, 0, scene.near, scene.far, scene.ndc, scene.background, chunk=4096)
    return 1000.0 * (time.perf_counter() - t0), what


def throughput(scene, batch_images: int, device: torch.device) -> list[dict]:
    """Training steps/s and forward latency of mobile-r2l sizes at the scene's training size."""
    split = scene.split("train")
    h, w = split.images.shape[1:3]
    images = split.images[:batch_images].float() / 255.0
    cams = split.cameras[list(range(batch_images))]
    rows = []
    for channels, blocks, sr in ((64, 4, "32,16,16"), (128, 8, "64,32,16"), (256, 8, "64,32,16"), (128, 16, "64,32,16"),
                                 (256, 28, "64,64,16")):
        cfg = MobileR2LConfig(height=h, width=w, near=scene.near, far=scene.far, ndc=scene.ndc, channels=channels,
                              n_blocks=blocks, sr_channels=sr, sr_blocks=2 if blocks == 28 else 1)
        model = MobileR2L(cfg, scene.aabb).to(device)
        opt, _ = model.make_optimizer()

        def step():
            loss, _ = model.image_loss(cams, images)
            opt.zero_grad()
            loss.backward()
            opt.step()

        step_ms = latency_ms(step, 2, 10)
        cam = example_camera(h, w, model.centre, model.scale)
        with torch.no_grad():
            fwd_ms = latency_ms(lambda: model.render_views(cam), 3, 30)
        rows.append({"channels": channels, "n_blocks": blocks, "sr_channels": sr, "params": sum(p.numel() for p in model.parameters()),
                     "step_ms": step_ms, "images_per_s": 1000.0 * batch_images / step_ms, "forward_ms": fwd_ms})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teacher", type=Path, required=True)
    p.add_argument("--students", type=Path, nargs="*", default=[])
    p.add_argument("--vanilla", type=Path, default=None, help="a trained vanilla NeRF run to time (default: the untrained architecture)")
    p.add_argument("--passes", type=int, default=100)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--throughput", action="store_true", help="time mobile-r2l sizes instead")
    p.add_argument("--batch-images", type=int, default=4)
    p.add_argument("--no-vanilla", action="store_true", help="skip timing vanilla NeRF (minutes per frame)")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()
    device = torch.device("cpu")
    runtime.configure(device, args.threads)
    tspec = read_run_spec(args.teacher)
    scene = load_scene(tspec.scene.data, downscale=tspec.scene.downscale)
    info = {"cpu": cpu_model(), "threads": torch.get_num_threads(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    if args.throughput:
        out = {**info, "throughput": throughput(scene, args.batch_images, device)}
    else:
        rows = [row_for(args.teacher, device, args.warmup, args.passes, scene)]
        rows += [row_for(r, device, args.warmup, args.passes, scene) for r in args.students]
        vms, what = (float("nan"), "not timed (--no-vanilla)") if args.no_vanilla else vanilla_frame_ms(scene, args.vanilla, device)
        students = [r for r in rows if "distill_seconds" in r]
        fastest = min(students, key=lambda r: r["latency_ms"]) if students else None
        out = {**info, "rows": rows, "vanilla_ms_per_frame": vms, "vanilla": what,
               "speedup_fastest_vs_vanilla": vms / fastest["latency_ms"] if fastest and not args.no_vanilla else None,
               "fastest": fastest["method"] if fastest else None}
        print("| model | PSNR | SSIM | LPIPS | latency (ms) | FPS | params | GFLOPs/frame | MB | distill (min) | pseudo imgs | checkerboard (noise) |")
        print("|---|---|---|---|---|---|---|---|---|---|---|---|")
        for r in rows:
            cb = f"{r['checkerboard']:.4f} ({r['checkerboard_white_noise']:.4f})" if "checkerboard" in r else "-"
            dist = f"{r['distill_seconds'] / 60:.1f}" if "distill_seconds" in r else f"teacher {(r['train_seconds'] or 0) / 60:.1f}"
            lp = f"{r['lpips']:.3f}" if r["lpips"] is not None else "-"
            gf = f"{r['flops_per_frame'] / 1e9:.2f}" if r["flops_per_frame"] else "-"
            print(f"| {r['method']} | {r['psnr']:.2f} | {r['ssim']:.3f} | {lp} | {r['latency_ms']:.2f} | {1000 / r['latency_ms']:.1f} | "
                  f"{r['params'] / 1e6:.2f} M | {gf} | {r['storage_mb']:.1f} | {dist} | {r.get('pseudo_images') or '-'} | {cb} |")
        if fastest and not args.no_vanilla:
            print(f"vanilla NeRF: {vms:.0f} ms per frame ({what}); fastest student {out['fastest']}: "
                  f"{out['speedup_fastest_vs_vanilla']:.0f}x lower latency")
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
