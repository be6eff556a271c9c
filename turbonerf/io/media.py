"""Writing images, depth maps and videos to disk, atomically.

Every writer goes through a temporary file in the destination folder and ``os.replace``, so an
interrupted run never leaves a half-written file under the final name.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from turbonerf.errors import TurboNerfError


def to_numpy(img) -> np.ndarray:
    """A torch tensor or array-like -> numpy array (detached, on the CPU)."""
    if hasattr(img, "detach"):
        img = img.detach().cpu().numpy()
    return np.asarray(img)


def to_uint8(img) -> np.ndarray:
    """Image [H, W, C] or [H, W] -> uint8 of the same shape.

    Floats are taken to lie in [0, 1] (clamped, NaN -> 0) and rounded; uint8 passes through.
    """
    arr = to_numpy(img)
    if arr.dtype == np.uint8:
        return arr
    arr = np.nan_to_num(arr.astype(np.float32), nan=0.0, posinf=1.0, neginf=0.0)
    return (np.clip(arr, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path`` (same suffix); move it onto ``path`` on success.

    On an exception the temporary file is removed and ``path`` is left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}")
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def save_png(path: str | Path, img) -> Path:
    """Write an image as an 8-bit PNG.

    Args:
        path: destination file (parents are created).
        img: [H, W, 3], [H, W, 4] or [H, W] float in [0, 1] (clamped) or uint8; tensor or array.
    Returns:
        the path written.
    """
    import imageio.v3 as iio

    arr = to_uint8(img)
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim not in (2, 3):
        raise ValueError(f"save_png: expected [H, W] or [H, W, C], got shape {arr.shape}")
    path = Path(path)
    try:
        with atomic_path(path) as tmp:
            iio.imwrite(tmp, arr, extension=".png")
    except OSError as e:
        raise TurboNerfError(f"cannot write image ({e.strerror or e})", path) from None
    return path


def load_png(path: str | Path) -> np.ndarray:
    """An 8-bit image written by :func:`save_png`: [H, W] or [H, W, C] uint8."""
    import imageio.v3 as iio

    try:
        return np.asarray(iio.imread(Path(path)))
    except OSError as e:
        raise TurboNerfError(f"cannot read image ({e.strerror or e})", path) from None


def depth_to_png(
    depth,
    opacity=None,
    cmap: str = "turbo",
    percentiles: tuple[float, float] = (1.0, 99.0),
    min_opacity: float = 0.05,
) -> np.ndarray:
    """Colourise a depth map for viewing.

    Depth is normalised between robust percentiles of the valid pixels (finite depth, opacity >=
    0.5 when there are such pixels), mapped through a matplotlib colormap, and faded to black by the
    opacity; pixels with opacity below ``min_opacity`` (or non-finite depth) are black.

    Args:
        depth: [H, W] depth (tensor or array).
        opacity: [H, W] accumulated opacity in [0, 1], or None for fully opaque.
        cmap: matplotlib colormap name.
        percentiles: (low, high) percentiles mapped to the ends of the colormap.
        min_opacity: pixels below this opacity are black.
    Returns:
        uint8 [H, W, 3] image (pass it to :func:`save_png` or into a video).
    """
    import matplotlib

    d = to_numpy(depth).astype(np.float64)
    if d.ndim == 3 and d.shape[-1] == 1:
        d = d[..., 0]
    if d.ndim != 2:
        raise ValueError(f"depth_to_png: expected [H, W] depth, got shape {d.shape}")
    if opacity is None:
        a = np.ones_like(d)
    else:
        a = np.clip(np.nan_to_num(to_numpy(opacity).astype(np.float64).reshape(d.shape)), 0.0, 1.0)
    valid = np.isfinite(d) & (a >= min_opacity)
    ref = valid & (a >= 0.5)
    if not ref.any():
        ref = valid
    if ref.any():
        lo, hi = np.percentile(d[ref], percentiles)
    else:
        lo, hi = 0.0, 1.0
    norm = np.clip((np.nan_to_num(d) - lo) / max(hi - lo, 1e-12), 0.0, 1.0)
    lut = matplotlib.colormaps[cmap](np.linspace(0.0, 1.0, 256))[:, :3]  # [256, 3]
    rgb = lut[np.round(norm * 255).astype(np.int64)] * a[..., None]
    rgb[~valid] = 0.0
    return to_uint8(rgb)


def _pad_even(frame: np.ndarray) -> np.ndarray:
    """Pad a [H, W, 3] frame by edge replication to even H and W (what yuv420p needs)."""
    h, w = frame.shape[:2]
    return np.pad(frame, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")


def _frames_rgb8(frames: Sequence) -> list[np.ndarray]:
    """Validate frames: a non-empty list of same-size [H, W, 3] images -> uint8 arrays."""
    out = [to_uint8(f) for f in frames]
    if not out:
        raise ValueError("write_video: no frames")
    out = [np.repeat(f[..., None], 3, -1) if f.ndim == 2 else f[..., :3] for f in out]
    if any(f.shape != out[0].shape for f in out) or out[0].ndim != 3:
        raise ValueError(f"write_video: frames must all be [H, W, 3] of one size, first is {out[0].shape}")
    return out


def _write_mp4(path: Path, frames: list[np.ndarray], fps: float) -> None:
    """H.264 MP4 via the ffmpeg binary of imageio-ffmpeg; raises on any failure."""
    import imageio_ffmpeg

    padded = [np.ascontiguousarray(_pad_even(f)) for f in frames]
    h, w = padded[0].shape[:2]
    writer = imageio_ffmpeg.write_frames(
        str(path),
        (w, h),
        fps=fps,
        codec="libx264",
        pix_fmt_in="rgb24",
        pix_fmt_out="yuv420p",
        macro_block_size=1,
        quality=8,
        ffmpeg_log_level="error",
        output_params=["-movflags", "+faststart"],
    )
    writer.send(None)  # start the ffmpeg process
    try:
        for f in padded:
            writer.send(f)
    finally:
        writer.close()
    if not path.is_file() or path.stat().st_size == 0:
        raise RuntimeError("ffmpeg wrote no output")


def _write_gif(path: Path, frames: list[np.ndarray], fps: float) -> None:
    """Animated GIF via imageio (Pillow), looping forever."""
    import imageio.v3 as iio

    iio.imwrite(path, np.stack(frames), extension=".gif", duration=1000.0 / fps, loop=0)


def write_video(path: str | Path, frames: Sequence, fps: float = 30) -> Path:
    """Write frames as an H.264 MP4, or as a GIF if ffmpeg fails.

    Args:
        path: destination; its suffix is replaced by ``.gif`` in the fallback case.
        frames: list of [H, W, 3] uint8 (or float in [0, 1]) frames of one size; odd sizes are
            padded to even for H.264.
        fps: frames per second.
    Returns:
        the path actually written (``.mp4`` or ``.gif``).
    """
    rgb = _frames_rgb8(frames)
    path = Path(path)
    try:
        with atomic_path(path) as tmp:
            _write_mp4(tmp, rgb, fps)
        return path
    except Exception:
        gif = path.with_suffix(".gif")
        with atomic_path(gif) as tmp:
            _write_gif(tmp, rgb, fps)
        return gif
