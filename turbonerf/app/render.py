"""``turbonerf render``: RGB, depth and opacity images along a camera path, plus videos."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from turbonerf.cameras import Cameras
from turbonerf.data.formats import load_scene
from turbonerf.data.multiscene import detect_multiscene
from turbonerf.engine import runtime
from turbonerf.engine.distributed import WORK_TIMEOUT_S, Replicas, device_for_rank, joined
from turbonerf.app.sources import eval_objects
from turbonerf.app.runs import RunSpec, TreeOptions, renderer_for_run
from turbonerf.app.validate import require_positive
from turbonerf.errors import TurboNerfError
from turbonerf.io.media import depth_to_png, load_png, save_png, to_uint8, write_video
from turbonerf.render.paths import orbit_path, spiral_path

PATH_KINDS = ("test", "orbit", "spiral")


def path_cameras(spec: RunSpec, kind: str, n_frames: int, downscale: int) -> Cameras:
    """Cameras of a named path: the test views, an orbit (360-degree scenes) or a spiral (forward-facing)."""
    if kind not in PATH_KINDS:
        raise TurboNerfError(f"unknown path '{kind}' (choose from {', '.join(PATH_KINDS)})")
    split = "test" if kind == "test" else "train"
    scene = load_scene(spec.scene.data, downscale=downscale, splits=(split,))
    cams = scene.split(split).cameras
    if kind == "test":
        return cams[torch.arange(min(n_frames, len(cams)))]
    if kind == "orbit":
        return orbit_path(cams, n_frames)
    return spiral_path(cams, spec.scene.depth_bounds, n_frames)


def condition_on_object(model, spec: RunSpec, opts: "RenderOptions", sources_dir: Path) -> Cameras:
    """Give a multi-scene model the source views of the object ``opts.object`` (saved to
    ``sources_dir``) and return the cameras of the path around it: for a multi-scene set its
    scored views (``test``) or an orbit through its cameras; for a single scene the scene's path."""
    k = opts.source_views or model.config.max_source_views
    downscale = opts.downscale or spec.scene.downscale
    objects = eval_objects(spec.scene.data, "test", k, downscale)
    if opts.object is not None:
        objects = [o for o in objects if o.name == opts.object]
        if not objects:
            raise TurboNerfError(f"no held-out object named '{opts.object}'", spec.scene.data)
    obj = objects[0]
    for j, img in zip(obj.source_indices, obj.source_images):
        save_png(sources_dir / f"source_{j:03d}.png", img.numpy())
    model.condition(obj.source_images, obj.source_cameras)
    if detect_multiscene(spec.scene.data) is None:
        return path_cameras(spec, opts.path, opts.frames, downscale)
    if opts.path == "test":
        return obj.target_cameras[torch.arange(min(opts.frames, len(obj.target_cameras)))]
    if opts.path != "orbit":
        raise TurboNerfError(f"a multi-scene object renders along 'test' or 'orbit', not '{opts.path}'")
    ref = obj.target_cameras
    return orbit_path(ref, opts.frames)


@dataclass
class RenderOptions:
    """Options of ``turbonerf render`` (the camera path and the output)."""

    path: str = "orbit"
    """test, orbit (360-degree scenes) or spiral (forward-facing)"""
    frames: int = 60
    downscale: int | None = None
    fps: int = 24
    device: str = "auto"
    overwrite: bool = False
    progress: bool = True
    source_views: int | None = None
    """multi-scene methods (pixelNeRF): source views of the object (default: the method's maximum)"""
    object: str | None = None
    """multi-scene methods: which held-out object (default: the first of the test split)"""


def render_sequence(
    run_dir: Path, out: Path, opts: RenderOptions | None = None, baked: bool = False, tree: TreeOptions | None = None,
    replicas: Replicas | None = None,
) -> dict[str, Path]:
    """Render ``opts.frames`` frames along a path into ``out`` (rgb/, depth/, opacity/ PNGs, rgb
    and depth videos) with what :func:`renderer_for_run` picks (the model, or with ``baked`` a tree).

    With several processes (``torchrun``), rank r renders frames r, r + N, ...; rank 0 then reads
    all frames back for the videos and returns the paths (the other ranks return ``{}``).
    ``replicas``: the processes sharing the frames (default: those torchrun or ``--nproc`` started)."""
    opts = opts or RenderOptions()
    require_positive("--frames", opts.frames)
    require_positive("--fps", opts.fps)
    if opts.downscale is not None:
        require_positive("--downscale", opts.downscale)
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not opts.overwrite:
        raise TurboNerfError("output folder exists and is not empty (use --overwrite)", out)
    dev = runtime.resolve_device(opts.device)
    with joined(dev, replicas, WORK_TIMEOUT_S) as replicas:
        replicas.barrier()  # every rank has checked the output folder before any writes to it
        return _render_frames(run_dir, out, opts, baked, tree, device_for_rank(dev, replicas), replicas)


def _render_frames(
    run_dir: Path, out: Path, opts: RenderOptions, baked: bool, tree: TreeOptions | None, dev: torch.device, replicas: Replicas
) -> dict[str, Path]:
    runtime.configure(dev)
    renderer = renderer_for_run(Path(run_dir), dev, baked=baked, tree=tree)
    spec = renderer.spec
    for sub in ("rgb", "depth", "opacity"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    if renderer.model is not None and renderer.model.multi_scene:
        cams = condition_on_object(renderer.model, spec, opts, out / "sources")
    else:
        cams = path_cameras(spec, opts.path, opts.frames, opts.downscale or spec.scene.downscale)
    s = spec.scene
    mine = replicas.shard(len(cams))
    for i in tqdm(mine, desc=f"render {opts.path}", disable=not (opts.progress and replicas.is_main), unit="frame"):
        with runtime.autocast(dev):
            img = renderer.render_view(cams, i, s.near, s.far, s.ndc, s.background, device=dev)
        save_png(out / "rgb" / f"{i:04d}.png", to_uint8(img["rgb"]))
        save_png(out / "depth" / f"{i:04d}.png", depth_to_png(img["depth"], img["opacity"]))
        save_png(out / "opacity" / f"{i:04d}.png", img["opacity"])
    replicas.barrier()
    if not replicas.is_main:
        return {}
    rgb_frames = [load_png(out / "rgb" / f"{i:04d}.png") for i in range(len(cams))]
    depth_frames = [load_png(out / "depth" / f"{i:04d}.png") for i in range(len(cams))]
    return {
        "frames": out,
        "video": write_video(out / "rgb.mp4", rgb_frames, opts.fps),
        "depth_video": write_video(out / "depth.mp4", depth_frames, opts.fps),
    }
