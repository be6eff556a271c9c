"""Pinhole cameras (OpenGL / Blender convention), OpenCV distortion, ray generation and NDC.

Convention: camera-to-world matrices ``c2w`` map camera coordinates in which the camera looks
down -z, x points right and y points up (OpenGL / Blender / instant-ngp / nerfstudio).
Pixel (u, v) has its centre at (u + 0.5, v + 0.5); v grows downwards.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class Cameras:
    """A set of N cameras sharing one image size.

    Attributes:
        c2w: [N, 3, 4] camera-to-world matrices (OpenGL convention).
        fx, fy, cx, cy: [N] intrinsics in pixels.
        width, height: image size in pixels.
        distortion: [N, 4] OpenCV (k1, k2, p1, p2), or None for an ideal pinhole.
    """

    c2w: Tensor
    fx: Tensor
    fy: Tensor
    cx: Tensor
    cy: Tensor
    width: int
    height: int
    distortion: Tensor | None = None

    def __len__(self) -> int:
        return self.c2w.shape[0]

    def __getitem__(self, idx) -> "Cameras":
        idx = torch.as_tensor(idx).reshape(-1)
        return Cameras(
            c2w=self.c2w[idx],
            fx=self.fx[idx],
            fy=self.fy[idx],
            cx=self.cx[idx],
            cy=self.cy[idx],
            width=self.width,
            height=self.height,
            distortion=None if self.distortion is None else self.distortion[idx],
        )

    def to(self, device) -> "Cameras":
        return Cameras(
            c2w=self.c2w.to(device),
            fx=self.fx.to(device),
            fy=self.fy.to(device),
            cx=self.cx.to(device),
            cy=self.cy.to(device),
            width=self.width,
            height=self.height,
            distortion=None if self.distortion is None else self.distortion.to(device),
        )

    @staticmethod
    def cat(parts: list["Cameras"]) -> "Cameras":
        """One Cameras of all of ``parts`` (which share width and height), in order."""
        first = parts[0]
        if any((p.width, p.height) != (first.width, first.height) for p in parts):
            raise ValueError("cameras of different image sizes cannot be concatenated")
        dist = None if any(p.distortion is None for p in parts) else torch.cat([p.distortion for p in parts])
        return Cameras(
            c2w=torch.cat([p.c2w for p in parts]),
            fx=torch.cat([p.fx for p in parts]),
            fy=torch.cat([p.fy for p in parts]),
            cx=torch.cat([p.cx for p in parts]),
            cy=torch.cat([p.cy for p in parts]),
            width=first.width,
            height=first.height,
            distortion=dist,
        )

    def scaled(self, factor: float) -> "Cameras":
        """Cameras for images resized by ``factor`` (e.g. 0.25 for a 4x downscale)."""
        return Cameras(
            c2w=self.c2w,
            fx=self.fx * factor,
            fy=self.fy * factor,
            cx=self.cx * factor,
            cy=self.cy * factor,
            width=int(round(self.width * factor)),
            height=int(round(self.height * factor)),
            distortion=self.distortion,
        )


def undistort_opencv(xd: Tensor, yd: Tensor, dist: Tensor, iters: int = 10) -> tuple[Tensor, Tensor]:
    """Invert the OpenCV radial-tangential model by fixed-point iteration.

    Args:
        xd, yd: [R] distorted normalized image coordinates (OpenCV axes: y down).
        dist: [R, 4] (k1, k2, p1, p2).
    Returns:
        x, y: [R] undistorted normalized coordinates.
    """
    k1, k2, p1, p2 = dist.unbind(-1)
    x, y = xd.clone(), yd.clone()
    for _ in range(iters):
        r2 = x * x + y * y
        radial = 1.0 + k1 * r2 + k2 * r2 * r2
        dx = 2.0 * p1 * x * y + p2 * (r2 + 2.0 * x * x)
        dy = p1 * (r2 + 2.0 * y * y) + 2.0 * p2 * x * y
        x = (xd - dx) / radial
        y = (yd - dy) / radial
    return x, y


def distort_opencv(x: Tensor, y: Tensor, dist: Tensor) -> tuple[Tensor, Tensor]:
    """Apply the OpenCV radial-tangential model to normalized coordinates [R] (y down)."""
    k1, k2, p1, p2 = dist.unbind(-1)
    r2 = x * x + y * y
    radial = 1.0 + k1 * r2 + k2 * r2 * r2
    xd = x * radial + 2.0 * p1 * x * y + p2 * (r2 + 2.0 * x * x)
    yd = y * radial + p1 * (r2 + 2.0 * y * y) + 2.0 * p2 * x * y
    return xd, yd


def project_points(cameras: Cameras, index: int, points: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Project world points into camera ``index`` (pinhole; lens distortion ignored).

    Args:
        points: [N, 3] world coordinates.
    Returns:
        u, v: [N] pixel coordinates (pixel (i, j) covers [i, i + 1) x [j, j + 1)); depth: [N]
        distance in front of the camera along its viewing axis (<= 0: behind it).
    """
    c2w = cameras.c2w[index]
    local = (points - c2w[:3, 3]) @ c2w[:3, :3]  # R^T (x - t), row vectors
    depth = -local[:, 2]
    safe = torch.where(depth.abs() < 1e-9, torch.full_like(depth, 1e-9), depth)
    u = cameras.fx[index] * local[:, 0] / safe + cameras.cx[index]
    v = -cameras.fy[index] * local[:, 1] / safe + cameras.cy[index]
    return u, v, depth


