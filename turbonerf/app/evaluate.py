"""``turbonerf eval``: render a split of a trained run (model or baked tree) and score it."""

from __future__ import annotations

import json
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from turbonerf.app.sources import eval_objects
from turbonerf.app.runs import RunLock, RunRenderer, TreeOptions, renderer_for_run
from turbonerf.app.validate import require_positive
from turbonerf.data.formats import load_scene, scene_info
from turbonerf.data.scene import Split
from turbonerf.engine import runtime
from turbonerf.engine.distributed import WORK_TIMEOUT_S, Replicas, device_for_rank, joined
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
    bf16: bool = False
    progress: bool = True
    lpips_vgg: bool = True
    """also score LPIPS-VGG (0.3 s per 200x200 image on the development CPU, 9 s at 800x800)"""
    source_views: int | None = None
    """multi-scene methods (pixelNeRF): source views per held-out object (default: the method's
    ``max_source_views``); ``limit`` then counts objects"""


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
    if opts.source_views is not None:
        require_positive("--source-views", opts.source_views)


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


def run_header(run_dir: Path, renderer: RunRenderer, split: str) -> dict:
    """The first keys of every results.json: what was scored (method, run, checkpoint, step,
    training seconds, split)."""
    meta = renderer.meta
    return {
        "method": renderer.spec.method,
        "run": str(run_dir),
        "checkpoint": meta.get("checkpoint", "latest"),
        "step": meta.get("step"),
        "train_seconds": meta.get("seconds"),
        "split": split,
    }


def evaluate_renderer(
    run_dir: Path, renderer: RunRenderer, opts: EvalOptions, device: torch.device, out_dir: Path, replicas: Replicas = Replicas()
) -> dict:
    """Render and score the images of ``opts`` with ``renderer``; write ``out_dir/results.json``
    and ``out_dir/images``; return the results.

    With several processes (``torchrun``), rank r renders images r, r + N, ...; rank 0 gathers the
    per-image scores and writes results.json in the split's order, the same file one process writes
    (``ms_per_frame`` is then each frame's time on its own process; ``processes`` says how many)."""
    spec = renderer.spec
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
            out = renderer.render_view(data.cameras, i, scene.near, scene.far, scene.ndc, scene.background, chunk=chunk, device=device)
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
        **run_header(run_dir, renderer, opts.split),
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
    replicas: Replicas | None = None,
) -> dict:
    """Evaluate a run with what :func:`renderer_for_run` picks (the model, a snapshot
    ``checkpoint``, or with ``baked`` its NerfTree); writes ``RUN/<out_name>/results.json``
    (default ``eval``, or ``eval_baked`` for a tree, with ``_<split>`` appended for a split other
    than test, so that scoring the train views keeps the test results) and returns the results.
    ``replicas``: the processes sharing the images (default: those torchrun or ``--nproc``
    started; ``Replicas()`` scores alone, as a bench cell does)."""
    opts = opts or EvalOptions()
    check_eval_options(opts)
    dev = runtime.resolve_device(opts.device)
    with joined(dev, replicas, WORK_TIMEOUT_S) as replicas:
        dev = device_for_rank(dev, replicas)
        runtime.configure(dev, bf16=opts.bf16)
        renderer = renderer_for_run(Path(run_dir), dev, baked=baked, tree=tree, checkpoint=checkpoint)
        if checkpoint is not None:
            renderer.meta["checkpoint"] = str(checkpoint)
        multi = renderer.model is not None and renderer.model.multi_scene
        k = (opts.source_views or renderer.model.config.max_source_views) if multi else None
        name = out_name or eval_folder_name(baked, opts.split, k)
        if multi and replicas.distributed:
            raise TurboNerfError("a multi-scene method (pixelNeRF) is evaluated by one process: drop --nproc")
        if not replicas.is_main:  # rank 0 holds the run's lock for all
            replicas.barrier()
            return evaluate_renderer(Path(run_dir), renderer, opts, dev, Path(run_dir) / name, replicas)
        with RunLock(Path(run_dir), "eval"):
            replicas.barrier()
            if multi:
                return evaluate_multi_scene(Path(run_dir), renderer, opts, k, dev, Path(run_dir) / name)
            return evaluate_renderer(Path(run_dir), renderer, opts, dev, Path(run_dir) / name, replicas)


