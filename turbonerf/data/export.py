"""Write a loaded scene as an instant-ngp / nerfstudio ``transforms.json`` capture.

Used to turn a forward-facing LLFF capture (a phone capture posed by COLMAP, e.g. fern) into
the form real captures arrive in: world-space OpenGL poses, pixel intrinsics, an ``aabb_scale``
box around unbounded content, no NDC. The frames keep their order, so the transforms reader's
hold-out (every 8th frame) picks the same test views as the source format's.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from turbonerf.data.scene import Scene
from turbonerf.errors import TurboNerfError
from turbonerf.io.files import atomic_write_text
from turbonerf.io.media import save_png


def forward_centre(scene: Scene, depth: float) -> np.ndarray:
    """[3] the point ``depth`` in front of the mean camera position along the mean viewing
    direction (for a forward-facing capture: the middle of its content)."""
    c2w = np.concatenate([scene.splits[s].cameras.c2w.numpy() for s in scene.splits])
    forward = -c2w[:, :3, 2].mean(0)
    forward /= np.linalg.norm(forward)
    return c2w[:, :3, 3].mean(0) + depth * forward


def write_transforms(scene: Scene, out: Path, aabb_scale: float, centre: np.ndarray, scale: float = 1.0) -> Path:
    """Write every split's frames (sorted by their source file) to ``out/transforms.json`` and
    ``out/images/NNNN.png``, with poses moved so that ``centre`` is the origin and scaled by
    ``scale``. Returns the json's path. Refuses an existing non-empty ``out``."""
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise TurboNerfError("refusing to write a capture into a non-empty folder", out)
    items = []
    for split in scene.splits.values():
        for i, path in enumerate(split.paths):
            items.append((str(path), split, i))
    items.sort(key=lambda item: item[0])
    frames = []
    first = items[0][1].cameras
    for n, (name, split, i) in enumerate(items):
        cams = split.cameras
        c2w = np.eye(4)
        c2w[:3, :4] = cams.c2w[i].numpy()
        c2w[:3, 3] = (c2w[:3, 3] - centre) * scale
        file = f"images/{n:04d}.png"
        save_png(out / file, split.images[i].numpy())
        frame = {"file_path": file, "transform_matrix": c2w.tolist(), "source": Path(name).name}
        if not (float(cams.fx[i]) == float(first.fx[0]) and float(cams.fy[i]) == float(first.fy[0])):
            frame.update(fl_x=float(cams.fx[i]), fl_y=float(cams.fy[i]), cx=float(cams.cx[i]), cy=float(cams.cy[i]))
        frames.append(frame)
    meta = {
        "fl_x": float(first.fx[0]), "fl_y": float(first.fy[0]), "cx": float(first.cx[0]), "cy": float(first.cy[0]),
        "w": first.width, "h": first.height, "aabb_scale": aabb_scale, "frames": frames,
    }
    path = out / "transforms.json"
    atomic_write_text(path, json.dumps(meta, indent=1))
    return path
