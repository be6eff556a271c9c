"""Ray bundles: cone radii and camera indices for every kind of ray."""

import math

import torch

from turbonerf.cameras import Cameras, camera_rays, ndc_rays
from turbonerf.rays import CONE_RADIUS_SCALE, make_rays


def _cameras(n=2, w=40, h=30):
    c2w = torch.eye(4).repeat(n, 1, 1)
    c2w[:, :3, 3] = torch.tensor([0.1, -0.2, 3.0])
    c2w[1, :3, :3] = torch.tensor([[0.0, 0.0, 1.0], [0.0, 1.0, 0.0], [-1.0, 0.0, 0.0]])
    f = torch.full((n,), 35.0)
    return Cameras(c2w, f, f * 1.1, torch.full((n,), 19.0), torch.full((n,), 16.0), w, h)


def test_world_radii_match_the_angular_width_of_a_pixel():
    cams = _cameras()
    idx = torch.tensor([0, 1, 0, 1])
    u, v = torch.tensor([0, 5, 20, 39]), torch.tensor([0, 29, 15, 3])
    rays = make_rays(cams, idx, u, v, 0.5, 6.0)
    # a central finite difference of the unit direction over one pixel column
    _, d_left = camera_rays(cams, idx, u.float() - 0.5, v)
    _, d_right = camera_rays(cams, idx, u.float() + 0.5, v)
    expected = (d_right - d_left).norm(dim=-1) * CONE_RADIUS_SCALE
    torch.testing.assert_close(rays.radii, expected, rtol=2e-3, atol=1e-7)
    assert torch.equal(rays.camera_indices, idx)
    assert abs(CONE_RADIUS_SCALE - 2 / math.sqrt(12)) < 1e-12


def test_ndc_radii_are_the_spacing_of_neighbouring_ndc_origins():
    cams = _cameras()
    cams.c2w[1] = cams.c2w[0]
    idx, u, v = torch.tensor([0, 1]), torch.tensor([3, 30]), torch.tensor([7, 2])
    rays = make_rays(cams, idx, u, v, 0.0, 1.0, ndc=True)
    o, d = camera_rays(cams, idx, u + 1, v)
    o_next, _ = ndc_rays(o, d, cams.fx[idx], cams.fy[idx], cams.width, cams.height)
    torch.testing.assert_close(rays.radii, (o_next - rays.origins).norm(dim=-1) * CONE_RADIUS_SCALE)
    assert (rays.radii > 0).all()


def test_slicing_and_moving_keep_the_optional_fields():
    rays = make_rays(_cameras(), torch.tensor([0, 1, 1]), torch.tensor([1, 2, 3]), torch.tensor([4, 5, 6]), 0.5, 6.0)
    part = rays[1:].to("cpu")
    assert torch.equal(part.camera_indices, torch.tensor([1, 1])) and part.radii.shape == (2,)
