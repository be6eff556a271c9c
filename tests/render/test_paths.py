"""Orbit and spiral camera paths."""

import math

import pytest
import torch

from turbonerf.cameras import Cameras, camera_rays
from turbonerf.render.paths import look_at, orbit_path, spiral_path


def _cams(c2w: torch.Tensor, w: int = 40, h: int = 30) -> Cameras:
    n = c2w.shape[0]
    return Cameras(
        c2w=c2w.float(), fx=torch.full((n,), 50.0), fy=torch.full((n,), 52.0),
        cx=torch.full((n,), w / 2), cy=torch.full((n,), h / 2), width=w, height=h,
    )


def _blender_like(n: int = 20, radius: float = 4.0, seed: int = 0) -> Cameras:
    """Cameras on the upper hemisphere looking at the origin."""
    gen = torch.Generator().manual_seed(seed)
    az = torch.rand(n, generator=gen) * 2 * math.pi
    el = 0.2 + 0.8 * torch.rand(n, generator=gen)
    eye = radius * torch.stack([el.cos() * az.cos(), el.cos() * az.sin(), el.sin()], -1).double()
    return _cams(look_at(eye, torch.zeros(3, dtype=torch.float64), torch.tensor([0.0, 0.0, 1.0]).double()))


def _assert_rotations(c2w: torch.Tensor, atol: float = 1e-5):
    rot = c2w[:, :3, :3].double()
    eye = torch.eye(3, dtype=torch.float64).expand_as(rot)
    assert torch.allclose(rot.transpose(1, 2) @ rot, eye, atol=atol)
    assert torch.allclose(torch.linalg.det(rot), torch.ones(len(rot), dtype=torch.float64), atol=atol)


def _centre_rays(cams: Cameras):
    n = len(cams)
    # Pixel (u, v) has its centre at (u + 0.5, v + 0.5): pass u = cx - 0.5 to hit the principal point.
    return camera_rays(cams, torch.arange(n), cams.cx - 0.5, cams.cy - 0.5)


def test_orbit_looks_at_origin_with_matching_radius():
    ref = _blender_like()
    path = orbit_path(ref, n_frames=36)
    assert len(path) == 36 and path.width == ref.width and path.height == ref.height
    assert torch.allclose(path.fx, ref.fx[:1].expand(36)) and torch.allclose(path.cy, ref.cy[:1].expand(36))
    _assert_rotations(path.c2w)
    o, d = _centre_rays(path)
    # Distance from the origin to each centre ray.
    miss = torch.linalg.cross(-o.double(), d.double(), dim=-1).norm(dim=-1)
    assert miss.max() < 1e-4
    assert (((-o) * d).sum(-1) > 0).all()  # the origin is in front of the camera
    radius = path.c2w[:, :3, 3].norm(dim=-1)
    assert torch.allclose(radius, torch.full_like(radius, 4.0), atol=1e-4)
    # Default elevation: mean elevation of the reference cameras.
    pos = ref.c2w[:, :3, 3]
    mean_el = torch.asin(pos[:, 2] / pos.norm(dim=-1)).mean()
    assert torch.allclose(path.c2w[:, 2, 3], (4.0 * mean_el.sin()).expand(36), atol=1e-4)
    # Image "up" points towards world +z.
    assert (path.c2w[:, 2, 1] > 0).all()


def test_orbit_explicit_elevation_and_radius_including_poles():
    ref = _blender_like()
    for el in (0.0, 30.0, 90.0, -90.0):
        path = orbit_path(ref, n_frames=8, elevation_deg=el, radius=2.5)
        _assert_rotations(path.c2w)
        assert torch.isfinite(path.c2w).all()
        assert torch.allclose(path.c2w[:, :3, 3].norm(dim=-1), torch.full((8,), 2.5), atol=1e-5)
        o, d = _centre_rays(path)
        assert torch.linalg.cross(-o, d, dim=-1).norm(dim=-1).max() < 1e-4


def _forward_facing(n: int = 15, seed: int = 0) -> Cameras:
    """LLFF-like cameras: a jittered grid on a plane, all looking roughly down a tilted -z."""
    gen = torch.Generator().manual_seed(seed)
    tilt = torch.tensor([0.1, -0.2, 0.0], dtype=torch.float64)
    base_rot = torch.linalg.matrix_exp(torch.tensor(
        [[0, -tilt[2], tilt[1]], [tilt[2], 0, -tilt[0]], [-tilt[1], tilt[0], 0]], dtype=torch.float64))
    offs = (torch.rand(n, 3, generator=gen, dtype=torch.float64) - 0.5) * torch.tensor([1.0, 0.6, 0.1]).double()
    eye = torch.tensor([0.3, -0.2, 1.0], dtype=torch.float64) + offs @ base_rot.T
    target = eye - 5.0 * base_rot[:, 2] + 0.05 * torch.randn(n, 3, generator=gen, dtype=torch.float64)
    return _cams(look_at(eye, target, base_rot[:, 1]))


def test_spiral_is_sane():
    ref = _forward_facing()
    path = spiral_path(ref, depth_bounds=(2.0, 20.0), n_frames=40)
    assert len(path) == 40
    assert torch.isfinite(path.c2w).all()
    _assert_rotations(path.c2w)
    ref_view = -ref.c2w[:, :3, 2].sum(0)
    ref_view = ref_view / ref_view.norm()
    view = -path.c2w[:, :3, 2]
    assert ((view @ ref_view) > 0.9).all()
    # Spiral stays near the reference cameras (within their spread).
    centre = ref.c2w[:, :3, 3].mean(0)
    spread = (ref.c2w[:, :3, 3] - centre).norm(dim=-1).max()
    assert ((path.c2w[:, :3, 3] - centre).norm(dim=-1) <= spread * 1.5).all()
    # All centre rays converge on one focus point in front of the cameras.
    o, d = _centre_rays(path)
    o, d = o.double(), d.double()
    proj = torch.eye(3, dtype=torch.float64) - d[:, :, None] * d[:, None, :]  # [N, 3, 3]
    focus = torch.linalg.solve(proj.sum(0), (proj @ o[:, :, None]).sum(0)).squeeze(-1)
    assert torch.linalg.cross(focus - o, d, dim=-1).norm(dim=-1).max() < 1e-4
    assert (((focus - o) * d).sum(-1) > 2.0).all()  # beyond the near bound, in front of every camera
    assert torch.allclose(path.fy, ref.fy[:1].expand(40))


def test_spiral_rejects_bad_bounds():
    with pytest.raises(ValueError):
        spiral_path(_forward_facing(), depth_bounds=(0.0, 10.0))
