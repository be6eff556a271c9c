"""The Scene every parser returns (format detection and loading: :mod:`turbonerf.data.formats`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from turbonerf.cameras import Cameras
from turbonerf.errors import TurboNerfError


@dataclass
class Split:
    """One split of a scene.

    Attributes:
        images: [N, H, W, 3] uint8 RGB (RGBA already composited on the scene background).
        cameras: the N cameras, at the resolution of ``images``.
        paths: the N image files.
        alphas: [N, H, W] uint8 alpha of RGBA images (None when the files have none): where it
            is 0 the pixel sees only background, which carves empty space before training.
    """

    images: Tensor
    cameras: Cameras
    paths: list[Path]
    alphas: Tensor | None = None

    def __len__(self) -> int:
        return self.images.shape[0]

    @classmethod
    def from_pixels(cls, pixels, cameras: Cameras, paths: list[Path]) -> "Split":
        """A split from decoded uint8 pixels [N, H, W, 3] or [N, H, W, 4] (RGB composited + alpha)."""
        pixels = torch.as_tensor(pixels)
        alphas = pixels[..., 3].contiguous() if pixels.shape[-1] == 4 else None
        return cls(pixels[..., :3].contiguous(), cameras, list(paths), alphas)


@dataclass
class Scene:
    """A loaded scene.

    Attributes:
        format: "blender", "llff" or "transforms".
        root: the scene folder.
        splits: split name -> Split (only splits that exist and were asked for).
        near, far: sampling range along unit-direction rays (NDC scenes: 0 and 1).
        white_background: composite on white (RGBA data) rather than black.
        ndc: rays are mapped to normalized device coordinates (forward-facing scenes).
        aabb: [2, 3] box that holds the content, in sample space (NDC space for ndc scenes).
        depth_bounds: (closest, farthest) scene depth in world units (used by spiral paths).
    """

    format: str
    root: Path
    splits: dict[str, Split]
    near: float
    far: float
    white_background: bool
    ndc: bool
    aabb: Tensor
    depth_bounds: tuple[float, float] = (0.0, 0.0)

    @property
    def background(self) -> Tensor:
        """[3] background colour."""
        return torch.ones(3) if self.white_background else torch.zeros(3)

    def split(self, name: str) -> Split:
        if name not in self.splits:
            raise TurboNerfError(
                f"split '{name}' not found (available: {', '.join(sorted(self.splits)) or 'none'})", self.root
            )
        return self.splits[name]


@dataclass
class SceneInfo:
    """What ``turbonerf inspect`` reports, read without decoding every image."""

    format: str
    root: Path
    splits: dict[str, int]
    width: int
    height: int
    fx: float
    fy: float
    cx: float
    cy: float
    near: float
    far: float
    white_background: bool
    ndc: bool
    aabb: list[list[float]]
    distortion: list[float] | None = None
    extra: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return {
            "format": self.format,
            "path": str(self.root),
            "splits": self.splits,
            "width": self.width,
            "height": self.height,
            "fx": self.fx,
            "fy": self.fy,
            "cx": self.cx,
            "cy": self.cy,
            "distortion": self.distortion,
            "near": self.near,
            "far": self.far,
            "white_background": self.white_background,
            "ndc": self.ndc,
            "aabb": self.aabb,
            **self.extra,
        }


def holdout_split(n: int, every: int = 8) -> dict[str, list[int]]:
    """The NeRF convention for scenes without splits: every ``every``-th image (i % every == 0)
    is test, the rest train; with fewer than 2 images all are train."""
    if n < 2:
        return {"train": list(range(n)), "test": []}
    return {"train": [i for i in range(n) if i % every != 0], "test": [i for i in range(n) if i % every == 0]}