def eval_folder_name(baked: bool, split: str, source_views: int | None = None) -> str:
    """``eval`` / ``eval_baked``, ``_<split>`` for a split other than test, ``_<k>view(s)`` for a
    multi-scene method evaluated from k source views."""
    name = ("eval_baked" if baked else "eval") + ("" if split == "test" else f"_{split}")
    if source_views is not None:
        name += f"_{source_views}view" + ("s" if source_views > 1 else "")
    return name


def evaluate_multi_scene(run_dir: Path, renderer: RunRenderer, opts: EvalOptions, k: int, device: torch.device, out_dir: Path) -> dict:
    """A multi-scene method on the held-out objects of ``opts.split``, each from its ``k`` fixed
    source views (:func:`turbonerf.app.sources.eval_objects`): writes ``out_dir/results.json``
    (means over every scored image, ``per_object`` means and the source views of each object)
    and ``out_dir/images/<object>/`` (the sources, and each target's rendering); returns the results."""
    spec, model = renderer.spec, renderer.model
    objects = eval_objects(spec.scene.data, opts.split, k, opts.downscale or spec.scene.downscale, opts.limit)
    chunk = opts.chunk or renderer.chunk
    lpips = LpipsScorer()
    s = spec.scene
    per_image, per_object = [], []
    for obj in tqdm(objects, desc=f"eval {opts.split} ({k} source views)", disable=not opts.progress, unit="object"):
        folder = out_dir / "images" / obj.name.replace("/", "_")
        for j, img in zip(obj.source_indices, obj.source_images):
            save_png(folder / f"source_{j:03d}.png", img.numpy())
        t0 = time.perf_counter()
        with runtime.autocast(device, opts.bf16):
            model.condition(obj.source_images, obj.source_cameras)
        encode_ms = 1000.0 * (time.perf_counter() - t0)
        rows = []
        for i in range(0, len(obj.target_names), max(1, opts.every)):
            t0 = time.perf_counter()
            with runtime.autocast(device, opts.bf16):
                out = render_image(renderer.render, obj.target_cameras, i, s.near, s.far, s.ndc, s.background, chunk=chunk, device=device)
            ms = 1000.0 * (time.perf_counter() - t0)
            target = obj.target_images[i].float() / 255.0
            save_png(folder / f"{obj.target_names[i]}.png", out["rgb"])
            rows.append({"name": obj.target_names[i], "object": obj.name, **image_scores(out["rgb"], target, lpips, vgg=opts.lpips_vgg), "ms": ms})
        per_image += rows
        per_object.append({"name": obj.name, "source_views": obj.source_indices, "n_images": len(rows), "encode_ms": encode_ms,
                           **mean_scores(rows)})
    results = {
        **run_header(run_dir, renderer, opts.split),
        "source_views": k,
        "n_objects": len(objects),
        "n_images": len(per_image),
        "width": objects[0].target_cameras.width,
        "height": objects[0].target_cameras.height,
        "device": device_name(device),
        **mean_scores(per_image),
        "lpips_reason": lpips.reason,
        "ms_per_frame": sum(r["ms"] for r in per_image) / len(per_image),
        "encode_ms": sum(o["encode_ms"] for o in per_object) / len(per_object),
        **renderer.describe(),
        "per_object": per_object,
        "per_image": per_image,
    }
    if lpips.reason:
        print(f"LPIPS not computed: {lpips.reason}")
    atomic_write_text(out_dir / "results.json", json.dumps(results, indent=2))
    return results
