"""``turbonerf eval``: render a split of a trained run (model or baked tree) and score it."""

from __future__ import annotations

import json
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from turbonerf.app.runs import RunLock, RunRenderer, TreeOptions, renderer_for_run
from turbonerf.app.validate import require_positive
from turbonerf.data.formats import load_scene, scene_info
from turbonerf.data.scene import Split
from turbonerf.engine import runtime
from turbonerf.engine.distributed import Replicas, close, device_for_rank, replicas_from_env
from turbonerf.errors import TurboNerfError
from turbonerf.eval.lpips import LpipsScorer
from turbonerf.eval.scores import image_scores, mean_scores
from turbonerf.io.files import atomic_write_text
from turbonerf.io.media import depth_to_png, save_png
from turbonerf.render.renderer import render_image


@dataclass
class EvalOptions:
    """Which images of which split are rendered, where, and how (shared by eval, the activation
    sweep and the baked-tree evaluation)."""

    split: str = "test"
    limit: int | None = None
    """at most this many images of the split"""
    every: int = 1
    """only every k-th image (0, k, 2k, ...)"""
    downscale: int | None = None
    """image downscale (default: the training one)"""
    device: str = "auto"
    chunk: int | None = None
    """rays rendered at once (default: what suits the renderer)"""
    bf16: bool = True
    progress: bool = True
    lpips_vgg: bool = True
    """also score LPIPS-VGG (0.3 s per 200x200 image on the development CPU, 9 s at 800x800)"""


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def check_eval_options(opts: EvalOptions) -> None:
    """A one-line error for any option that cannot work, before anything is loaded."""
    if opts.limit is not None:
        require_positive("--limit", opts.limit)
    require_positive("--every", opts.every)
    if opts.chunk is not None:
        require_positive("--chunk", opts.chunk)
    if opts.downscale is not None:
        require_positive("--downscale", opts.downscale)


def eval_images(spec_data: str, downscale: int, opts: EvalOptions) -> tuple[object, Split, list[int]]:
    """(scene, split, indices of the images to evaluate) for ``opts``."""
    available = scene_info(spec_data).splits
    if opts.split not in available:
        raise TurboNerfError(f"--split {opts.split}: the scene has no such split (available: {', '.join(available) or 'none'})", spec_data)
    scene = load_scene(spec_data, downscale=downscale, splits=(opts.split,))
    data = scene.split(opts.split)
    indices = list(range(0, len(data), max(1, opts.every)))[: opts.limit]
    if not indices:
        raise TurboNerfError(f"nothing to evaluate: split '{opts.split}' has {len(data)} images", spec_data)
    return scene, data, indices


def evaluate_renderer(
    run_dir: Path, renderer: RunRenderer, opts: EvalOptions, device: torch.device, out_dir: Path, replicas: Replicas = Replicas()
) -> dict:
    """Render and score the images of ``opts`` with ``renderer``; write ``out_dir/results.json``
    and ``out_dir/images``; return the results.

    With several processes (``torchrun``), rank r renders images r, r + N, ...; rank 0 gathers the
    per-image scores and writes results.json in the split's order, the same file one process writes
    (``ms_per_frame`` is then each frame's time on its own process; ``processes`` says how many)."""
    spec, meta = renderer.spec, renderer.meta
    scene, data, indices = eval_images(spec.scene.data, opts.downscale or spec.scene.downscale, opts)
    chunk = opts.chunk or renderer.chunk
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    lpips = LpipsScorer()
    per_image = []
    mine = [indices[k] for k in replicas.shard(len(indices))]
    replicas.barrier()
    start = time.perf_counter()
    for i in tqdm(mine, desc=f"eval {opts.split}", disable=not (opts.progress and replicas.is_main), unit="img"):
        t0 = time.perf_counter()
        with runtime.autocast(device, opts.bf16):
            out = render_image(
                renderer.render, data.cameras, i, scene.near, scene.far, scene.ndc, scene.background, chunk=chunk, device=device
            )
        ms = 1000.0 * (time.perf_counter() - t0)
        target = data.images[i].float() / 255.0
        name = Path(data.paths[i]).stem
        save_png(out_dir / "images" / f"{name}.png", out["rgb"])
        save_png(out_dir / "images" / f"{name}_depth.png", depth_to_png(out["depth"], out["opacity"]))
        scores = image_scores(out["rgb"], target, lpips, vgg=opts.lpips_vgg)
        per_image.append({"name": name, **scores, "ms": ms, "index": i})
    per_image = sorted((r for shard in replicas.gather(per_image) for r in shard), key=lambda r: r["index"])
    wall = time.perf_counter() - start
    if not replicas.is_main:
        return {}  # rank 0 writes and returns the results
    for r in per_image:
        del r["index"]

    def mean(key: str):
        vals = [r[key] for r in per_image if r[key] is not None]
        return sum(vals) / len(vals) if vals and len(vals) == len(per_image) else None

    results = {
        "method": spec.method,
        "run": str(run_dir),
        "checkpoint": meta.get("checkpoint", "latest"),
        "step": meta.get("step"),
        "train_seconds": meta.get("seconds"),
        "split": opts.split,
        "n_images": len(indices),
        "width": data.cameras.width,
        "height": data.cameras.height,
        "device": device_name(device),
        "processes": replicas.world_size,
        **mean_scores(per_image),
        "lpips_reason": lpips.reason,
        "ms_per_frame": mean("ms"),
        "wall_seconds": wall,  # rendering and scoring, all processes together: n_images / wall_seconds = throughput
        **renderer.describe(),
        "per_image": per_image,
    }
    if lpips.reason:
        print(f"LPIPS not computed: {lpips.reason}")
    atomic_write_text(out_dir / "results.json", json.dumps(results, indent=2))
    return results


def evaluate_run(
    run_dir: Path,
    opts: EvalOptions | None = None,
    baked: bool = False,
    tree: TreeOptions | None = None,
    checkpoint: Path | None = None,
    out_name: str | None = None,
) -> dict:
    """Evaluate a run with what :func:`renderer_for_run` picks (the model, a snapshot
    ``checkpoint``, or with ``baked`` its NerfTree); writes ``RUN/<out_name>/results.json``
    (default ``eval``, or ``eval_baked`` for a tree, with ``_<split>`` appended for a split other
    than test, so that scoring the train views keeps the test results) and returns the results."""
    opts = opts or EvalOptions()
    check_eval_options(opts)
    dev = runtime.resolve_device(opts.device)
    replicas = replicas_from_env(dev)
    try:
        dev = device_for_rank(dev, replicas)
        runtime.configure(dev)
        renderer = renderer_for_run(Path(run_dir), dev, baked=baked, tree=tree, checkpoint=checkpoint)
        if checkpoint is not None:
            renderer.meta["checkpoint"] = str(checkpoint)
        name = out_name or ("eval_baked" if baked else "eval") + ("" if opts.split == "test" else f"_{opts.split}")
        if not replicas.is_main:  # rank 0 holds the run's lock for all
            replicas.barrier()
            return evaluate_renderer(Path(run_dir), renderer, opts, dev, Path(run_dir) / name, replicas)
        with RunLock(Path(run_dir), "eval"):
            replicas.barrier()
            return evaluate_renderer(Path(run_dir), renderer, opts, dev, Path(run_dir) / name, replicas)
    finally:
        close(replicas)