def camera_rays(cameras: Cameras, cam_idx: Tensor, u: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
    """World-space rays through pixel centres.

    Args:
        cameras: the camera set.
        cam_idx: [R] long, which camera each ray belongs to.
        u, v: [R] integer (or float) pixel column / row; the ray passes through (u + 0.5, v + 0.5).
    Returns:
        origins: [R, 3]; directions: [R, 3] unit vectors.
    """
    dev = cameras.c2w.device
    cam_idx = cam_idx.to(dev)
    u = u.to(dev, torch.float32) + 0.5
    v = v.to(dev, torch.float32) + 0.5
    x = (u - cameras.cx[cam_idx]) / cameras.fx[cam_idx]
    y = (v - cameras.cy[cam_idx]) / cameras.fy[cam_idx]
    if cameras.distortion is not None:
        x, y = undistort_opencv(x, y, cameras.distortion[cam_idx])
    dirs_cam = torch.stack([x, -y, -torch.ones_like(x)], dim=-1)  # OpenCV y-down -> OpenGL y-up
    if cam_idx.numel() > 1 and bool((cam_idx == cam_idx[0]).all()):  # one camera (a whole image): one matrix product
        c2w = cameras.c2w[cam_idx[0]]
        dirs = dirs_cam @ c2w[:3, :3].T
        dirs = dirs / dirs.norm(dim=-1, keepdim=True)
        return c2w[:3, 3].expand_as(dirs).contiguous(), dirs
    c2w = cameras.c2w[cam_idx]
    dirs = (c2w[:, :3, :3] @ dirs_cam.unsqueeze(-1)).squeeze(-1)
    dirs = dirs / dirs.norm(dim=-1, keepdim=True)
    origins = c2w[:, :3, 3].expand_as(dirs).contiguous()
    return origins, dirs


def ndc_rays(
    origins: Tensor, directions: Tensor, fx: Tensor, fy: Tensor, width: int, height: int, near: float = 1.0
) -> tuple[Tensor, Tensor]:
    """Map forward-facing rays to normalized device coordinates (NeRF paper, appendix C).

    The origin is first moved onto the plane z = -near; in NDC the ray then runs over t in [0, 1].

    Args:
        origins, directions: [R, 3] world rays (camera looks down -z).
        fx, fy: [R] or scalar focal lengths in pixels.
    Returns:
        ndc_origins, ndc_directions: [R, 3] (directions not normalized: t = 1 is the far plane at infinity).
    """
    t = -(near + origins[:, 2]) / directions[:, 2]
    o = origins + t[:, None] * directions
    ox, oy, oz = o.unbind(-1)
    dx, dy, dz = directions.unbind(-1)
    ax = -2.0 * fx / width
    ay = -2.0 * fy / height
    o0 = ax * ox / oz
    o1 = ay * oy / oz
    o2 = 1.0 + 2.0 * near / oz
    d0 = ax * (dx / dz - ox / oz)
    d1 = ay * (dy / dz - oy / oz)
    d2 = -2.0 * near / oz
    return torch.stack([o0, o1, o2], -1), torch.stack([d0, d1, d2], -1)
