"""Format detection and loading of a scene folder of any supported format.

Formats (auto-detected from the folder):
- ``blender``: NeRF-synthetic, ``transforms_{train,val,test}.json`` (splits present on disk only).
- ``llff``: forward-facing, ``poses_bounds.npy`` + ``images_N/`` folders, NDC rays.
- ``transforms``: instant-ngp / nerfstudio, a single ``transforms.json``.
"""

from __future__ import annotations

from pathlib import Path

from turbonerf.data import blender, llff, transforms
from turbonerf.data.scene import Scene, SceneInfo
from turbonerf.errors import TurboNerfError


def detect_format(path: str | Path) -> str:
    """Return "blender", "llff" or "transforms" for a scene folder, or raise TurboNerfError."""
    root = Path(path)
    if not root.exists():
        raise TurboNerfError("scene folder does not exist", root)
    if not root.is_dir():
        raise TurboNerfError("not a folder (expected a scene folder)", root)
    if any((root / f"transforms_{s}.json").is_file() for s in ("train", "val", "test")):
        return "blender"
    if (root / "poses_bounds.npy").is_file():
        return "llff"
    if (root / "transforms.json").is_file():
        return "transforms"
    raise TurboNerfError(
        "no scene found: expected transforms_{train,test}.json (Blender), poses_bounds.npy (LLFF) "
        "or transforms.json (instant-ngp / nerfstudio)",
        root,
    )


def load_scene(path: str | Path, downscale: int = 1, splits: tuple[str, ...] | None = None) -> Scene:
    """Load a scene folder of any supported format.

    Args:
        path: the scene folder.
        downscale: integer factor by which images (and intrinsics) are shrunk.
        splits: which splits to load (None: all that exist).
    """
    fmt = detect_format(path)
    if downscale < 1:
        raise TurboNerfError(f"--downscale must be >= 1, got {downscale}")
    loader = {"blender": blender.load, "llff": llff.load, "transforms": transforms.load}[fmt]
    return loader(Path(path), downscale=downscale, splits=splits)


def scene_info(path: str | Path) -> SceneInfo:
    """Summarise a scene folder (format, split sizes, resolution, intrinsics, bounds)."""
    fmt = detect_format(path)
    return {"blender": blender.info, "llff": llff.info, "transforms": transforms.info}[fmt](Path(path))
