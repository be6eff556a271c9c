"""instant-ngp / nerfstudio scenes: one ``transforms.json`` next to (or above) the images.

Keys read (each intrinsic key may sit at the top level, for every frame, or inside a frame, which
then wins for that frame):

- ``fl_x``, ``fl_y`` (pixels) or ``camera_angle_x`` / ``camera_angle_y`` (radians);
  fy falls back to fx when neither ``fl_y`` nor ``camera_angle_y`` is given;
- ``cx``, ``cy`` (default: image centre), ``w``, ``h`` (default: the first image's header);
- OpenCV distortion ``k1 k2 p1 p2`` (``Cameras.distortion`` is None when all are zero or absent;
  non-zero ``k3`` / ``k4`` and fisheye camera models are rejected rather than silently ignored);
- ``aabb_scale`` (default 1); ``frames[i].file_path`` relative to the json's folder, with or
  without extension; ``frames[i].transform_matrix``, an OpenGL camera-to-world (used as is:
  instant-ngp's internal ``scale`` / ``offset`` keys are not applied).

Splits: frames sorted by ``file_path``; every 8th (i % 8 == 0) is "test", the rest "train"
(fewer than 2 frames: all "train").

Background: if any image has an alpha channel (read from headers), images are composited on
white and ``white_background`` is True; otherwise False.

Bounds (a choice, documented here because the format does not fix them):

- ``aabb`` = [-1.5 s, 1.5 s]^3 with s = ``aabb_scale``, centred at the origin. This is the box
  instant-ngp uses: its unit cube, after its default scale 0.33 and offset 0.5, spans
  [-1.5, 1.5]^3 of the json's coordinates, and ``aabb_scale`` grows it about the centre.
- ``far`` = the largest distance from any camera centre to the box corner farthest from it, so
  every ray reaches through the whole box.
- ``near`` = 0.05 x the median distance from the camera centres to the origin (with a 1e-3 floor):
  content is assumed to be no closer to a camera than 5% of its typical orbit radius.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from turbonerf.cameras import Cameras
from turbonerf.data.images import (
    downscale_cameras,
    image_header,
    load_images,
    load_json,
    pose_from_json,
    resolve_image_path,
)
from turbonerf.data.scene import Scene, SceneInfo, Split, holdout_split
from turbonerf.errors import TurboNerfError

AABB_HALF_SIZE = 1.5
NEAR_FRACTION = 0.05
DISTORTION_KEYS = ("k1", "k2", "p1", "p2")


@dataclass
class FrameMeta:
    """One frame of a transforms.json, at full resolution.

    Attributes:
        image_path: the image file.
        c2w: [3, 4] float64 camera-to-world (OpenGL).
        fx, fy, cx, cy: intrinsics in pixels.
        width, height: image size in pixels.
        distortion: (k1, k2, p1, p2).
    """

    image_path: Path
    c2w: np.ndarray
    fx: float
    fy: float
    cx: float
    cy: float
    width: int
    height: int
    distortion: tuple[float, float, float, float]


@dataclass
class SceneMeta:
    """A parsed transforms.json: the frames sorted by ``file_path`` and the box scale."""

    json_path: Path
    frames: list[FrameMeta]
    aabb_scale: float
    skipped: list[str] = field(default_factory=list)
    """file_paths of frames left out because their image file is missing"""


def _number(value, key: str, path: Path, frame: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise TurboNerfError(f"frame '{frame}': '{key}' must be a finite number, got {value!r}", path)
    return float(value)


def _lookup(key: str, sources: tuple[dict, ...]):
    """The first source (frame, then scene) that holds ``key``, or None."""
    for src in sources:
        if key in src:
            return src[key]
    return None


def _focal(sources: tuple[dict, ...], axis: str, size: int, path: Path, frame: str) -> float | None:
    """fl_<axis> or a focal from camera_angle_<axis>, the frame's keys before the scene's."""
    for src in sources:
        if f"fl_{axis}" in src:
            return _number(src[f"fl_{axis}"], f"fl_{axis}", path, frame)
        if f"camera_angle_{axis}" in src:
            angle = _number(src[f"camera_angle_{axis}"], f"camera_angle_{axis}", path, frame)
            if not 0 < angle < math.pi:
                raise TurboNerfError(f"frame '{frame}': camera_angle_{axis} must be in (0, pi), got {angle}", path)
            return 0.5 * size / math.tan(0.5 * angle)
    return None


def parse_frame(frame: dict, scene: dict, root: Path, path: Path, index: int) -> FrameMeta:
    """Resolve one frame's image, pose, intrinsics and distortion (reads the image header only if w/h are absent)."""
    if not isinstance(frame, dict) or not isinstance(frame.get("file_path"), str):
        raise TurboNerfError(f"frame {index} has no 'file_path' string", path)
    name = frame["file_path"]
    if "transform_matrix" not in frame:
        raise TurboNerfError(f"frame '{name}' has no 'transform_matrix'", path)
    c2w = pose_from_json(frame["transform_matrix"], path, name)
    image_path = resolve_image_path(root, name)
    sources = (frame, scene)
    model = str(_lookup("camera_model", sources) or "").lower()
    if "fisheye" in model or "equirect" in model:
        raise TurboNerfError(
            f"frame '{name}': camera_model '{model.upper()}' is not supported (pinhole / OpenCV only)", path
        )
    w, h = _lookup("w", sources), _lookup("h", sources)
    if w is None or h is None:
        hw, hh, _ = image_header(image_path)
        w = hw if w is None else w
        h = hh if h is None else h
    width, height = int(_number(w, "w", path, name)), int(_number(h, "h", path, name))
    if width < 1 or height < 1:
        raise TurboNerfError(f"frame '{name}': image size {width}x{height} (w, h must be positive)", path)
    fx = _focal(sources, "x", width, path, name)
    if fx is None:
        raise TurboNerfError(f"frame '{name}': no focal length (need 'fl_x' or 'camera_angle_x')", path)
    fy = _focal(sources, "y", height, path, name)
    for axis, f in (("x", fx), ("y", fy)):
        if f is not None and not f > 0:
            raise TurboNerfError(f"frame '{name}': focal length fl_{axis} must be positive, got {f}", path)
    cx, cy = _lookup("cx", sources), _lookup("cy", sources)
    for key in ("k3", "k4"):
        value = _lookup(key, sources)
        if value is not None and _number(value, key, path, name) != 0.0:
            raise TurboNerfError(f"frame '{name}': distortion '{key}' is not supported (only k1 k2 p1 p2)", path)
    dist = tuple(_number(_lookup(k, sources) or 0.0, k, path, name) for k in DISTORTION_KEYS)
    return FrameMeta(
        image_path=image_path,
        c2w=c2w,
        fx=fx,
        fy=fx if fy is None else fy,
        cx=width / 2 if cx is None else _number(cx, "cx", path, name),
        cy=height / 2 if cy is None else _number(cy, "cy", path, name),
        width=width,
        height=height,
        distortion=dist,  # type: ignore[arg-type]
    )


