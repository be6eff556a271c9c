"""One row per view of [ground truth | teacher | student 1 | student 2 | ...] for BENCHMARKS.md,
from the images ``turbonerf eval`` leaves in ``RUN/eval/images``.

usage: python benchmarks/student_figure.py OUT.png VIEW[,VIEW...] TEACHER_RUN STUDENT_RUN ...
(the ground truth is read from the teacher's scene at its downscale)
"""

import sys
from pathlib import Path

import imageio.v3 as iio
import numpy as np

from turbonerf.app.runs import read_run_spec
from turbonerf.data.formats import load_scene


def main(out: Path, views: list[str], runs: list[Path]) -> None:
    spec = read_run_spec(runs[0])
    test = load_scene(spec.scene.data, downscale=spec.scene.downscale, splits=("test",)).split("test")
    names = [Path(p).stem for p in test.paths]
    rows = []
    for view in views:
        gt = test.images[names.index(view)].numpy()
        parts = [gt] + [iio.imread(run / "eval" / "images" / f"{view}.png")[..., :3] for run in runs]
        gap = np.full((gt.shape[0], 4, 3), 255, np.uint8)
        row = []
        for img in parts:
            row += [img, gap]
        rows.append(np.concatenate(row[:-1], axis=1))
    hgap = np.full((4, rows[0].shape[1], 3), 255, np.uint8)
    grid = []
    for r in rows:
        grid += [r, hgap]
    iio.imwrite(out, np.concatenate(grid[:-1], axis=0))
    print(f"{out}: columns = ground truth, " + ", ".join(read_run_spec(r).method for r in runs))


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2].split(","), [Path(p) for p in sys.argv[3:]])
