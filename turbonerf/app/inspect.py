"""``turbonerf inspect``: what a scene folder holds."""

from __future__ import annotations

from pathlib import Path

from turbonerf.data.formats import scene_info


def describe_scene(path: Path) -> dict:
    """Format, splits, resolution, intrinsics, distortion, bounds and background of a scene folder."""
    return scene_info(path).to_json()