def read_meta(root: Path) -> SceneMeta:
    """Parse ``root/transforms.json`` (no image is decoded)."""
    path = root / "transforms.json"
    data = load_json(path)
    frames = data.get("frames")
    if not isinstance(frames, list):
        raise TurboNerfError("'frames' must be a list", path)
    if not frames:
        raise TurboNerfError("no frames", path)
    for i, frame in enumerate(frames):
        if not isinstance(frame, dict) or not isinstance(frame.get("file_path"), str):
            raise TurboNerfError(f"frame {i} has no 'file_path' string", path)
    order = sorted(range(len(frames)), key=lambda i: frames[i]["file_path"])
    # colmap2nerf's sharpness filter (and users) delete blurry images but leave their frames:
    # skip those frames, as instant-ngp does, and say so once
    present = [i for i in order if resolve_image_path(path.parent, frames[i]["file_path"]).is_file()]
    skipped = [frames[i]["file_path"] for i in order if i not in set(present)]
    if not present:
        raise TurboNerfError(f"none of the {len(frames)} frames has its image file (first missing: {skipped[0]})", path)
    if skipped:
        print(f"warning: {path}: {len(skipped)} frame(s) skipped, their image files are missing (first: {skipped[0]})", file=sys.stderr)
    metas = [parse_frame(frames[i], data, path.parent, path, i) for i in present]
    aabb_scale = _number(data.get("aabb_scale", 1), "aabb_scale", path, "(scene)")
    if aabb_scale <= 0:
        raise TurboNerfError(f"'aabb_scale' must be positive, got {aabb_scale}", path)
    return SceneMeta(path, metas, aabb_scale, skipped)


def scene_aabb(aabb_scale: float) -> torch.Tensor:
    """[2, 3] origin-centred box of half size 1.5 * aabb_scale."""
    half = AABB_HALF_SIZE * aabb_scale
    return torch.tensor([[-half] * 3, [half] * 3], dtype=torch.float32)


