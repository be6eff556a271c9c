"""``turbonerf render``: RGB, depth and opacity images along a camera path, plus videos."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from turbonerf.cameras import Cameras
from turbonerf.data.scene import load_scene
from turbonerf.engine import runtime
from turbonerf.engine.run import RunSpec, load_trained
from turbonerf.errors import TurboNerfError
from turbonerf.eval.media import depth_to_png, save_png, to_uint8, write_video
from turbonerf.render.paths import orbit_path, spiral_path
from turbonerf.render.renderer import render_image

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


def render_sequence(
    run_dir: Path,
    kind: str,
    out: Path,
    n_frames: int = 60,
    downscale: int | None = None,
    fps: int = 24,
    device: str = "auto",
    overwrite: bool = False,
    chunk: int = 4096,
    progress: bool = True,
    render_fn=None,
) -> dict[str, Path]:
    """Render ``n_frames`` along a path into ``out`` (rgb/, depth/, opacity/ PNGs, rgb and depth videos).

    ``render_fn`` (rays, background) -> {rgb, depth, opacity} replaces the model's ``render`` (e.g. a baked NerfTree).
    """
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise TurboNerfError("output folder exists and is not empty (use --overwrite)", out)
    dev = runtime.resolve_device(device)
    runtime.configure(dev)
    model, spec, _ = load_trained(Path(run_dir), dev)
    cams = path_cameras(spec, kind, n_frames, downscale or spec.scene.downscale)
    for sub in ("rgb", "depth", "opacity"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    rgb_frames, depth_frames = [], []
    s = spec.scene
    for i in tqdm(range(len(cams)), desc=f"render {kind}", disable=not progress, unit="frame"):
        with runtime.autocast(dev):
            img = render_image(render_fn or model.render, cams, i, s.near, s.far, s.ndc, s.background, chunk, dev)
        rgb = to_uint8(img["rgb"])
        depth = depth_to_png(img["depth"], img["opacity"])
        save_png(out / "rgb" / f"{i:04d}.png", rgb)
        save_png(out / "depth" / f"{i:04d}.png", depth)
        save_png(out / "opacity" / f"{i:04d}.png", img["opacity"])
        rgb_frames.append(rgb)
        depth_frames.append(np.asarray(depth))
    return {
        "frames": out,
        "video": write_video(out / "rgb.mp4", rgb_frames, fps),
        "depth_video": write_video(out / "depth.mp4", depth_frames, fps),
    }
