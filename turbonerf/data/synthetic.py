"""Tiny procedural scenes written to disk in every supported format, for tests and smoke runs.

The object is a unit sphere at the origin whose colour is ``0.5 + 0.5 * normal``, rendered
analytically (one ray per pixel centre, through :func:`turbonerf.cameras.camera_rays`, so
distortion is honoured). Blender and transforms scenes put cameras on a ring of radius 4 at 30
degrees elevation looking at the origin; the LLFF scene puts them on a small grid in front of it.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Sequence

import imageio.v3 as iio
import numpy as np
import torch

from turbonerf.cameras import Cameras, camera_rays

SPHERE_RADIUS = 1.0
BLENDER_CAMERA_ANGLE_X = 0.6911112070083618  # the NeRF-synthetic field of view


def look_at(
    eye: Sequence[float], target: Sequence[float] = (0.0, 0.0, 0.0), up: Sequence[float] = (0.0, 0.0, 1.0)
) -> np.ndarray:
    """[3, 4] OpenGL camera-to-world for a camera at ``eye`` looking at ``target`` (+z up by default)."""
    eye, target, up = (np.asarray(v, dtype=np.float64) for v in (eye, target, up))
    back = eye - target
    back /= np.linalg.norm(back)
    right = np.cross(up, back)
    right /= np.linalg.norm(right)
    true_up = np.cross(back, right)
    return np.stack([right, true_up, back, eye], axis=1)


def ring_poses(n: int, radius: float = 4.0, elevation_deg: float = 30.0, phase: float = 0.0) -> np.ndarray:
    """[n, 3, 4] cameras evenly spaced on a ring around +z, looking at the origin.

    ``phase`` is a fraction of the angular step (0.5 puts cameras halfway between those of phase 0).
    """
    elev = math.radians(elevation_deg)
    poses = []
    for i in range(n):
        az = 2.0 * math.pi * (i + phase) / n
        eye = radius * np.array([math.cos(elev) * math.cos(az), math.cos(elev) * math.sin(az), math.sin(elev)])
        poses.append(look_at(eye))
    return np.stack(poses)


def render_sphere(cameras: Cameras) -> np.ndarray:
    """Render the coloured unit sphere from every camera.

    Returns:
        float32 [N, H, W, 4] RGBA in [0, 1]; alpha is 1 on the sphere and 0 elsewhere (RGB 0 there).
    """
    n, h, w = len(cameras), cameras.height, cameras.width
    v, u = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    cam = torch.arange(n).repeat_interleave(h * w)
    o, d = camera_rays(cameras, cam, u.reshape(-1).repeat(n), v.reshape(-1).repeat(n))
    o, d = o.double(), d.double()
    b = (o * d).sum(-1)
    disc = b * b - ((o * o).sum(-1) - SPHERE_RADIUS**2)
    t = -b - disc.clamp(min=0).sqrt()
    hit = (disc > 0) & (t > 0)
    normal = (o + t[:, None] * d) / SPHERE_RADIUS
    rgb = (0.5 + 0.5 * normal).clamp(0, 1) * hit[:, None]
    rgba = torch.cat([rgb, hit[:, None].double()], dim=-1)
    return rgba.reshape(n, h, w, 4).float().numpy()


def _cameras(c2w: np.ndarray, fx, fy, cx, cy, width: int, height: int, distortion=None) -> Cameras:
    n = len(c2w)
    vec = lambda x: torch.as_tensor(x, dtype=torch.float32).expand(n).clone()  # noqa: E731
    dist = None
    if distortion is not None:
        dist = torch.as_tensor(distortion, dtype=torch.float32).expand(n, 4).clone()
    return Cameras(torch.from_numpy(c2w).float(), vec(fx), vec(fy), vec(cx), vec(cy), width, height, dist)


def _write_png(path: Path, rgba: np.ndarray, alpha: bool = True) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = rgba if alpha else rgba[..., :3]
    iio.imwrite(path, np.clip(np.rint(img * 255), 0, 255).astype(np.uint8))


def _size(size: int | tuple[int, int]) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def write_tiny_blender_scene(root: str | Path, n_train: int = 4, n_test: int = 2, size: int = 16) -> Path:
    """Write a NeRF-synthetic-format scene of the sphere: RGBA PNGs, ``file_path`` without extension.

    Test cameras sit halfway between training cameras on the same ring.

    Returns:
        the scene folder ``root``.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    focal = 0.5 * size / math.tan(0.5 * BLENDER_CAMERA_ANGLE_X)
    for split, n, phase in (("train", n_train, 0.0), ("test", n_test, 0.5)):
        c2w = ring_poses(n, phase=phase)
        images = render_sphere(_cameras(c2w, focal, focal, size / 2, size / 2, size, size))
        frames = []
        for i in range(n):
            _write_png(root / split / f"r_{i}.png", images[i])
            matrix = np.concatenate([c2w[i], [[0, 0, 0, 1]]]).tolist()
            frames.append({"file_path": f"./{split}/r_{i}", "transform_matrix": matrix})
        data = {"camera_angle_x": BLENDER_CAMERA_ANGLE_X, "frames": frames}
        (root / f"transforms_{split}.json").write_text(json.dumps(data, indent=2))
    return root


