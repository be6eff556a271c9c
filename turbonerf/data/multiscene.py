"""Multi-scene data sets (many objects, a few dozen posed views each): what pixelNeRF trains on.

Two formats are read, both into a :class:`MultiSceneSet` (every camera in turbonerf's OpenGL
convention, :mod:`turbonerf.cameras`):

- **SRN** (Sitzmann et al. 2019; the ``srn_cars`` / ``srn_chairs`` sets pixelNeRF uses, and the
  layout :mod:`turbonerf.data.objects` writes): ``<root>/<split>/<object>/rgb/NNNNNN.png``,
  ``pose/NNNNNN.txt`` (a camera-to-world 4x4 in the OpenCV convention: +z forward, y down, x
  right), ``intrinsics.txt`` (first line ``f cx cy 0``, last line ``H W``: the resolution the
  intrinsics are given for; they are rescaled to the images' size). The split folder may also be
  named ``<anything>_<split>`` (``cars_train``). SRN files do not give the sampling range: an
  optional ``<root>/multiscene.json`` (``{"near": .., "far": ..}``, written by the generator)
  does; otherwise :data:`SRN_NEAR_FAR` (srn_cars') applies.
- **NMR** (the DVR renders of ShapeNet at 64x64 by Kato et al. / Niemeyer et al.; pixelNeRF's
  category-agnostic set): ``<root>/<category>/<object>/image/NNNN.png``, ``cameras.npz`` holding
  ``world_mat_i`` (world-to-camera extrinsics ``[R | t]``, OpenCV axes) and ``camera_mat_i`` (an
  intrinsic matrix in normalised image coordinates: pixel = (x + 1) W / 2), and the split lists
  ``<category>/softras_{train,val,test}.lst`` (one object name a line). As in pixelNeRF the
  world is turned by 180 degrees about x (``diag(1, -1, -1)``) so that "up" is +y.

Images are composited on white (both sets are white-background renders).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from turbonerf.cameras import Cameras
from turbonerf.data.formats import load_scene
from turbonerf.data.images import load_images
from turbonerf.data.scene import Scene
from turbonerf.errors import TurboNerfError

OPENCV_TO_OPENGL = np.diag([1.0, -1.0, -1.0])
"""camera axes: OpenCV (x right, y down, z forward) <-> OpenGL (x right, y up, z backward); its own inverse"""

SRN_NEAR_FAR = (0.8, 1.8)
"""srn_cars' sampling range (pixelNeRF's configuration), when a set does not give its own"""

NMR_NEAR_FAR = (1.2, 4.0)
"""pixelNeRF's range for the NMR ShapeNet renders (cameras about 2.7 from the origin)"""

META_FILE = "multiscene.json"


@dataclass
class SceneViews:
    """One object of a multi-scene set.

    Attributes:
        name: the object's folder name.
        images: [V, H, W, 3] uint8 RGB (composited on white).
        cameras: its V cameras (OpenGL convention, at the images' resolution).
    """

    name: str
    images: Tensor
    cameras: Cameras

    def __len__(self) -> int:
        return self.images.shape[0]


def object_boxes(images: Tensor, background: Tensor, tolerance: int = 8) -> Tensor:
    """The 2D bounding box of the pixels that differ from the background, per view (pixelNeRF's
    ``bbox`` of its SRN / DVR loaders). A view with no such pixel gets the whole image.

    Args:
        images: [V, H, W, 3] uint8.
        background: [3] colour in [0, 1].
        tolerance: a pixel is the object's where some channel differs by more than this (of 255).
    Returns:
        [V, 4] int64 (row0, row1, col0, col1), half-open.
    """
    bg = (background.to(torch.float32) * 255.0).round().to(torch.int16)
    fg = ((images.to(torch.int16) - bg).abs() > tolerance).any(dim=-1)  # [V, H, W]
    rows, cols = fg.any(dim=2), fg.any(dim=1)  # [V, H], [V, W]
    h, w = fg.shape[1:]

    def span(mask: Tensor, size: int) -> tuple[Tensor, Tensor]:
        idx = torch.arange(size).expand_as(mask)
        first = torch.where(mask, idx, size).min(dim=1).values
        last = torch.where(mask, idx, -1).max(dim=1).values + 1
        empty = last <= first
        return torch.where(empty, 0, first), torch.where(empty, size, last)

    r0, r1 = span(rows, h)
    c0, c1 = span(cols, w)
    return torch.stack([r0, r1, c0, c1], dim=1).to(torch.int64)


