"""``turbonerf metrics A B``: score renders made by any tool (two images, or two folders of images
matched by file name), and ``turbonerf setup-lpips``: install the LPIPS weights offline."""

from __future__ import annotations

from pathlib import Path

import torch

from turbonerf.data.images import read_image
from turbonerf.errors import TurboNerfError
from turbonerf.eval.lpips import LpipsScorer
from turbonerf.eval.lpips_weights import install_lpips_weights
from turbonerf.eval.scores import image_scores, mean_scores

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".exr", ".bmp", ".tif", ".tiff", ".webp")


def _rgb(path: Path) -> torch.Tensor:
    """[H, W, 3] float in [0, 1]; an alpha channel is composited on white (as Blender scenes are)."""
    img = torch.from_numpy(read_image(path))
    if img.shape[2] == 4:
        img = img[..., :3] * img[..., 3:] + (1.0 - img[..., 3:])
    return img


def image_pairs(a: Path, b: Path) -> list[tuple[str, Path, Path]]:
    """(name, a-file, b-file) pairs: the two files, or the images of folder ``a`` with the same
    file name in folder ``b`` (an image missing from ``b`` is an error naming it)."""
    a, b = Path(a), Path(b)
    for p in (a, b):
        if not p.exists():
            raise TurboNerfError("not found", p)
    if a.is_file() and b.is_file():
        return [(a.name, a, b)]
    if not (a.is_dir() and b.is_dir()):
        raise TurboNerfError("compare two image files or two folders, not a file with a folder", b if a.is_dir() else a)
    names = sorted(p.name for p in a.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not names:
        raise TurboNerfError("no images in this folder", a)
    missing = [n for n in names if not (b / n).is_file()]
    if missing:
        raise TurboNerfError(f"{len(missing)} image(s) of {a} missing here, e.g. {missing[0]}", b)
    return [(n, a / n, b / n) for n in names]


def compare_images(a: Path, b: Path, vgg: bool = True) -> dict:
    """{"per_image": [{name, psnr, ssim, lpips_alex, lpips_vgg, lpips}], "mean": {...}, "n_images",
    "lpips_reason"} for the pairs of :func:`image_pairs` (``b`` is the reference)."""
    lpips = LpipsScorer()
    rows = []
    for name, pa, pb in image_pairs(a, b):
        x, y = _rgb(pa), _rgb(pb)
        if x.shape != y.shape:
            raise TurboNerfError(f"size {x.shape[1]}x{x.shape[0]} differs from {pb.name}'s {y.shape[1]}x{y.shape[0]}", pa)
        rows.append({"name": name, **image_scores(x, y, lpips, vgg)})
    return {"n_images": len(rows), "mean": mean_scores(rows), "lpips_reason": lpips.reason, "per_image": rows}


def setup_lpips(target: Path | None = None, force: bool = False) -> Path:
    """Download (pip, hash-pinned), check and convert the LPIPS weights; returns their folder."""
    return install_lpips_weights(target, force=force)
