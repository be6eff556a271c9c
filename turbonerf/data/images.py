"""Helpers shared by the scene parsers: image I/O, area downscaling, JSON, pose checks.

Conventions:
- Images come back as uint8 RGB ``[H, W, 3]``. RGBA is composited onto the given background with
  the result of compositing *at full resolution, before* downscaling. (Compositing is linear, so
  the code averages premultiplied colour and alpha, then composites the small image: same result,
  less work.) Edges of RGBA objects therefore do not pick up a dark fringe.
- Downscaling by an integer factor ``k`` averages ``k x k`` blocks. When a side is not a multiple
  of ``k`` the last ``side % k`` rows / columns are cropped, so pixel ``(u, v)`` of the small
  image covers exactly pixels ``[k u, k u + k) x [k v, k v + k)`` of the large one and intrinsics
  scale by exactly ``1 / k`` (see :func:`downscale_cameras`).
- Every failure caused by a file raises :class:`TurboNerfError` naming that file.
"""

from __future__ import annotations

import dataclasses
import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Sequence

import imageio.v3 as iio
import numpy as np

from turbonerf.cameras import Cameras
from turbonerf.errors import TurboNerfError
from turbonerf.io.files import is_inside

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".exr", ".bmp", ".tif", ".tiff")
"""Extensions tried, in order, for a ``file_path`` given without one (and listed in LLFF folders)."""

PILLOW_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp")
"""Read with imageio's pillow plugin directly (others: imageio's plugin search, e.g. for EXR)."""


def _plugin(path: Path) -> str | None:
    """Pin the pillow plugin for common formats, so a corrupt file is not offered to every plugin."""
    return "pillow" if path.suffix.lower() in PILLOW_EXTENSIONS else None


# --------------------------------------------------------------------------------------------
# JSON and poses
# --------------------------------------------------------------------------------------------


