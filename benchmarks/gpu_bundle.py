"""Build the folder ``.gpu/`` that a GPU session carries to its device machine (which holds
only the working tree, at most 64 MiB): lego at 400x400 (100 train views, the 8 test views
every 25th; 2x2 block means of the 800x800 RGBA images, intrinsics follow from the width), a
copy of a generated object set, and the LPIPS-Alex weights. ``benchmarks/gpu_pixelnerf_tree.sh``
and ``benchmarks/gpu_mip_nerf.sh`` read it. Add ``/.gpu/`` to ``.git/info/exclude``.

    python benchmarks/gpu_bundle.py --lego ../shared/data/nerf_synthetic/lego --objects /work/data/objects
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import imageio.v3 as iio
import numpy as np

from turbonerf.eval.lpips_weights import lpips_weights_dir


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lego", type=Path, required=True)
    p.add_argument("--objects", type=Path, required=True, help="from `turbonerf dataset objects`")
    p.add_argument("--out", type=Path, default=Path(".gpu"))
    args = p.parse_args()
    dst = args.out / "lego400"
    for split, keep in (("train", lambda i: True), ("test", lambda i: i % 25 == 0)):
        meta = json.loads((args.lego / f"transforms_{split}.json").read_text())
        meta["frames"] = [f for i, f in enumerate(meta["frames"]) if keep(i)]
        (dst / split).mkdir(parents=True, exist_ok=True)
        for f in meta["frames"]:
            a = iio.imread(args.lego / (f["file_path"] + ".png")).astype(np.float32)
            h, w = a.shape[0] // 2, a.shape[1] // 2
            iio.imwrite(dst / (f["file_path"] + ".png"), np.round(a.reshape(h, 2, w, 2, -1).mean((1, 3))).astype(np.uint8))
        (dst / f"transforms_{split}.json").write_text(json.dumps(meta))
    shutil.copytree(args.objects, args.out / "objects", dirs_exist_ok=True)
    (args.out / "lpips").mkdir(parents=True, exist_ok=True)
    for name in ("alexnet.safetensors", "manifest.json"):
        shutil.copy2(lpips_weights_dir() / name, args.out / "lpips" / name)


if __name__ == "__main__":
    main()
