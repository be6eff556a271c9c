"""The objects a multi-scene method (pixelNeRF) is evaluated or rendered on: for each held-out
object, its fixed source views and the views it is scored on.

- A multi-scene set (SRN / NMR): the objects of a split; the source views of an object are
  :func:`turbonerf.data.multiscene.choose_source_views` with the object's index as seed, and its
  targets are the views outside the first ``max(k, TARGET_EXCLUDE)`` chosen ones, so that 1, 2
  and 3 source views are scored on the same target views.
- A single scene (e.g. 3 views of lego): the sources are chosen among its train views, the
  targets are the evaluated split's views.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from turbonerf.cameras import Cameras
from turbonerf.data.formats import load_scene
from turbonerf.data.multiscene import choose_source_views, detect_multiscene, load_multiscene
from turbonerf.errors import TurboNerfError

TARGET_EXCLUDE = 3
"""targets of a multi-scene object: views outside its first max(k, 3) chosen source views"""


@dataclass
class EvalObject:
    """One object to render from its source views.

    Attributes:
        name: the object's name.
        source_indices: [S] indices of its source views (in its own view list).
        source_images: [S, H, W, 3] uint8; source_cameras: S cameras.
        target_names: [T] names of the scored views; target_images: [T, H, W, 3] uint8; target_cameras: T cameras.
    """

    name: str
    source_indices: list[int]
    source_images: Tensor
    source_cameras: Cameras
    target_names: list[str]
    target_images: Tensor
    target_cameras: Cameras


def eval_objects(data: str | Path, split: str, k: int, downscale: int = 1, limit: int | None = None) -> list[EvalObject]:
    """The objects of ``split`` with ``k`` fixed source views each (see the module docstring)."""
    if k < 1:
        raise TurboNerfError(f"--source-views must be at least 1, got {k}")
    if detect_multiscene(data) is None:
        scene = load_scene(data, downscale=downscale, splits=tuple({"train", split}))
        train, target = scene.split("train"), scene.split(split)
        if k > len(train):
            raise TurboNerfError(f"--source-views {k}: the scene has only {len(train)} train views", data)
        src = choose_source_views(train.cameras, k)
        names = [Path(p).stem for p in target.paths]
        return [EvalObject(Path(data).name, src, train.images[src], train.cameras[src], names, target.images, target.cameras)]
    scenes = load_multiscene(Path(data), split, max_objects=limit)
    objects = []
    for i, obj in enumerate(scenes.scenes):
        if k >= len(obj):
            raise TurboNerfError(f"--source-views {k}: object {obj.name} has only {len(obj)} views", data)
        order = choose_source_views(obj.cameras, min(max(k, TARGET_EXCLUDE), len(obj) - 1), seed=i)
        src = order[:k]
        rest = [j for j in range(len(obj)) if j not in order]
        objects.append(EvalObject(obj.name, src, obj.images[src], obj.cameras[src], [f"{obj.name}_{j:03d}" for j in rest],
                                  obj.images[rest], obj.cameras[torch.tensor(rest)]))
    return objects
