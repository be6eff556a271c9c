"""A generated multi-object set in the SRN layout (:mod:`turbonerf.data.multiscene` reads it).

Each object is 1-3 of pybullet's 1000 procedural meshes (``pybullet_data/random_urdfs``), each
with a random colour, scale and offset, normalised to fit a sphere of radius
:data:`OBJECT_RADIUS` at the origin, under a random light; pybullet's CPU renderer
(TinyRenderer) draws V views from cameras on a sphere of radius :data:`CAMERA_DISTANCE` looking
at the origin (random azimuth and elevation in [-20, 60] degrees, z up), on a white background.
The meshes are split once: train objects use the first 80% of a seeded permutation of the 1000
meshes, test objects the rest, so no held-out object shares a shape with a training one.

Everything is a function of the seed: the same call writes the same bytes. ``pybullet`` is an
optional dependency (``pip install turbonerf[objects]``).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from turbonerf.data.multiscene import META_FILE, opengl_to_opencv_c2w
from turbonerf.errors import TurboNerfError
from turbonerf.io.files import atomic_write_text
from turbonerf.io.media import save_png

OBJECT_RADIUS = 1.0
CAMERA_DISTANCE = 4.0
FOV_DEGREES = 30.0
"""field of view of every camera (square images)"""
RASTER_OFFSET = (0.5, -0.5)
"""TinyRenderer draws a point where a pinhole with its principal point at the image centre would put it
shifted by this (u, v) in pixels (measured with a small sphere, tests/data/test_objects.py): the
intrinsics written carry it, so the cameras match the pixels"""
N_MESHES = 1000
TRAIN_MESH_FRACTION = 0.8


@dataclass
class ObjectSetOptions:
    """What ``turbonerf dataset objects`` generates."""

    out: Path
    objects: int = 300
    """objects in all; ``test_objects`` of them form the test split"""
    test_objects: int = 25
    views: int = 24
    size: int = 64
    seed: int = 0


@dataclass
class ObjectSpec:
    """One object: its parts (mesh index, rgb in [0, 1], scale, offset [3]) and its light."""

    name: str
    meshes: list[int]
    colors: list[list[float]]
    scales: list[float]
    offsets: list[list[float]]
    light_direction: list[float]
    ambient: float
    diffuse: float


def near_far() -> tuple[float, float]:
    """The sampling range that covers the object's sphere from every camera."""
    return CAMERA_DISTANCE - 1.2 * OBJECT_RADIUS, CAMERA_DISTANCE + 1.2 * OBJECT_RADIUS


def focal_pixels(size: int) -> float:
    return 0.5 * size / math.tan(math.radians(FOV_DEGREES) / 2)


def principal_point(size: int) -> tuple[float, float]:
    """(cx, cy) in pixels of the rendered images (the centre plus :data:`RASTER_OFFSET`)."""
    return size / 2 + RASTER_OFFSET[0], size / 2 + RASTER_OFFSET[1]


def look_at_c2w(eye: np.ndarray, target: np.ndarray, up: np.ndarray) -> np.ndarray:
    """[3, 4] OpenGL camera-to-world of a camera at ``eye`` looking at ``target`` (-z forward)."""
    back = eye - target
    back = back / np.linalg.norm(back)
    right = np.cross(up, back)
    right = right / np.linalg.norm(right)
    true_up = np.cross(back, right)
    return np.stack([right, true_up, back, eye], axis=1)


def sphere_cameras(rng: np.random.Generator, n: int) -> np.ndarray:
    """[n, 3, 4] OpenGL camera-to-world on the camera sphere: azimuths evenly spread with jitter,
    elevations uniform in [-20, 60] degrees, z up."""
    az = (np.arange(n) + rng.uniform(0, 1, n)) * (2 * math.pi / n)
    el = np.radians(rng.uniform(-20.0, 60.0, n))
    eyes = CAMERA_DISTANCE * np.stack([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)], axis=1)
    return np.stack([look_at_c2w(e, np.zeros(3), np.array([0.0, 0.0, 1.0])) for e in eyes])


def object_specs(opts: ObjectSetOptions) -> dict[str, list[ObjectSpec]]:
    """split -> its objects, drawn from ``opts.seed`` only."""
    rng = np.random.default_rng(opts.seed)
    perm = rng.permutation(N_MESHES)
    cut = int(TRAIN_MESH_FRACTION * N_MESHES)
    pools = {"train": perm[:cut], "test": perm[cut:]}
    counts = {"train": opts.objects - opts.test_objects, "test": opts.test_objects}
    specs: dict[str, list[ObjectSpec]] = {}
    for split, pool in pools.items():
        specs[split] = []
        for i in range(counts[split]):
            n_parts = int(rng.integers(1, 4))
            light = rng.normal(size=3)
            light[2] = abs(light[2]) + 0.5
            specs[split].append(ObjectSpec(
                name=f"{split}_{i:05d}",
                meshes=[int(m) for m in rng.choice(pool, n_parts, replace=False)],
                colors=rng.uniform(0.05, 0.95, (n_parts, 3)).round(3).tolist(),
                scales=rng.uniform(0.6, 1.4, n_parts).round(3).tolist(),
                offsets=(rng.normal(size=(n_parts, 3)) * 0.04 * (n_parts > 1)).round(4).tolist(),
                light_direction=(light / np.linalg.norm(light)).round(4).tolist(),
                ambient=round(float(rng.uniform(0.4, 0.7)), 3),
                diffuse=round(float(rng.uniform(0.3, 0.6)), 3),
            ))
    return specs