@dataclass
class MultiSceneSet:
    """The objects of one split of a multi-scene data set.

    Attributes:
        format: "srn" or "nmr".
        root: the data set folder.
        split: "train", "val" or "test".
        scenes: the objects, sorted by name.
        near, far: sampling range along unit-direction rays.
        white_background: composite on white.
    """

    format: str
    root: Path
    split: str
    scenes: list[SceneViews]
    near: float
    far: float
    white_background: bool = True

    def __len__(self) -> int:
        return len(self.scenes)

    @property
    def background(self) -> Tensor:
        """[3] background colour."""
        return torch.ones(3) if self.white_background else torch.zeros(3)

    @property
    def image_size(self) -> tuple[int, int]:
        """(height, width) of every image."""
        return tuple(self.scenes[0].images.shape[1:3])

    def scene(self, name: str) -> SceneViews:
        for s in self.scenes:
            if s.name == name:
                return s
        raise TurboNerfError(f"no object '{name}' in the {self.split} split", self.root)


# --------------------------------------------------------------------------------------------
# camera conversions
# --------------------------------------------------------------------------------------------


def opencv_to_opengl_c2w(c2w: np.ndarray) -> np.ndarray:
    """[..., 3|4, 4] camera-to-world with OpenCV camera axes -> [..., 3, 4] with OpenGL axes."""
    out = np.array(c2w[..., :3, :4], dtype=np.float64)
    out[..., :3, :3] = out[..., :3, :3] @ OPENCV_TO_OPENGL
    return out


def opengl_to_opencv_c2w(c2w: np.ndarray) -> np.ndarray:
    """[..., 3|4, 4] OpenGL camera-to-world -> [..., 4, 4] OpenCV camera-to-world (SRN's pose files)."""
    c2w = np.asarray(c2w, dtype=np.float64)
    out = np.zeros(c2w.shape[:-2] + (4, 4))
    out[..., :3, :4] = c2w[..., :3, :4]
    out[..., :3, :3] = c2w[..., :3, :3] @ OPENCV_TO_OPENGL
    out[..., 3, 3] = 1.0
    return out


def pinhole_cameras(c2w_gl: np.ndarray, f: float, cx: float, cy: float, width: int, height: int) -> Cameras:
    """V cameras sharing one intrinsic: ``c2w_gl`` [V, 3, 4] OpenGL camera-to-world."""
    n = c2w_gl.shape[0]
    full = lambda x: torch.full((n,), float(x), dtype=torch.float32)  # noqa: E731
    return Cameras(torch.from_numpy(np.ascontiguousarray(c2w_gl)).float(), full(f), full(f), full(cx), full(cy), width, height)


# --------------------------------------------------------------------------------------------
# SRN
# --------------------------------------------------------------------------------------------


def srn_split_dir(root: Path, split: str) -> Path:
    """``root/<split>`` or the one ``root/*_<split>`` folder."""
    direct = root / split
    if direct.is_dir():
        return direct
    matches = sorted(p for p in root.glob(f"*_{split}") if p.is_dir())
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise TurboNerfError(f"no '{split}' split (expected a folder {split}/ or *_{split}/)", root)
    raise TurboNerfError(f"several '{split}' folders: {', '.join(p.name for p in matches)}", root)


def read_srn_intrinsics(path: Path) -> tuple[float, float, float, int, int]:
    """(f, cx, cy, height, width) of an SRN ``intrinsics.txt``."""
    try:
        lines = [ln.split() for ln in path.read_text().splitlines() if ln.strip()]
        f, cx, cy = (float(x) for x in lines[0][:3])
        height, width = (int(float(x)) for x in lines[-1][:2])
    except (OSError, ValueError, IndexError) as err:
        raise TurboNerfError(f"cannot read SRN intrinsics ({err}); expected 'f cx cy 0' first and 'H W' last", path) from None
    return f, cx, cy, height, width


