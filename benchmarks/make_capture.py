"""Make a real unbounded capture in transforms.json form from the LLFF fern scene (a phone
capture posed by COLMAP): world-space poses, the content's middle at the origin, aabb_scale 16
(as instant-ngp's colmap2nerf writes for natural scenes), images at 1/8 resolution (504x378).

    python benchmarks/make_capture.py ../shared/data/nerf_llff_data/fern /tmp/fern_capture
"""

import argparse
from pathlib import Path

from turbonerf.data.export import forward_centre, write_transforms
from turbonerf.data.formats import load_scene

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("llff", type=Path)
parser.add_argument("out", type=Path)
parser.add_argument("--downscale", type=int, default=8)
parser.add_argument("--aabb-scale", type=float, default=16)
args = parser.parse_args()
scene = load_scene(args.llff, downscale=args.downscale)
near, _ = scene.depth_bounds
print(write_transforms(scene, args.out, args.aabb_scale, forward_centre(scene, 1.5 * near)))
