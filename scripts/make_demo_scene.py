"""Build the shipped demo scene ``turbonerf/assets/lego_100/`` from the NeRF-synthetic lego scene.

Output: a Blender-format scene with 100x100 RGBA PNGs, area-downscaled from 800x800 with alpha
kept (colour is averaged premultiplied, then un-premultiplied, so compositing the small image on
any background equals downscaling the composited large one), all 100 training views and the
first 10 test views, ``camera_angle_x`` unchanged, file paths ``./train/r_i`` / ``./test/r_i``.

Usage (from the repository root)::

    python scripts/make_demo_scene.py [--src ../shared/data/nerf_synthetic/lego] [--dst turbonerf/assets/lego_100]
"""

from __future__ import annotations

import argparse
import json
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import imageio.v3 as iio
import numpy as np

from turbonerf.data.images import area_downscale, load_json, read_image, resolve_image_path, to_uint8

SIZE = 100
N_TEST = 10


def downscale_rgba(src: Path, size: int) -> np.ndarray:
    """Read an RGBA image and block-average it to ``size x size``.

    Returns:
        uint8 [size, size, 4] straight (not premultiplied) RGBA.
    """
    img = read_image(src)
    if img.shape[2] != 4:
        raise SystemExit(f"{src}: expected an RGBA image")
    factor = img.shape[1] // size
    if img.shape[0] != img.shape[1] or img.shape[1] != factor * size:
        raise SystemExit(f"{src}: expected a square image whose side is a multiple of {size}, got {img.shape[:2]}")
    img[:, :, :3] *= img[:, :, 3:4]
    small = area_downscale(img, factor)
    alpha = small[:, :, 3:4]
    small[:, :, :3] = np.where(alpha > 0, small[:, :, :3] / np.maximum(alpha, 1e-8), 0.0)
    return to_uint8(small)


def convert_split(src_root: Path, dst_root: Path, split: str, limit: int | None) -> int:
    """Write ``dst_root/transforms_<split>.json`` and its images; returns the number of frames."""
    data = load_json(src_root / f"transforms_{split}.json")
    frames = data["frames"][:limit] if limit else data["frames"]
    (dst_root / split).mkdir(parents=True, exist_ok=True)
    jobs, out_frames = [], []
    for i, frame in enumerate(frames):
        src = resolve_image_path(src_root, frame["file_path"])
        name = f"./{split}/r_{i}"
        jobs.append((src, dst_root / f"{name}.png"))
        out_frames.append({"file_path": name, "transform_matrix": frame["transform_matrix"]})

    def work(job: tuple[Path, Path]) -> None:
        iio.imwrite(job[1], downscale_rgba(job[0], SIZE), optimize=True)

    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(work, jobs))
    out = {"camera_angle_x": data["camera_angle_x"], "frames": out_frames}
    (dst_root / f"transforms_{split}.json").write_text(json.dumps(out, indent=1))
    return len(out_frames)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--src", type=Path, default=Path("../shared/data/nerf_synthetic/lego"))
    parser.add_argument("--dst", type=Path, default=Path("turbonerf/assets/lego_100"))
    args = parser.parse_args()
    if args.dst.exists():
        shutil.rmtree(args.dst)
    args.dst.mkdir(parents=True)
    n_train = convert_split(args.src, args.dst, "train", None)
    n_test = convert_split(args.src, args.dst, "test", N_TEST)
    print(f"wrote {args.dst}: {n_train} train + {n_test} test views at {SIZE}x{SIZE}")


if __name__ == "__main__":
    main()
