"""Camera paths for rendering videos: an orbit for 360-degree scenes, a spiral for forward-facing ones.

Every path returns a :class:`~turbonerf.cameras.Cameras` whose N cameras all share the
intrinsics (and distortion) of the reference set's first camera. Poses follow the OpenGL
convention of ``turbonerf.cameras``: the camera looks down -z, x right, y up.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from turbonerf.cameras import Cameras


def _normalize(v: Tensor, eps: float = 1e-12) -> Tensor:
    """Unit vectors along the last dimension: [..., 3] -> [..., 3]."""
    return v / v.norm(dim=-1, keepdim=True).clamp_min(eps)


def look_at(eye: Tensor, target: Tensor, up: Tensor) -> Tensor:
    """OpenGL camera-to-world matrices for cameras at ``eye`` looking at ``target``.

    The camera's -z axis points at the target, x = up x z (right) and y completes a right-handed
    frame, so y is as close to ``up`` as possible. Where the view direction is parallel to ``up``
    another helper axis is used instead, so the result is always a rotation.

    Args:
        eye: [N, 3] camera centres.
        target: [N, 3] or [3] points to look at.
        up: [N, 3] or [3] approximate up direction.
    Returns:
        c2w: [N, 3, 4].
    """
    target = target.expand_as(eye)
    up = up.expand_as(eye)
    z = _normalize(eye - target)  # camera +z points away from the target
    x = torch.linalg.cross(up, z, dim=-1)
    degenerate = x.norm(dim=-1) < 1e-6 * up.norm(dim=-1).clamp_min(1e-12)
    if degenerate.any():
        # Looking straight along ``up``: pick the world axis least aligned with z as the helper.
        helper = torch.zeros_like(z)
        helper.scatter_(-1, z.abs().argmin(dim=-1, keepdim=True), 1.0)
        x = torch.where(degenerate[:, None], torch.linalg.cross(helper, z, dim=-1), x)
    x = _normalize(x)
    y = torch.linalg.cross(z, x, dim=-1)
    return torch.cat([torch.stack([x, y, z], dim=-1), eye[..., None]], dim=-1)


def _with_poses(ref: Cameras, c2w: Tensor) -> Cameras:
    """Cameras with the first reference camera's intrinsics at the poses ``c2w`` [N, 3, 4]."""
    n = c2w.shape[0]

    def rep(t: Tensor) -> Tensor:
        return t[:1].expand(n, *t.shape[1:]).clone()

    return Cameras(
        c2w=c2w.contiguous(),
        fx=rep(ref.fx),
        fy=rep(ref.fy),
        cx=rep(ref.cx),
        cy=rep(ref.cy),
        width=ref.width,
        height=ref.height,
        distortion=None if ref.distortion is None else rep(ref.distortion),
    )


def orbit_path(
    ref: Cameras,
    n_frames: int = 120,
    elevation_deg: float | None = None,
    radius: float | None = None,
) -> Cameras:
    """Cameras on a circle around the world z axis (Blender scenes are z-up), looking at the origin.

    Args:
        ref: reference cameras (e.g. the training set); their first camera's intrinsics are reused.
        n_frames: number of cameras N, evenly spaced over one turn (the last is not a repeat of the first).
        elevation_deg: angle above the xy plane; default: mean elevation of the reference cameras.
        radius: distance to the origin; default: mean distance of the reference cameras to the origin.
    Returns:
        Cameras with c2w [N, 3, 4].
    """
    pos = ref.c2w[:, :3, 3].to(torch.float64)
    dist = pos.norm(dim=-1).clamp_min(1e-12)
    if radius is None:
        radius = dist.mean().item()
    if elevation_deg is None:
        elevation = torch.asin((pos[:, 2] / dist).clamp(-1.0, 1.0)).mean().item()
    else:
        elevation = math.radians(elevation_deg)
    theta = torch.arange(n_frames, dtype=torch.float64) * (2.0 * math.pi / n_frames)
    ring = radius * math.cos(elevation)
    eye = torch.stack(
        [ring * torch.cos(theta), ring * torch.sin(theta), torch.full_like(theta, radius * math.sin(elevation))],
        dim=-1,
    )
    origin = torch.zeros(3, dtype=torch.float64)
    up = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)
    c2w = look_at(eye, origin, up)
    return _with_poses(ref, c2w.to(ref.c2w.dtype).to(ref.c2w.device))


def average_pose(c2w: Tensor) -> Tensor:
    """Average camera pose as in LLFF's ``poses_avg``: mean centre, summed view/up axes re-orthonormalised.

    Args:
        c2w: [N, 3, 4] OpenGL camera-to-world matrices.
    Returns:
        [3, 4] camera-to-world matrix whose -z is the mean view direction.
    """
    center = c2w[:, :3, 3].mean(0)
    z = _normalize(c2w[:, :3, 2].sum(0))
    up = c2w[:, :3, 1].sum(0)
    x = _normalize(torch.linalg.cross(up, z, dim=-1))
    y = torch.linalg.cross(z, x, dim=-1)
    return torch.cat([torch.stack([x, y, z], dim=-1), center[:, None]], dim=-1)


def spiral_path(
    ref: Cameras,
    depth_bounds: tuple[float, float],
    n_frames: int = 120,
    n_rots: float = 2,
    zrate: float = 0.5,
) -> Cameras:
    """Forward-facing spiral around the average camera, looking at a focus point (LLFF's ``render_path_spiral``).

    The focus depth is LLFF's: close = near * 0.9, inf = far * 5, dt = 0.75,
    focal = 1 / ((1 - dt) / close + dt / inf). The spiral radii are the 90th percentile of the
    absolute camera offsets from the average pose, measured along the average camera's own axes
    (what LLFF does after recentring the poses). Frame k sits at
    c + R @ (radii * [cos t, -sin t, -sin(t * zrate)]), t = 2 pi n_rots k / N.

    Args:
        ref: reference (training) cameras; their first camera's intrinsics are reused.
        depth_bounds: (near, far) scene depth bounds in world units, near > 0.
        n_frames: number of cameras N.
        n_rots: turns of the spiral.
        zrate: how many back-and-forth moves along the view axis per turn.
    Returns:
        Cameras with c2w [N, 3, 4].
    """
    near, far = float(depth_bounds[0]), float(depth_bounds[1])
    if not (0.0 < near <= far and math.isfinite(far)):
        raise ValueError(f"spiral_path needs 0 < near <= far < inf, got depth_bounds={depth_bounds}")
    c2w_ref = ref.c2w.to(torch.float64)
    avg = average_pose(c2w_ref)
    rot, center = avg[:, :3], avg[:, 3]
    close_depth, inf_depth = near * 0.9, far * 5.0
    dt = 0.75
    focal = 1.0 / ((1.0 - dt) / close_depth + dt / inf_depth)
    offsets = (c2w_ref[:, :3, 3] - center) @ rot  # [N_ref, 3] in the average camera's axes
    radii = torch.quantile(offsets.abs(), 0.9, dim=0)  # [3]
    t = torch.arange(n_frames, dtype=torch.float64) * (2.0 * math.pi * n_rots / n_frames)
    local = torch.stack([torch.cos(t), -torch.sin(t), -torch.sin(t * zrate)], dim=-1) * radii  # [N, 3]
    eye = center + local @ rot.T
    focus = center - focal * rot[:, 2]  # on the average camera's view axis
    up = _normalize(c2w_ref[:, :3, 1].sum(0))
    c2w = look_at(eye, focus, up)
    return _with_poses(ref, c2w.to(ref.c2w.dtype).to(ref.c2w.device))
