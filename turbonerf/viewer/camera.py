"""Cameras between viser and turbonerf.

viser poses are ``T_world_camera`` in the OpenCV convention (+z forward, +y down) given as a
quaternion ``wxyz`` and a ``position``, with a vertical field of view and the browser's aspect;
turbonerf's :class:`~turbonerf.cameras.Cameras` are OpenGL ``c2w`` (-z forward, +y up) with pixel
intrinsics. Pure functions, no viser import (the conversions are tested on their own).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from turbonerf.cameras import Cameras

GL_FROM_CV = np.diag([1.0, -1.0, -1.0])
"""flips camera y and z: OpenCV camera axes <-> OpenGL camera axes (its own inverse)"""


@dataclass(frozen=True)
class ViewPose:
    """Where a browser's camera is.

    Attributes:
        wxyz: [4] rotation of T_world_camera (OpenCV axes), unit quaternion.
        position: [3] camera centre in world coordinates.
        fov: vertical field of view in radians.
        aspect: width / height of the browser's canvas.
    """

    wxyz: tuple[float, float, float, float]
    position: tuple[float, float, float]
    fov: float
    aspect: float


def quat_to_matrix(wxyz) -> np.ndarray:
    """[4] unit quaternion (w, x, y, z) -> [3, 3] rotation matrix."""
    w, x, y, z = np.asarray(wxyz, dtype=np.float64) / np.linalg.norm(wxyz)
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
        [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
        [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
    ])


def matrix_to_quat(rot: np.ndarray) -> np.ndarray:
    """[3, 3] rotation matrix -> [4] unit quaternion (w, x, y, z) with w >= 0 (Shepperd's method)."""
    m = np.asarray(rot, dtype=np.float64)
    tr = np.trace(m)
    if tr > 0:
        s = 2.0 * math.sqrt(tr + 1.0)
        q = [0.25 * s, (m[2, 1] - m[1, 2]) / s, (m[0, 2] - m[2, 0]) / s, (m[1, 0] - m[0, 1]) / s]
    else:
        i = int(np.argmax(np.diag(m)))
        j, k = (i + 1) % 3, (i + 2) % 3
        s = 2.0 * math.sqrt(max(1.0 + m[i, i] - m[j, j] - m[k, k], 1e-12))
        q = [0.0, 0.0, 0.0, 0.0]
        q[0] = (m[k, j] - m[j, k]) / s
        q[1 + i] = 0.25 * s
        q[1 + j] = (m[j, i] + m[i, j]) / s
        q[1 + k] = (m[k, i] + m[i, k]) / s
    q = np.array(q)
    q /= np.linalg.norm(q)
    return q if q[0] >= 0 else -q


def c2w_from_pose(pose: ViewPose) -> np.ndarray:
    """[3, 4] OpenGL camera-to-world matrix of a viser pose."""
    rot = quat_to_matrix(pose.wxyz) @ GL_FROM_CV
    return np.concatenate([rot, np.asarray(pose.position, dtype=np.float64)[:, None]], axis=1)


def pose_from_cameras(cameras: Cameras, index: int) -> ViewPose:
    """The viser pose (OpenCV quaternion, position, vertical fov, aspect) of camera ``index``."""
    c2w = cameras.c2w[index].detach().cpu().double().numpy()
    fy = float(cameras.fy[index])
    fov = 2.0 * math.atan(cameras.height / (2.0 * fy))
    return ViewPose(
        wxyz=tuple(matrix_to_quat(c2w[:, :3] @ GL_FROM_CV)),
        position=tuple(c2w[:, 3]),
        fov=fov,
        aspect=cameras.width / cameras.height,
    )


def frame_size(pixels: float, aspect: float, max_res: int, min_side: int = 8) -> tuple[int, int]:
    """(height, width) with about ``pixels`` pixels at ``aspect`` (width / height), the longer
    side at most ``max_res`` and the shorter at least ``min_side``."""
    pixels = max(float(pixels), 1.0)
    h = math.sqrt(pixels / aspect)
    w = h * aspect
    shrink = min(1.0, max_res / max(h, w))
    h, w = h * shrink, w * shrink
    return max(min_side, int(round(h))), max(min_side, int(round(w)))


def full_size(aspect: float, max_res: int) -> tuple[int, int]:
    """(height, width) at ``aspect`` whose longer side is ``max_res``."""
    return frame_size(float(max_res) ** 2 * max(aspect, 1.0 / aspect), aspect, max_res)


def view_cameras(pose: ViewPose, height: int, width: int, ndc_focal: tuple[float, float] | None = None) -> Cameras:
    """One pinhole camera at ``pose`` rendering ``height`` x ``width`` pixels.

    ``ndc_focal``: for forward-facing (NDC) scenes, the training cameras' focal lengths as a
    fraction of their image size, (fx / W, fy / H): NDC space is defined by them, so the view
    keeps the training field of view whatever the browser's."""
    c2w = torch.from_numpy(c2w_from_pose(pose)).float()[None]
    if ndc_focal is None:
        fy = height / (2.0 * math.tan(pose.fov / 2.0))
        fx = fy
    else:
        fx, fy = ndc_focal[0] * width, ndc_focal[1] * height
    one = lambda v: torch.tensor([float(v)])  # noqa: E731
    return Cameras(c2w=c2w, fx=one(fx), fy=one(fy), cx=one(width / 2.0), cy=one(height / 2.0), width=width, height=height)


def scene_up(cameras: Cameras) -> np.ndarray:
    """[3] the mean 'up' axis of a set of OpenGL cameras, normalised (the orbit's up direction)."""
    up = cameras.c2w[:, :3, 1].double().mean(0).numpy()
    n = np.linalg.norm(up)
    return up / n if n > 1e-8 else np.array([0.0, 0.0, 1.0])