def load_json(path: Path) -> dict:
    """Read a JSON object from ``path``.

    Raises:
        TurboNerfError: file missing, unreadable, not valid JSON, or not a JSON object.
    """
    path = Path(path)
    if not path.is_file():
        raise TurboNerfError("file not found", path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise TurboNerfError(f"cannot read file: {err}", path) from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise TurboNerfError(f"invalid JSON: {err}", path) from None
    if not isinstance(data, dict):
        raise TurboNerfError(f"invalid JSON: expected an object at the top level, got {type(data).__name__}", path)
    return data


MAX_TRANSLATION = 1e8
"""a camera farther than this from the origin is a broken pose, not a scene"""


def pose_from_json(matrix, path: Path, frame: str) -> np.ndarray:
    """Parse a ``transform_matrix`` (4x4 or 3x4 nested list) into a finite float64 ``[3, 4]``.

    Args:
        matrix: the JSON value.
        path: the JSON file (for error messages).
        frame: how to name the frame in error messages (e.g. its ``file_path``).
    """
    try:
        m = np.asarray(matrix, dtype=np.float64)
    except (TypeError, ValueError):
        raise TurboNerfError(f"frame '{frame}': transform_matrix is not a numeric matrix", path) from None
    if m.shape not in ((4, 4), (3, 4)):
        raise TurboNerfError(f"frame '{frame}': transform_matrix must be 4x4 or 3x4, got shape {m.shape}", path)
    check_poses_finite(m[None, :3, :4], path, [frame])
    det = float(np.linalg.det(m[:3, :3]))
    if abs(det) < 1e-6:
        raise TurboNerfError(f"frame '{frame}': transform_matrix has a singular rotation (determinant {det:.3g})", path)
    if float(np.abs(m[:3, 3]).max()) > MAX_TRANSLATION:
        raise TurboNerfError(f"frame '{frame}': camera position {m[:3, 3].tolist()} is implausibly far (> {MAX_TRANSLATION:g})", path)
    return m[:3, :4]


def check_poses_finite(poses: np.ndarray, path: Path, names: Sequence[str] | None = None) -> None:
    """Raise TurboNerfError naming ``path`` and the first frame whose pose holds NaN or inf.

    Args:
        poses: [N, ...] one pose per frame.
        names: [N] frame names for the message (default: the frame index).
    """
    bad = ~np.isfinite(poses.reshape(poses.shape[0], -1)).all(axis=1)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        which = f"frame '{names[i]}'" if names is not None else f"frame {i}"
        raise TurboNerfError(f"pose of {which} contains NaN or inf", path)


# --------------------------------------------------------------------------------------------
# Image files
# --------------------------------------------------------------------------------------------


def resolve_image_path(base: Path, file_path: str) -> Path:
    """The image file a JSON ``file_path`` refers to, relative to ``base``.

    ``file_path`` may carry an extension or not (NeRF-synthetic writes ``./train/r_0`` for
    ``./train/r_0.png``). If nothing matches, returns the most likely path (for the error message
    the reader raises).
    """
    candidate = Path(base) / file_path
    if not is_inside(candidate, Path(base)):
        raise TurboNerfError(f"file_path '{file_path}' points outside the scene folder (refused)", base)
    if candidate.is_file():
        return candidate
    for ext in IMAGE_EXTENSIONS:
        with_ext = candidate.with_name(candidate.name + ext)
        if with_ext.is_file():
            return with_ext
    return candidate if candidate.suffix.lower() in IMAGE_EXTENSIONS else candidate.with_name(candidate.name + ".png")


def image_header(path: Path) -> tuple[int, int, bool]:
    """``(width, height, has_alpha)`` of an image, reading only its header."""
    path = Path(path)
    if not path.is_file():
        raise TurboNerfError("image not found", path)
    try:
        props = iio.improps(path, plugin=_plugin(path))
    except Exception as err:  # imageio / pillow raise many types for a corrupt header
        raise TurboNerfError(f"cannot read image header: {err}", path) from None
    shape = props.shape
    if len(shape) == 2:
        return int(shape[1]), int(shape[0]), False
    if len(shape) == 3 and shape[2] in (1, 2, 3, 4):
        return int(shape[1]), int(shape[0]), shape[2] in (2, 4)
    raise TurboNerfError(f"unsupported image shape {tuple(shape)}", path)


def read_image(path: Path) -> np.ndarray:
    """Decode an image file to float32 ``[H, W, 3]`` (RGB) or ``[H, W, 4]`` (RGBA) in [0, 1].

    Grayscale becomes RGB; grayscale + alpha becomes RGBA; 16-bit and float images are normalised.
    """
    path = Path(path)
    if not path.is_file():
        raise TurboNerfError("image not found", path)
    try:
        img = iio.imread(path, plugin=_plugin(path))
    except Exception as err:  # imageio / pillow raise many types for corrupt data
        raise TurboNerfError(f"cannot decode image: {err}", path) from None
    if img.ndim == 4:  # animated file: keep the first frame
        img = img[0]
    if img.ndim == 2:
        img = img[:, :, None]
    if img.ndim != 3 or img.shape[2] not in (1, 2, 3, 4):
        raise TurboNerfError(f"unsupported image shape {tuple(img.shape)}", path)
    if np.issubdtype(img.dtype, np.integer):
        scale = 1.0 / float(np.iinfo(img.dtype).max)
        img = img.astype(np.float32)
        img *= scale
    else:
        img = np.clip(img.astype(np.float32), 0.0, 1.0)
    channels = img.shape[2]
    if channels == 1:
        img = np.repeat(img, 3, axis=2)
    elif channels == 2:
        img = np.concatenate([np.repeat(img[:, :, :1], 3, axis=2), img[:, :, 1:]], axis=2)
    return img


def composite(img: np.ndarray, background: Sequence[float]) -> np.ndarray:
    """Composite float ``[H, W, 4]`` RGBA onto a constant ``[3]`` background; RGB passes through.

    Returns:
        float32 [H, W, 3].
    """
    if img.shape[2] == 3:
        return img
    alpha = img[:, :, 3:4]
    return img[:, :, :3] * alpha + np.asarray(background, dtype=np.float32) * (1.0 - alpha)


def area_downscale(img: np.ndarray, factor: int) -> np.ndarray:
    """Average ``factor x factor`` blocks of a float ``[H, W, C]`` image.

    Returns:
        float32 [H // factor, W // factor, C] (trailing rows / columns that do not fill a block are cropped).
    """
    if factor == 1:
        return img
    h, w, c = img.shape[0] // factor, img.shape[1] // factor, img.shape[2]
    if h == 0 or w == 0:
        raise ValueError(f"image of size {img.shape[1]}x{img.shape[0]} is smaller than the downscale factor {factor}")
    # two contiguous reductions are ~2x faster than one mean over axes (1, 3)
    rows = img[: h * factor, : w * factor].reshape(h, factor, w * factor, c).sum(axis=1, dtype=np.float32)
    out = rows.reshape(h, w, factor, c).sum(axis=2)
    out *= 1.0 / (factor * factor)
    return out


def to_uint8(img: np.ndarray) -> np.ndarray:
    """Float [..] in [0, 1] -> rounded uint8."""
    return np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8)


