"""Forward-facing LLFF scenes (``poses_bounds.npy`` + ``images[_K]/``), as the NeRF paper loads them.

``poses_bounds.npy`` is ``[N, 17]``: per image a ``[3, 5]`` matrix (a 3x4 camera-to-world whose
rotation columns are LLFF's [down, right, back], plus a column ``[H, W, focal]`` for the
full-resolution images) and two depth bounds (near, far).

Loading follows the reference code (``load_llff_data`` with ``bd_factor=0.75``, no spherify):

1. reorder rotation columns to OpenGL [right, up, back]: ``new = [p1, -p0, p2]``;
2. scale translations and bounds by ``sc = 1 / (0.75 * min(bounds))`` so the nearest content
   lies a little beyond depth 1 (the NDC near plane);
3. recenter: left-multiply every pose by the inverse of the average pose.

Images come from ``images_K`` for downscale K (``images`` for K = 1). If that folder is missing,
the finest folder ``images_F`` with F dividing K is block-averaged by K / F. Intrinsics are the
focal from the file scaled to the resolution actually loaded, principal point at the centre.
Every 8th image (i % 8 == 0) is the test split, the rest train. Rays are meant to be mapped to
NDC: near 0, far 1, aabb [-1, 1]^3 in NDC space; ``depth_bounds`` are the scaled bounds.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch

from turbonerf.cameras import Cameras
from turbonerf.data.images import (
    IMAGE_EXTENSIONS,
    check_poses_finite,
    downscale_cameras,
    image_header,
    load_images,
)
from turbonerf.data.scene import Scene, SceneInfo, Split, holdout_split
from turbonerf.errors import TurboNerfError

BD_FACTOR = 0.75
ASPECT_TOLERANCE = 0.01


def read_poses_bounds(root: Path) -> tuple[np.ndarray, np.ndarray]:
    """Read ``poses_bounds.npy``.

    Returns:
        poses: [N, 3, 5] float64 in LLFF's [down, right, back] convention (column 4: H, W, focal).
        bounds: [N, 2] float64 near / far depths.
    """
    path = root / "poses_bounds.npy"
    if path.is_file():
        with open(path, "rb") as f:
            if f.read(6) != b"\x93NUMPY":
                raise TurboNerfError("not a .npy file (no NumPy header)", path)
    try:
        arr = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise TurboNerfError("file not found", path) from None
    except Exception as err:  # numpy raises ValueError / OSError / pickle errors for bad files
        raise TurboNerfError(f"cannot read .npy file: {err}", path) from None
    if arr.ndim != 2 or arr.shape[1] != 17 or arr.shape[0] == 0:
        raise TurboNerfError(f"expected an [N, 17] array (N >= 1), got shape {tuple(arr.shape)}", path)
    arr = arr.astype(np.float64)
    check_poses_finite(arr, path)
    poses, bounds = arr[:, :15].reshape(-1, 3, 5), arr[:, 15:]
    if (bounds <= 0).any():
        i = int(np.flatnonzero((bounds <= 0).any(axis=1))[0])
        raise TurboNerfError(f"depth bounds of frame {i} must be positive, got {bounds[i].tolist()}", path)
    if (poses[:, :, 4] <= 0).any():
        raise TurboNerfError("image height, width and focal (column 4 of each pose) must be positive", path)
    return poses, bounds


def llff_to_opengl(poses: np.ndarray) -> np.ndarray:
    """[N, 3, 5] LLFF [down, right, back] rotation columns -> OpenGL [right, up, back]."""
    return np.concatenate([poses[:, :, 1:2], -poses[:, :, 0:1], poses[:, :, 2:]], axis=2)


def _normalize(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


def view_matrix(z: np.ndarray, up: np.ndarray, position: np.ndarray) -> np.ndarray:
    """[3, 4] camera-to-world with back axis ``z``, roughly ``up``, centred at ``position`` ([3] each)."""
    z = _normalize(z)
    x = _normalize(np.cross(up, z))
    y = _normalize(np.cross(z, x))
    return np.stack([x, y, z, position], axis=1)


def average_pose(c2w: np.ndarray) -> np.ndarray:
    """[N, 3, 4] -> [3, 4]: mean centre, summed back axis, summed up axis (NeRF's ``poses_avg``)."""
    return view_matrix(c2w[:, :, 2].sum(0), c2w[:, :, 1].sum(0), c2w[:, :, 3].mean(0))


def recenter_poses(c2w: np.ndarray) -> np.ndarray:
    """[N, 3, 4] -> [N, 3, 4] with the average pose moved to the identity."""
    bottom = np.array([[0.0, 0.0, 0.0, 1.0]])
    avg = np.concatenate([average_pose(c2w), bottom], axis=0)
    full = np.concatenate([c2w, np.broadcast_to(bottom, (len(c2w), 1, 4))], axis=1)
    return (np.linalg.inv(avg) @ full)[:, :3, :4]


def normalize_poses(poses: np.ndarray, bounds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Apply the reference pipeline (reorder, bd_factor scaling, recentering).

    Args:
        poses: [N, 3, 5] LLFF poses; bounds: [N, 2].
    Returns:
        c2w: [N, 3, 4] OpenGL camera-to-world; bounds: [N, 2] scaled.
    """
    c2w = llff_to_opengl(poses)[:, :, :4].copy()
    scale = 1.0 / (bounds.min() * BD_FACTOR)
    c2w[:, :, 3] *= scale
    return recenter_poses(c2w), bounds * scale


def image_folders(root: Path) -> dict[int, Path]:
    """Downscale factor -> folder, for ``images`` (1) and ``images_K`` (K) folders under ``root``."""
    folders = {}
    for child in root.iterdir():
        if not child.is_dir():
            continue
        if child.name == "images":
            folders[1] = child
        elif m := re.fullmatch(r"images_(\d+)", child.name):
            if int(m.group(1)) >= 1:
                folders[int(m.group(1))] = child
    return dict(sorted(folders.items()))


def choose_folder(root: Path, downscale: int) -> tuple[Path, int]:
    """The folder to read for ``downscale`` and the extra block-averaging factor to apply.

    Prefers ``images_<downscale>``; otherwise the finest folder whose factor divides ``downscale``.
    """
    folders = image_folders(root)
    usable = [f for f in folders if downscale % f == 0]
    if not usable:
        found = ", ".join(p.name for p in folders.values()) or "none"
        wanted = "images" if downscale == 1 else f"images_{downscale}"
        raise TurboNerfError(
            f"no image folder for downscale {downscale}: expected '{wanted}' (or a finer images_F "
            f"with F dividing {downscale}); found: {found}",
            root,
        )
    best = max(usable)
    return folders[best], downscale // best


def list_images(folder: Path) -> list[Path]:
    """Image files in ``folder``, sorted by name."""
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def ndc_aabb() -> torch.Tensor:
    """[2, 3] the NDC cube."""
    return torch.tensor([[-1.0, -1.0, -1.0], [1.0, 1.0, 1.0]])


def load(root: Path, downscale: int = 1, splits: tuple[str, ...] | None = None) -> Scene:
    """Load an LLFF scene.

    Args:
        root: folder holding ``poses_bounds.npy`` and ``images[_K]/``.
        downscale: integer factor (selects ``images_K``, or resizes from a finer folder).
        splits: subset of ("train", "test") to load (None: both).
    """
    root = Path(root)
    poses, bounds = read_poses_bounds(root)
    folder, extra = choose_folder(root, downscale)
    paths = list_images(folder)
    if len(paths) != len(poses):
        raise TurboNerfError(
            f"{len(paths)} images in '{folder.name}' but {len(poses)} poses in poses_bounds.npy", folder
        )
    full_h, full_w = float(poses[0, 0, 4]), float(poses[0, 1, 4])
    width, height, _ = image_header(paths[0])
    if abs((width / height) / (full_w / full_h) - 1.0) > ASPECT_TOLERANCE:
        raise TurboNerfError(
            f"image is {width}x{height} but poses_bounds.npy describes {full_w:g}x{full_h:g} images "
            "(aspect ratios differ)",
            paths[0],
        )
    c2w, bounds = normalize_poses(poses, bounds)
    n = len(poses)
    # intrinsics at the folder's resolution, then exact 1/extra scaling for the block averaging
    sx, sy = width / full_w, height / full_h
    focals = poses[:, 2, 4]
    folder_cams = Cameras(
        c2w=torch.from_numpy(c2w).float(),
        fx=torch.from_numpy(focals * sx).float(),
        fy=torch.from_numpy(focals * sy).float(),
        cx=torch.full((n,), width / 2),
        cy=torch.full((n,), height / 2),
        width=width,
        height=height,
    )
    cameras = downscale_cameras(folder_cams, extra)
    loaded = {}
    for name, idx in holdout_split(n).items():
        if (splits is not None and name not in splits) or not idx:
            continue
        split_paths = [paths[i] for i in idx]
        images = load_images(split_paths, background=(0.0, 0.0, 0.0), downscale=extra, expected_size=(width, height))
        loaded[name] = Split(images=torch.from_numpy(images), cameras=cameras[idx], paths=split_paths)
    return Scene(
        format="llff",
        root=root,
        splits=loaded,
        near=0.0,
        far=1.0,
        white_background=False,
        ndc=True,
        aabb=ndc_aabb(),
        depth_bounds=(float(bounds.min()), float(bounds.max())),
    )


def info(root: Path) -> SceneInfo:
    """Summarise an LLFF scene from ``poses_bounds.npy`` and the folder listing (no image decoded)."""
    root = Path(root)
    poses, bounds = read_poses_bounds(root)
    _, bounds = normalize_poses(poses, bounds)
    full_h, full_w, focal = (float(v) for v in poses[0, :, 4])
    folders = image_folders(root)
    return SceneInfo(
        format="llff",
        root=root,
        splits={k: len(v) for k, v in holdout_split(len(poses)).items()},
        width=int(round(full_w)),
        height=int(round(full_h)),
        fx=focal,
        fy=focal,
        cx=full_w / 2,
        cy=full_h / 2,
        near=0.0,
        far=1.0,
        white_background=False,
        ndc=True,
        aabb=ndc_aabb().tolist(),
        distortion=None,
        extra={
            "image_folders": [p.name for p in folders.values()],
            "depth_bounds": [float(bounds.min()), float(bounds.max())],
        },
    )
