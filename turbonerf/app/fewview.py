"""Per-scene baselines for few-view rendering: a single-scene method (Instant-NGP, vanilla NeRF)
trained on only the 1-3 source views of each held-out object of a multi-scene set, with a fixed
budget, then scored on the same target views pixelNeRF is scored on
(:func:`turbonerf.app.sources.eval_objects`). ``turbonerf eval-fewview``.

Each object becomes an in-memory scene (its source views as the train split; the set's near / far;
a box of half size (far - near) / 2 about the origin; the set's background) trained by the one
training loop into ``OUT/<object>/``; ``OUT/results.json`` has the usual keys, ``per_object`` and
``per_image``.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from turbonerf.app.evaluate import device_name
from turbonerf.app.runs import load_trained, prepare_run_dir, write_run_spec
from turbonerf.app.sources import eval_objects
from turbonerf.app.train import TrainOptions, setup_spec, train_locked
from turbonerf.app.validate import require_positive
from turbonerf.data.multiscene import detect_multiscene, load_multiscene
from turbonerf.data.scene import Scene, Split
from turbonerf.engine import runtime
from turbonerf.errors import TurboNerfError
from turbonerf.eval.lpips import LpipsScorer
from turbonerf.eval.scores import image_scores, mean_scores
from turbonerf.io.files import atomic_write_text
from turbonerf.io.media import save_png
from turbonerf.render.renderer import render_image


@dataclass
class FewViewOptions:
    """Options of ``turbonerf eval-fewview``."""

    data: Path
    out: Path
    method: str = "instant-ngp"
    source_views: int = 3
    seconds: float = 60.0
    """training budget per object (wall clock)"""
    limit: int | None = None
    """at most this many held-out objects"""
    split: str = "test"
    every: int = 1
    """score only every k-th target view of each object"""
    warmup: bool = True
    """first train the first object for 2 steps, unscored, so that kernel compilation (numba) is
    not charged to the first object's budget"""
    batch_rays: int = 1024
    overrides: list[str] = field(default_factory=list)
    bf16: bool = False
    device: str = "cpu"
    progress: bool = True
    lpips_vgg: bool = False


def object_scene(obj, root: Path, near: float, far: float, white: bool) -> Scene:
    """An in-memory single scene whose train split is the object's source views. On a white
    background, pixels of pure white count as transparent (alpha 0): methods that carve their
    grids from the training views (Instant-NGP) start from the visual hull of the source views,
    as they would from RGBA images; this makes the baseline stronger, not weaker."""
    half = max((far - near) / 2, 1e-3)
    paths = [root / f"source_{j:03d}.png" for j in obj.source_indices]
    alphas = None
    if white:  # the background is pure white: a mask for carving the grids of Instant-NGP / EfficientNeRF
        alphas = torch.where((obj.source_images == 255).all(-1), 0, 255).to(torch.uint8)
    split = Split(obj.source_images, obj.source_cameras, paths, alphas)
    aabb = torch.tensor([[-half] * 3, [half] * 3], dtype=torch.float32)
    return Scene("objects", root, {"train": split}, near, far, white, False, aabb, (near, far))


def few_view_baseline(opts: FewViewOptions) -> dict:
    """Train ``opts.method`` per held-out object on its source views, score it on its targets;
    write and return ``opts.out/results.json``."""
    require_positive("--source-views", opts.source_views)
    require_positive("--seconds", opts.seconds)
    if detect_multiscene(opts.data) is None:
        raise TurboNerfError("few-view baselines need a multi-scene set (SRN / NMR)", opts.data)
    dev = runtime.resolve_device(opts.device)
    runtime.configure(dev, bf16=opts.bf16)
    objects = eval_objects(opts.data, opts.split, opts.source_views, limit=opts.limit)
    info = load_multiscene(opts.data, opts.split, max_objects=1)
    out = Path(opts.out)
    out.mkdir(parents=True, exist_ok=True)
    lpips = LpipsScorer()
    per_image, per_object = [], []
    if opts.warmup:
        warm = out / "_warmup"
        scene = object_scene(objects[0], warm, info.near, info.far, info.white_background)
        wopts = TrainOptions(method=opts.method, data=None, out=warm, max_steps=2, batch_rays=opts.batch_rays, overrides=list(opts.overrides),
                             bf16=opts.bf16, progress=False, overwrite=True, precrop_steps=0)
        spec = setup_spec(wopts, scene)
        prepare_run_dir(warm, True)
        write_run_spec(warm, spec)
        train_locked(wopts, spec, scene, scene.split("train"), dev, warm, resume=False)
    for obj in tqdm(objects, desc=f"{opts.method} per object ({opts.source_views} views)", disable=not opts.progress, unit="object"):
        run = out / obj.name.replace("/", "_")
        scene = object_scene(obj, run, info.near, info.far, info.white_background)
        topts = TrainOptions(method=opts.method, data=None, out=run, max_minutes=opts.seconds / 60.0, batch_rays=opts.batch_rays,
                             overrides=list(opts.overrides), bf16=opts.bf16, progress=False, overwrite=True,
                             precrop_steps=0, checkpoint_every=10**9, checkpoint_minutes=1e9, log_every=50)
        spec = setup_spec(topts, scene)
        prepare_run_dir(run, True)
        write_run_spec(run, spec)
        t0 = time.perf_counter()
        result = train_locked(topts, spec, scene, scene.split("train"), dev, run, resume=False)
        train_s = time.perf_counter() - t0
        model, _, _ = load_trained(run, dev)
        rows = []
        for i in range(0, len(obj.target_names), max(1, opts.every)):
            name = obj.target_names[i]
            t0 = time.perf_counter()
            with runtime.autocast(dev, opts.bf16):
                img = render_image(model.render, obj.target_cameras, i, scene.near, scene.far, False, scene.background, device=dev)
            ms = 1000.0 * (time.perf_counter() - t0)
            save_png(run / "images" / f"{name}.png", img["rgb"])
            scores = image_scores(img["rgb"], obj.target_images[i].float() / 255.0, lpips, vgg=opts.lpips_vgg)
            rows.append({"name": name, "object": obj.name, **scores, "ms": ms})
        per_image += rows
        per_object.append({"name": obj.name, "source_views": obj.source_indices, "n_images": len(rows), "steps": result.step,
                           "train_seconds": train_s, **mean_scores(rows)})
    results = {
        "method": opts.method,
        "baseline": "per-scene, trained on the source views only",
        "data": str(opts.data),
        "split": opts.split,
        "source_views": opts.source_views,
        "seconds_per_object": opts.seconds,
        "overrides": list(opts.overrides),
        "n_objects": len(objects),
        "n_images": len(per_image),
        "width": objects[0].target_cameras.width,
        "height": objects[0].target_cameras.height,
        "device": device_name(dev),
        **mean_scores(per_image),
        "lpips_reason": lpips.reason,
        "ms_per_frame": sum(r["ms"] for r in per_image) / len(per_image),
        "steps_mean": sum(o["steps"] for o in per_object) / len(per_object),
        "per_object": per_object,
        "per_image": per_image,
    }
    atomic_write_text(out / "results.json", json.dumps(results, indent=2))
    return results