def write_tiny_transforms_scene(
    root: str | Path,
    n_frames: int = 10,
    size: int | tuple[int, int] = 16,
    distortion: Sequence[float] | None = None,
    per_frame_intrinsics: bool = False,
    camera_angle_only: bool = False,
    alpha: bool = False,
    aabb_scale: float | None = None,
) -> Path:
    """Write an instant-ngp / nerfstudio ``transforms.json`` scene of the sphere.

    Args:
        root: scene folder (images go to ``root/images/frame_NNN.png``).
        n_frames: number of frames (every 8th becomes a test view when loaded).
        size: image size, ``S`` or ``(width, height)``.
        distortion: OpenCV (k1, k2, p1, p2) written at scene level and used to render, or None.
        per_frame_intrinsics: write ``fl_x fl_y cx cy w h`` inside every frame (focal varies a little
            per frame, principal point off-centre) instead of once at the top.
        camera_angle_only: write only ``camera_angle_x`` (no ``fl_x``, ``w``, ``h``...).
        alpha: write RGBA images (the loader then composites on white) instead of RGB on black.
        aabb_scale: written when given.
    Returns:
        the scene folder ``root``.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    width, height = _size(size)
    c2w = ring_poses(n_frames)
    base_focal = 1.2 * width
    data: dict = {}
    if camera_angle_only:
        data["camera_angle_x"] = 2.0 * math.atan(0.5 * width / base_focal)
    elif not per_frame_intrinsics:
        data.update(fl_x=base_focal, fl_y=base_focal * 1.05, cx=width / 2 + 0.5, cy=height / 2 - 0.25)
        data.update(w=width, h=height)
    if distortion is not None:
        data.update(dict(zip(("k1", "k2", "p1", "p2"), (float(x) for x in distortion))))
    if aabb_scale is not None:
        data["aabb_scale"] = aabb_scale
    frames = []
    for i in range(n_frames):
        if camera_angle_only:
            fx = fy = base_focal
            cx, cy = width / 2, height / 2
        elif per_frame_intrinsics:
            fx, fy = base_focal * (1 + 0.02 * i), base_focal * (1 + 0.02 * i) * 1.01
            cx, cy = width / 2 + 0.1 * i, height / 2 - 0.1 * i
        else:
            fx, fy, cx, cy = data["fl_x"], data["fl_y"], data["cx"], data["cy"]
        cam = _cameras(c2w[i : i + 1], fx, fy, cx, cy, width, height, distortion)
        name = f"images/frame_{i:03d}.png"
        _write_png(root / name, render_sphere(cam)[0], alpha=alpha)
        frame = {"file_path": name, "transform_matrix": np.concatenate([c2w[i], [[0, 0, 0, 1]]]).tolist()}
        if per_frame_intrinsics and not camera_angle_only:
            frame.update(fl_x=fx, fl_y=fy, cx=cx, cy=cy, w=width, h=height)
        frames.append(frame)
    data["frames"] = frames[::-1]  # stored out of order: the loader sorts by file_path
    (root / "transforms.json").write_text(json.dumps(data, indent=2))
    return root


def write_tiny_llff_scene(
    root: str | Path, n_images: int = 10, width: int = 32, height: int = 24, factors: Sequence[int] = (2,)
) -> Path:
    """Write a forward-facing LLFF scene: ``poses_bounds.npy`` and one ``images[_K]`` folder per factor.

    Cameras lie on a 0.6-wide grid in the plane z = 4, all looking down -z at the sphere; the
    full-resolution focal is ``width``. Factor 1 writes ``images/``, factor K ``images_K/`` at
    ``(width // K, height // K)``.

    Returns:
        the scene folder ``root``.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    side = math.ceil(math.sqrt(n_images))
    offsets = [((i % side) / max(side - 1, 1) - 0.5, (i // side) / max(side - 1, 1) - 0.5) for i in range(n_images)]
    c2w = np.stack([np.array([[1, 0, 0, 0.6 * x], [0, 1, 0, 0.6 * y], [0, 0, 1, 4.0]]) for x, y in offsets])
    focal = float(width)
    # OpenGL [right, up, back] -> LLFF [down, right, back]
    llff = np.concatenate([-c2w[:, :, 1:2], c2w[:, :, 0:1], c2w[:, :, 2:4]], axis=2)
    hwf = np.broadcast_to(np.array([height, width, focal], dtype=np.float64)[None, :, None], (n_images, 3, 1))
    bounds = np.broadcast_to(np.array([2.9, 8.0]), (n_images, 2))
    arr = np.concatenate([np.concatenate([llff, hwf], axis=2).reshape(n_images, 15), bounds], axis=1)
    np.save(root / "poses_bounds.npy", arr)
    for k in factors:
        w, h = width // k, height // k
        images = render_sphere(_cameras(c2w, focal / k, focal / k, w / 2, h / 2, w, h))
        folder = root / ("images" if k == 1 else f"images_{k}")
        for i in range(n_images):
            _write_png(folder / f"image{i:03d}.png", images[i], alpha=False)
    return root
