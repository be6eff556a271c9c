"""Rows of [source views | pixelNeRF | per-scene baseline | ground truth] for BENCHMARKS.md, from
the image folders `turbonerf eval --source-views K` and `turbonerf eval-fewview` leave.

usage: python benchmarks/pixelnerf_figure.py DATA RUN/eval_3views BASELINE_DIR OUT.png OBJECT[:VIEW] ...
"""

import sys
from pathlib import Path

import imageio.v3 as iio
import numpy as np


def main(data: Path, pn: Path, base: Path, out: Path, picks: list[str]) -> None:
    rows = []
    for pick in picks:
        obj, _, view = pick.partition(":")
        folder = pn / "images" / obj
        sources = [iio.imread(p) for p in sorted(folder.glob("source_*.png"))]
        targets = sorted(p for p in folder.glob(f"{obj}_*.png"))
        target = next((p for p in targets if p.stem.endswith(view)), targets[0]) if view else targets[0]
        j = int(target.stem.rsplit("_", 1)[1])
        gt = iio.imread(data / "test" / obj / "rgb" / f"{j:06d}.png")[..., :3]
        baseline = iio.imread(base / obj / "images" / target.name)
        gap = np.full((gt.shape[0], 4, 3), 255, np.uint8)
        parts = []
        for img in sources + [iio.imread(target), baseline, gt]:
            parts += [img[..., :3], gap]
        rows.append(np.concatenate(parts[:-1], axis=1))
    width = max(r.shape[1] for r in rows)
    rows = [np.pad(r, ((0, 4), (0, width - r.shape[1]), (0, 0)), constant_values=255) for r in rows]
    iio.imwrite(out, np.concatenate(rows, axis=0))


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4]), sys.argv[5:])