def read_srn_pose(path: Path) -> np.ndarray:
    """[4, 4] OpenCV camera-to-world from an SRN pose file (16 numbers)."""
    try:
        values = np.array(path.read_text().split(), dtype=np.float64)
    except (OSError, ValueError) as err:
        raise TurboNerfError(f"cannot read SRN pose ({err})", path) from None
    if values.size != 16 or not np.all(np.isfinite(values)):
        raise TurboNerfError(f"an SRN pose holds 16 finite numbers, found {values.size}", path)
    return values.reshape(4, 4)


def read_srn_object(folder: Path, max_views: int | None = None) -> SceneViews:
    """One SRN object folder (``rgb/``, ``pose/``, ``intrinsics.txt``)."""
    images = sorted((folder / "rgb").glob("*.png"))
    if not images:
        raise TurboNerfError("no rgb/*.png", folder)
    if max_views is not None:
        images = images[:max_views]
    poses = []
    for img in images:
        pose_file = folder / "pose" / (img.stem + ".txt")
        if not pose_file.is_file():
            raise TurboNerfError(f"no pose for {img.name}", pose_file)
        poses.append(read_srn_pose(pose_file))
    f, cx, cy, h0, w0 = read_srn_intrinsics(folder / "intrinsics.txt")
    pixels = load_images(images, background=(1.0, 1.0, 1.0))
    h, w = pixels.shape[1:3]
    sx, sy = w / w0, h / h0
    cams = pinhole_cameras(opencv_to_opengl_c2w(np.stack(poses)), f * sx, cx * sx, cy * sy, w, h)
    cams.fy = cams.fy * (sy / sx)
    return SceneViews(folder.name, torch.as_tensor(pixels[..., :3]).contiguous(), cams)


def load_srn(root: Path, split: str, max_objects: int | None = None, max_views: int | None = None) -> MultiSceneSet:
    """Every object of one SRN split (sorted by name; the first ``max_objects`` when given)."""
    root = Path(root)
    folder = srn_split_dir(root, split)
    objects = sorted(p for p in folder.iterdir() if (p / "rgb").is_dir())
    if not objects:
        raise TurboNerfError("no object folders (with rgb/) in this split", folder)
    if max_objects is not None:
        objects = objects[:max_objects]
    near, far = SRN_NEAR_FAR
    meta_path = root / META_FILE
    if meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        near, far = float(meta["near"]), float(meta["far"])
    scenes = [read_srn_object(o, max_views) for o in objects]
    return MultiSceneSet("srn", root, split, scenes, near, far)


# --------------------------------------------------------------------------------------------
# NMR / DVR
# --------------------------------------------------------------------------------------------


def nmr_categories(root: Path) -> list[Path]:
    """Category folders (those holding a ``softras_*.lst``)."""
    return sorted(p for p in root.iterdir() if p.is_dir() and any(p.glob("softras_*.lst")))


def read_nmr_object(folder: Path, max_views: int | None = None) -> SceneViews:
    """One NMR object folder (``image/*.png``, ``cameras.npz``)."""
    images = sorted((folder / "image").glob("*.png"))
    if not images:
        raise TurboNerfError("no image/*.png", folder)
    if max_views is not None:
        images = images[:max_views]
    cam_path = folder / "cameras.npz"
    try:
        cams = np.load(cam_path)
    except (OSError, ValueError) as err:
        raise TurboNerfError(f"cannot read cameras ({err})", cam_path) from None
    pixels = load_images(images, background=(1.0, 1.0, 1.0))
    h, w = pixels.shape[1:3]
    c2w, focal = [], []
    for i in range(len(images)):
        key = f"world_mat_{i}"
        if key not in cams or f"camera_mat_{i}" not in cams:
            raise TurboNerfError(f"no {key} / camera_mat_{i}", cam_path)
        w2c = np.eye(4)
        w2c[: cams[key].shape[0], :4] = cams[key][:, :4]
        pose = np.linalg.inv(w2c)  # OpenCV camera-to-world
        pose[:3, :4] = OPENCV_TO_OPENGL @ pose[:3, :4]  # turn the world: y up
        c2w.append(opencv_to_opengl_c2w(pose))
        focal.append(float(cams[f"camera_mat_{i}"][0, 0]) * w / 2.0)
    return SceneViews(folder.name, torch.as_tensor(pixels[..., :3]).contiguous(),
                      _per_view_cameras(np.stack(c2w), np.array(focal), w, h))


