"""NeRF-synthetic ("Blender") scenes: ``transforms_{train,val,test}.json`` + RGBA PNGs.

Each json holds ``camera_angle_x`` (horizontal field of view, radians) and ``frames``, each with a
``file_path`` relative to the scene folder (usually without extension: ``./train/r_0`` means
``./train/r_0.png``) and a 4x4 OpenGL ``transform_matrix`` (camera-to-world).

Scene constants follow the NeRF paper: near 2, far 6, content inside [-1.5, 1.5]^3, images
composited on white. The principal point is the image centre and fx = fy = 0.5 W / tan(0.5 angle).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
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
from turbonerf.data.scene import Scene, SceneInfo, Split
from turbonerf.errors import TurboNerfError

SPLIT_NAMES = ("train", "val", "test")
NEAR, FAR = 2.0, 6.0
AABB_HALF_SIZE = 1.5


@dataclass
class SplitMeta:
    """What one ``transforms_<split>.json`` says, before any image is decoded.

    Attributes:
        json_path: the json file.
        image_paths: [N] resolved image files.
        c2w: [N, 3, 4] float64 camera-to-world (OpenGL).
        camera_angle_x: horizontal field of view in radians.
    """

    json_path: Path
    image_paths: list[Path]
    c2w: np.ndarray
    camera_angle_x: float


def read_split_meta(root: Path, split: str) -> SplitMeta:
    """Parse ``root/transforms_<split>.json`` (no image is read)."""
    path = root / f"transforms_{split}.json"
    data = load_json(path)
    angle = data.get("camera_angle_x")
    if not isinstance(angle, (int, float)) or isinstance(angle, bool) or not 0 < angle < math.pi:
        raise TurboNerfError(f"'camera_angle_x' must be a number in (0, pi), got {angle!r}", path)
    frames = data.get("frames")
    if not isinstance(frames, list):
        raise TurboNerfError("'frames' must be a list", path)
    if not frames:
        raise TurboNerfError(f"split '{split}' has no frames", path)
    image_paths, poses = [], []
    for i, frame in enumerate(frames):
        if not isinstance(frame, dict) or not isinstance(frame.get("file_path"), str):
            raise TurboNerfError(f"frame {i} has no 'file_path' string", path)
        if "transform_matrix" not in frame:
            raise TurboNerfError(f"frame {i} ('{frame['file_path']}') has no 'transform_matrix'", path)
        image_paths.append(resolve_image_path(root, frame["file_path"]))
        poses.append(pose_from_json(frame["transform_matrix"], path, f"{i}: {frame['file_path']}"))
    return SplitMeta(path, image_paths, np.stack(poses), float(angle))


def present_splits(root: Path) -> list[str]:
    """Names of the splits whose json exists, in train / val / test order."""
    return [s for s in SPLIT_NAMES if (root / f"transforms_{s}.json").is_file()]


def focal_from_angle(width: int, angle: float) -> float:
    """Focal length in pixels of a ``width``-pixel image spanning horizontal field of view ``angle``."""
    return 0.5 * width / math.tan(0.5 * angle)


def make_cameras(meta: SplitMeta, width: int, height: int) -> Cameras:
    """Full-resolution cameras of one split (N = number of frames)."""
    n = len(meta.image_paths)
    focal = focal_from_angle(width, meta.camera_angle_x)
    full = lambda v: torch.full((n,), float(v), dtype=torch.float32)  # noqa: E731
    return Cameras(
        c2w=torch.from_numpy(meta.c2w).float(),
        fx=full(focal),
        fy=full(focal),
        cx=full(width / 2),
        cy=full(height / 2),
        width=width,
        height=height,
    )


def aabb() -> torch.Tensor:
    """[2, 3] scene box."""
    return torch.tensor([[-AABB_HALF_SIZE] * 3, [AABB_HALF_SIZE] * 3], dtype=torch.float32)


def load(root: Path, downscale: int = 1, splits: tuple[str, ...] | None = None) -> Scene:
    """Load a NeRF-synthetic scene.

    Args:
        root: folder holding ``transforms_<split>.json``.
        downscale: integer factor by which images and intrinsics shrink (block averaging).
        splits: splits to load (None: all on disk); names not on disk are skipped.
    Returns:
        Scene with images composited on white; every split's images share the size of the first
        loaded image (a file of another size raises TurboNerfError naming it).
    """
    root = Path(root)
    names = [s for s in present_splits(root) if splits is None or s in splits]
    metas = {s: read_split_meta(root, s) for s in names}
    loaded: dict[str, Split] = {}
    size = None
    for name, meta in metas.items():
        if size is None:
            size = image_header(meta.image_paths[0])[:2]
        pixels = load_images(meta.image_paths, background=(1.0, 1.0, 1.0), downscale=downscale, expected_size=size,
                             keep_alpha=image_header(meta.image_paths[0])[2])
        cameras = downscale_cameras(make_cameras(meta, *size), downscale)
        loaded[name] = Split.from_pixels(pixels, cameras, meta.image_paths)
    return Scene(
        format="blender",
        root=root,
        splits=loaded,
        near=NEAR,
        far=FAR,
        white_background=True,
        ndc=False,
        aabb=aabb(),
        depth_bounds=(NEAR, FAR),
    )


def info(root: Path) -> SceneInfo:
    """Summarise a NeRF-synthetic scene from its jsons and the first image's header."""
    root = Path(root)
    names = present_splits(root)
    if not names:
        raise TurboNerfError("no transforms_{train,val,test}.json found", root)
    metas = {s: read_split_meta(root, s) for s in names}
    first = metas[names[0]]
    width, height, _ = image_header(first.image_paths[0])
    focal = focal_from_angle(width, first.camera_angle_x)
    return SceneInfo(
        format="blender",
        root=root,
        splits={s: len(m.image_paths) for s, m in metas.items()},
        width=width,
        height=height,
        fx=focal,
        fy=focal,
        cx=width / 2,
        cy=height / 2,
        near=NEAR,
        far=FAR,
        white_background=True,
        ndc=False,
        aabb=aabb().tolist(),
        distortion=None,
    )