def _import_pybullet():
    try:
        import pybullet
        import pybullet_data
    except ImportError:
        raise TurboNerfError("generating the object set needs pybullet: pip install 'turbonerf[objects]'") from None
    return pybullet, pybullet_data


def render_object(spec: ObjectSpec, c2w: np.ndarray, size: int) -> np.ndarray:
    """[V, size, size, 3] uint8 renders of one object from the cameras ``c2w`` [V, 3, 4] (OpenGL)."""
    p, pybullet_data = _import_pybullet()
    client = p.connect(p.DIRECT)
    try:
        root = pybullet_data.getDataPath()
        bodies = []
        for mesh, color, scale, offset in zip(spec.meshes, spec.colors, spec.scales, spec.offsets):
            urdf = os.path.join(root, "random_urdfs", f"{mesh:03d}", f"{mesh:03d}.urdf")
            body = p.loadURDF(urdf, basePosition=offset, globalScaling=scale, physicsClientId=client)
            p.changeVisualShape(body, -1, rgbaColor=[*color, 1.0], physicsClientId=client)
            bodies.append(body)
        lo = np.min([p.getAABB(b, physicsClientId=client)[0] for b in bodies], axis=0)
        hi = np.max([p.getAABB(b, physicsClientId=client)[1] for b in bodies], axis=0)
        centre, radius = (lo + hi) / 2, np.linalg.norm(hi - lo) / 2
        # pybullet cannot rescale a loaded body: fold the normalisation into the cameras instead
        k = radius / OBJECT_RADIUS
        proj = p.computeProjectionMatrixFOV(FOV_DEGREES, 1.0, 0.01 * k, 20.0 * k)
        images = np.empty((len(c2w), size, size, 3), dtype=np.uint8)
        for i, cam in enumerate(c2w):
            world = np.eye(4)
            world[:3, :3] = cam[:, :3]
            world[:3, 3] = centre + k * cam[:, 3]
            view = np.linalg.inv(world)
            _, _, rgba, _, seg = p.getCameraImage(
                size, size, viewMatrix=view.T.reshape(-1).tolist(), projectionMatrix=proj,
                lightDirection=spec.light_direction, lightAmbientCoeff=spec.ambient, lightDiffuseCoeff=spec.diffuse,
                lightSpecularCoeff=0.1, shadow=0, renderer=p.ER_TINY_RENDERER, physicsClientId=client)
            rgb = np.asarray(rgba, dtype=np.uint8).reshape(size, size, 4)[..., :3].copy()
            rgb[np.asarray(seg).reshape(size, size) < 0] = 255
            images[i] = rgb
        return images
    finally:
        p.disconnect(client)


def write_srn_object(folder: Path, images: np.ndarray, c2w: np.ndarray, size: int) -> None:
    """``folder/rgb/NNNNNN.png``, ``pose/NNNNNN.txt`` (OpenCV c2w) and ``intrinsics.txt``."""
    poses = opengl_to_opencv_c2w(c2w)
    (folder / "pose").mkdir(parents=True, exist_ok=True)
    for i, (img, pose) in enumerate(zip(images, poses)):
        save_png(folder / "rgb" / f"{i:06d}.png", img)
        atomic_write_text(folder / "pose" / f"{i:06d}.txt", " ".join(f"{x:.8f}" for x in pose.reshape(-1)) + "\n")
    f, (cx, cy) = focal_pixels(size), principal_point(size)
    atomic_write_text(folder / "intrinsics.txt", f"{f:.8f} {cx:.8f} {cy:.8f} 0.\n0. 0. 0.\n1.\n{size} {size}\n")


def generate_objects(opts: ObjectSetOptions, progress: Callable[[int, int], None] | None = None) -> dict:
    """Write the set to ``opts.out`` (SRN layout + ``multiscene.json``); returns that json's content.
    ``progress(done, total)`` is called after each object."""
    if opts.objects <= opts.test_objects or opts.test_objects < 1:
        raise TurboNerfError(f"need more objects ({opts.objects}) than test objects ({opts.test_objects}), and at least 1 test object")
    if opts.views < 2 or opts.size < 8:
        raise TurboNerfError("need at least 2 views of at least 8x8 pixels")
    _import_pybullet()
    out = Path(opts.out)
    if out.exists() and any(out.iterdir()):
        raise TurboNerfError("refusing to write the object set into a non-empty folder", out)
    specs = object_specs(opts)
    total, done = sum(len(v) for v in specs.values()), 0
    for split, objs in specs.items():
        for j, spec in enumerate(objs):
            rng = np.random.default_rng([opts.seed, 1 if split == "train" else 2, j])
            c2w = sphere_cameras(rng, opts.views)
            write_srn_object(out / split / spec.name, render_object(spec, c2w, opts.size), c2w, opts.size)
            done += 1
            if progress is not None:
                progress(done, total)
    near, far = near_far()
    meta = {
        "generator": "turbonerf dataset objects",
        "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(opts).items() if k != "out"},
        "near": near, "far": far, "white_background": True,
        "objects": {split: [asdict(s) for s in objs] for split, objs in specs.items()},
    }
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / META_FILE, json.dumps(meta, indent=1))
    return meta
