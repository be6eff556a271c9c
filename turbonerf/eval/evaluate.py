"""``turbonerf eval``: render a split of a trained run and score it."""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from turbonerf.data.scene import load_scene
from turbonerf.engine import runtime
from turbonerf.engine.checkpoint import atomic_write_text
from turbonerf.engine.run import load_trained
from turbonerf.errors import TurboNerfError
from turbonerf.eval.flops import flops_per_ray, params
from turbonerf.eval.media import depth_to_png, save_png
from turbonerf.eval.metrics import LpipsScorer, psnr, ssim
from turbonerf.render.renderer import render_image


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def evaluate_run(
    run_dir: Path,
    split: str = "test",
    limit: int | None = None,
    every: int = 1,
    downscale: int | None = None,
    device: str = "auto",
    chunk: int = 4096,
    bf16: bool = True,
    progress: bool = True,
    checkpoint: Path | None = None,
    out_name: str = "eval",
    render_fn=None,
    extra_results=None,
) -> dict:
    """Render ``split`` (every ``every``-th image, at most ``limit`` of them), write ``RUN/<out_name>/results.json`` and images; return the results.

    ``checkpoint`` selects a checkpoint file of the run other than the latest (e.g. a snapshot).
    ``render_fn`` (rays, background) -> {rgb, depth, opacity} replaces the model's ``render`` (e.g. a
    baked NerfTree); ``extra_results`` () -> dict, called after rendering, overrides result fields.
    ``storage_mb`` is the model's state (parameters and buffers) in MiB unless overridden.
    """
    dev = runtime.resolve_device(device)
    runtime.configure(dev)
    model, spec, meta = load_trained(Path(run_dir), dev, checkpoint)
    ds = downscale or spec.scene.downscale
    scene = load_scene(spec.scene.data, downscale=ds, splits=(split,))
    data = scene.split(split)
    indices = list(range(0, len(data), max(1, every)))[:limit]
    n = len(indices)
    if n == 0:
        raise TurboNerfError(f"nothing to evaluate: split '{split}' has {len(data)} images", spec.scene.data)
    out_dir = Path(run_dir) / out_name
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    lpips = LpipsScorer()
    per_image, times = [], []
    for i in tqdm(indices, desc=f"eval {split}", disable=not progress, unit="img"):
        t0 = time.perf_counter()
        with runtime.autocast(dev, bf16):
            out = render_image(render_fn or model.render, data.cameras, i, scene.near, scene.far, scene.ndc, scene.background, chunk, dev)
        times.append(time.perf_counter() - t0)
        target = data.images[i].float() / 255.0
        name = Path(data.paths[i]).stem
        save_png(out_dir / "images" / f"{name}.png", out["rgb"])
        save_png(out_dir / "images" / f"{name}_depth.png", depth_to_png(out["depth"], out["opacity"]))
        per_image.append(
            {
                "name": name,
                "psnr": psnr(out["rgb"], target),
                "ssim": ssim(out["rgb"], target),
                "lpips": lpips.score(out["rgb"], target),
                "ms": 1000.0 * times[-1],
            }
        )

    def mean(key: str):
        vals = [r[key] for r in per_image if r[key] is not None]
        return sum(vals) / len(vals) if vals and len(vals) == len(per_image) else None

    results = {
        "method": spec.method,
        "run": str(run_dir),
        "checkpoint": str(checkpoint) if checkpoint else "latest",
        "step": meta.get("step"),
        "train_seconds": meta.get("seconds"),
        "split": split,
        "n_images": n,
        "width": data.cameras.width,
        "height": data.cameras.height,
        "device": device_name(dev),
        "psnr": mean("psnr"),
        "ssim": mean("ssim"),
        "lpips": mean("lpips"),
        "lpips_reason": lpips.reason,
        "ms_per_frame": mean("ms"),
        "samples_per_ray": float(model.samples_per_ray()),
        "params": params(model),
        "flops_per_ray": flops_per_ray(model),
        "per_image": per_image,
    }
    results["renderer"] = "model"
    results["storage_mb"] = sum(t.numel() * t.element_size() for t in model.state_dict().values()) / 2**20
    if extra_results is not None:
        results.update(extra_results())
    if lpips.reason:
        print(f"LPIPS not computed: {lpips.reason}")
    atomic_write_text(out_dir / "results.json", json.dumps(results, indent=2))
    return results