def _per_view_cameras(c2w_gl: np.ndarray, focal: np.ndarray, width: int, height: int) -> Cameras:
    f = torch.from_numpy(focal).float()
    return Cameras(torch.from_numpy(c2w_gl).float(), f, f.clone(), torch.full_like(f, width / 2), torch.full_like(f, height / 2), width, height)


def load_nmr(root: Path, split: str, max_objects: int | None = None, max_views: int | None = None) -> MultiSceneSet:
    """The objects of ``softras_<split>.lst`` over every category (sorted category/object)."""
    root = Path(root)
    categories = nmr_categories(root)
    if not categories:
        raise TurboNerfError("no category folder with softras_*.lst", root)
    folders = []
    for cat in categories:
        lst = cat / f"softras_{split}.lst"
        if lst.is_file():
            folders += [cat / name.strip() for name in lst.read_text().splitlines() if name.strip()]
    if not folders:
        raise TurboNerfError(f"no object listed in softras_{split}.lst", root)
    if max_objects is not None:
        folders = folders[:max_objects]
    scenes = [read_nmr_object(f, max_views) for f in folders]
    for s, f in zip(scenes, folders):
        s.name = f"{f.parent.name}/{f.name}"
    return MultiSceneSet("nmr", root, split, scenes, *NMR_NEAR_FAR)


# --------------------------------------------------------------------------------------------
# detection
# --------------------------------------------------------------------------------------------


def detect_multiscene(root: Path) -> str | None:
    """"srn", "nmr" or None (not a multi-scene folder)."""
    root = Path(root)
    if not root.is_dir():
        return None
    if nmr_categories(root):
        return "nmr"
    for sub in root.iterdir():
        if sub.is_dir() and (sub.name in ("train", "val", "test") or sub.name.rsplit("_", 1)[-1] in ("train", "val", "test")):
            if any((o / "rgb").is_dir() for o in sub.iterdir() if o.is_dir()):
                return "srn"
    return None


def load_multiscene(root: Path, split: str, max_objects: int | None = None, max_views: int | None = None) -> MultiSceneSet:
    """Load one split of an SRN or NMR folder (TurboNerfError when it is neither)."""
    fmt = detect_multiscene(root)
    if fmt is None:
        raise TurboNerfError("not a multi-scene set: expected SRN (<split>/<object>/rgb/) or NMR (<category>/softras_*.lst)", root)
    loader = {"srn": load_srn, "nmr": load_nmr}[fmt]
    return loader(Path(root), split, max_objects, max_views)


def from_scene(scene: Scene, split: str = "train") -> MultiSceneSet:
    """A single scene's split as a set of one object (a trained multi-scene method pointed at a
    single-scene folder, e.g. a few views of lego)."""
    data = scene.split(split)
    views = SceneViews(Path(scene.root).name, data.images, data.cameras)
    return MultiSceneSet(scene.format, Path(scene.root), split, [views], scene.near, scene.far, scene.white_background)


def load_scenes(path: Path, split: str, downscale: int = 1, max_objects: int | None = None) -> MultiSceneSet:
    """A multi-scene folder's split, or a single-scene folder's split as a set of one object."""
    if detect_multiscene(path) is not None:
        if downscale != 1:
            raise TurboNerfError("--downscale is not supported for multi-scene sets", path)
        return load_multiscene(path, split, max_objects)
    return from_scene(load_scene(path, downscale=downscale, splits=(split,)), split)


def choose_source_views(cameras: Cameras, k: int, seed: int = 0) -> list[int]:
    """A fixed choice of ``k`` source views among V cameras, nested in ``k`` (the first k of the
    same order): the first view is drawn from ``seed``, each next one is the camera farthest
    (in position) from those already chosen, so that 2 or 3 views cover the object."""
    n = len(cameras)
    if not 0 < k <= n:
        raise TurboNerfError(f"cannot choose {k} source views among {n}")
    pos = cameras.c2w[:, :3, 3].double()
    chosen = [int(torch.randint(0, n, (1,), generator=torch.Generator().manual_seed(seed)))]
    while len(chosen) < k:
        dist = torch.cdist(pos, pos[chosen]).min(dim=1).values
        dist[chosen] = -1.0
        chosen.append(int(dist.argmax()))
    return chosen