def near_far(centres: np.ndarray, aabb: torch.Tensor) -> tuple[float, float]:
    """(near, far) for cameras at ``centres`` [N, 3] looking into ``aabb`` [2, 3] (see module docstring)."""
    box = aabb.double().numpy()
    farthest_corner = np.where(centres > box.mean(0), box[0], box[1])  # [N, 3] per-axis farther side
    far = float(np.linalg.norm(farthest_corner - centres, axis=1).max())
    near = max(NEAR_FRACTION * float(np.median(np.linalg.norm(centres, axis=1))), 1e-3)
    return near, far


def check_common_size(frames: list[FrameMeta], path: Path) -> tuple[int, int]:
    """(width, height) shared by every frame, or TurboNerfError naming the first image that differs."""
    width, height = frames[0].width, frames[0].height
    for f in frames:
        if (f.width, f.height) != (width, height):
            raise TurboNerfError(
                f"{f.image_path.name}: size {f.width}x{f.height} differs from {width}x{height} of "
                f"{frames[0].image_path.name} (all images of a scene must share one size)",
                path,
            )
    return width, height


def make_cameras(frames: list[FrameMeta], width: int, height: int) -> Cameras:
    """Full-resolution cameras for ``frames`` (distortion None when every coefficient is zero)."""
    col = lambda key: torch.tensor([getattr(f, key) for f in frames], dtype=torch.float32)  # noqa: E731
    dist = torch.tensor([f.distortion for f in frames], dtype=torch.float32)
    return Cameras(
        c2w=torch.from_numpy(np.stack([f.c2w for f in frames])).float(),
        fx=col("fx"),
        fy=col("fy"),
        cx=col("cx"),
        cy=col("cy"),
        width=width,
        height=height,
        distortion=dist if bool(dist.abs().max() > 0) else None,
    )


def has_alpha(frames: list[FrameMeta]) -> bool:
    """Whether any frame's image has an alpha channel (headers only)."""
    return any(image_header(f.image_path)[2] for f in frames)


def load(root: Path, downscale: int = 1, splits: tuple[str, ...] | None = None) -> Scene:
    """Load a transforms.json scene.

    Args:
        root: folder holding ``transforms.json``.
        downscale: integer factor by which images and intrinsics shrink (block averaging).
        splits: subset of ("train", "test") to load (None: both).
    """
    root = Path(root)
    meta = read_meta(root)
    width, height = check_common_size(meta.frames, meta.json_path)
    cameras = downscale_cameras(make_cameras(meta.frames, width, height), downscale)
    white = has_alpha(meta.frames)
    background = (1.0, 1.0, 1.0) if white else (0.0, 0.0, 0.0)
    loaded = {}
    for name, idx in holdout_split(len(meta.frames)).items():
        if (splits is not None and name not in splits) or not idx:
            continue
        paths = [meta.frames[i].image_path for i in idx]
        pixels = load_images(paths, background, downscale=downscale, expected_size=(width, height), keep_alpha=white)
        loaded[name] = Split.from_pixels(pixels, cameras[idx], paths)
    aabb = scene_aabb(meta.aabb_scale)
    near, far = near_far(np.stack([f.c2w[:, 3] for f in meta.frames]), aabb)
    return Scene(
        format="transforms",
        root=root,
        splits=loaded,
        near=near,
        far=far,
        white_background=white,
        ndc=False,
        aabb=aabb,
        depth_bounds=(near, far),
    )


def info(root: Path) -> SceneInfo:
    """Summarise a transforms.json scene from the json and image headers."""
    root = Path(root)
    meta = read_meta(root)
    first = meta.frames[0]
    aabb = scene_aabb(meta.aabb_scale)
    near, far = near_far(np.stack([f.c2w[:, 3] for f in meta.frames]), aabb)
    any_distortion = any(any(v != 0 for v in f.distortion) for f in meta.frames)
    return SceneInfo(
        format="transforms",
        root=root,
        splits={k: len(v) for k, v in holdout_split(len(meta.frames)).items()},
        width=first.width,
        height=first.height,
        fx=first.fx,
        fy=first.fy,
        cx=first.cx,
        cy=first.cy,
        near=near,
        far=far,
        white_background=has_alpha(meta.frames),
        ndc=False,
        aabb=aabb.tolist(),
        distortion=list(first.distortion) if any_distortion else None,
        extra={"aabb_scale": meta.aabb_scale, "skipped_frames": len(meta.skipped)},
    )