def load_image(
    path: Path,
    background: Sequence[float] = (1.0, 1.0, 1.0),
    downscale: int = 1,
    expected_size: tuple[int, int] | None = None,
    keep_alpha: bool = False,
) -> np.ndarray:
    """Read, composite and downscale one image.

    Args:
        path: the image file.
        background: [3] colour in [0, 1] that RGBA images are composited on.
        downscale: integer block-averaging factor.
        expected_size: (width, height) the file must have at full resolution, or None.
        keep_alpha: also return the (downscaled) alpha as a fourth channel (255 for RGB files).
    Returns:
        uint8 [H // downscale, W // downscale, 3] (4 with ``keep_alpha``).
    """
    img = read_image(path)
    height, width = img.shape[:2]
    if expected_size is not None and (width, height) != tuple(expected_size):
        raise TurboNerfError(
            f"image is {width}x{height} but {expected_size[0]}x{expected_size[1]} was expected "
            "(from the other images / the intrinsics)",
            path,
        )
    if img.shape[2] == 4:
        img[:, :, :3] *= img[:, :, 3:4]  # premultiply, then average, then composite (see module doc)
    try:
        small = area_downscale(img, downscale)
    except ValueError as err:
        raise TurboNerfError(str(err), path) from None
    alpha = small[:, :, 3:4] if small.shape[2] == 4 else np.ones_like(small[:, :, :1])
    if small.shape[2] == 4:
        small = small[:, :, :3] + np.asarray(background, dtype=np.float32) * (1.0 - alpha)
    if keep_alpha:
        small = np.concatenate([small, alpha], axis=2)
    return to_uint8(small)


def load_images(
    paths: Sequence[Path],
    background: Sequence[float],
    downscale: int = 1,
    expected_size: tuple[int, int] | None = None,
    workers: int | None = None,
    keep_alpha: bool = False,
) -> np.ndarray:
    """Decode many same-size images in parallel (thread pool) into one array.

    Args:
        paths: N image files.
        background: [3] compositing colour for RGBA files.
        downscale: integer block-averaging factor.
        expected_size: (width, height) every file must have; default: the first file's header.
        workers: threads (default: ``min(8, os.cpu_count())``).
        keep_alpha: a fourth channel holds each image's alpha (255 for RGB files).
    Returns:
        uint8 [N, H // downscale, W // downscale, 3 or 4].
    """
    if len(paths) == 0:
        raise ValueError("load_images needs at least one path")
    if expected_size is None:
        expected_size = image_header(paths[0])[:2]
    width, height = expected_size
    if width // downscale == 0 or height // downscale == 0:
        raise TurboNerfError(
            f"image of size {width}x{height} is smaller than the downscale factor {downscale}", paths[0]
        )
    out = np.empty((len(paths), height // downscale, width // downscale, 4 if keep_alpha else 3), dtype=np.uint8)

    def work(i: int) -> None:
        out[i] = load_image(paths[i], background, downscale, expected_size, keep_alpha)

    workers = workers or min(8, os.cpu_count() or 1)
    if workers <= 1 or len(paths) == 1:
        for i in range(len(paths)):
            work(i)
    else:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            for _ in pool.map(work, range(len(paths))):  # re-raises the first worker error
                pass
    return out


def downscale_cameras(cameras: Cameras, factor: int) -> Cameras:
    """Cameras for images block-averaged by an integer ``factor`` (cropped to ``W // factor``)."""
    if factor == 1:
        return cameras
    return dataclasses.replace(
        cameras.scaled(1.0 / factor), width=cameras.width // factor, height=cameras.height // factor
    )
