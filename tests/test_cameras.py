import math

import torch

from turbonerf.cameras import Cameras, camera_rays, ndc_rays
from turbonerf.rays import image_ray_bundle, make_rays


def _camera(c2w, fx=100.0, fy=120.0, cx=50.0, cy=40.0, w=100, h=80):
    one = lambda v: torch.tensor([v])
    return Cameras(c2w=c2w[None], fx=one(fx), fy=one(fy), cx=one(cx), cy=one(cy), width=w, height=h)


def test_pixel_centre_rays_of_a_hand_built_camera():
    c2w = torch.eye(4)[:3].clone()
    c2w[:, 3] = torch.tensor([1.0, 2.0, 3.0])
    cams = _camera(c2w)
    idx = torch.zeros(3, dtype=torch.long)
    u = torch.tensor([0, 49, 99])
    v = torch.tensor([0, 39, 79])
    o, d = camera_rays(cams, idx, u, v)
    assert torch.allclose(o, torch.tensor([[1.0, 2.0, 3.0]]).expand(3, 3))
    # pixel (0, 0): centre (0.5, 0.5) -> x = (0.5 - 50) / 100, y up = -(0.5 - 40) / 120, z = -1
    expected = torch.tensor([(0.5 - 50) / 100, (40 - 0.5) / 120, -1.0])
    assert torch.allclose(d[0], expected / expected.norm(), atol=1e-6)
    # pixel (49, 39) has centre (49.5, 39.5), just off the principal point
    expected = torch.tensor([-0.5 / 100, 0.5 / 120, -1.0])
    assert torch.allclose(d[1], expected / expected.norm(), atol=1e-6)
    assert torch.allclose(d.norm(dim=-1), torch.ones(3))


def test_rotated_camera_looks_along_its_minus_z_axis():
    # camera rotated 90 degrees about world y: its -z axis points along world -x
    a = math.pi / 2
    rot = torch.tensor([[math.cos(a), 0, math.sin(a)], [0, 1, 0], [-math.sin(a), 0, math.cos(a)]])
    c2w = torch.cat([rot, torch.zeros(3, 1)], 1)
    cams = _camera(c2w, cx=50.0, cy=40.0)
    o, d = camera_rays(cams, torch.zeros(1, dtype=torch.long), torch.tensor([49.5]) , torch.tensor([39.5]))
    assert torch.allclose(d[0], torch.tensor([-1.0, 0.0, 0.0]), atol=1e-6)


def test_ndc_maps_near_plane_to_minus_one_and_infinity_to_one():
    o = torch.tensor([[0.0, 0.0, 0.0]])
    d = torch.tensor([[0.1, -0.2, -1.0]])
    o_ndc, d_ndc = ndc_rays(o, d, torch.tensor([50.0]), torch.tensor([50.0]), 100, 100)
    assert torch.allclose(o_ndc[0, 2], torch.tensor(-1.0))
    far = o_ndc + d_ndc
    assert torch.allclose(far[0, 2], torch.tensor(1.0))
    # x at the near plane: -2 f / W * x / z = -(1) * 0.1 / -1 = 0.1
    assert torch.allclose(o_ndc[0, :2], torch.tensor([0.1, -0.2]), atol=1e-6)


def test_image_ray_bundle_row_major_and_ndc_bounds():
    cams = _camera(torch.eye(4)[:3].clone(), w=6, h=4, cx=3.0, cy=2.0)
    rays = image_ray_bundle(cams, 0, 2.0, 6.0)
    assert len(rays) == 24 and torch.equal(rays.near, torch.full((24,), 2.0))
    # second pixel of the first row is to the right of the first
    assert rays.directions[1, 0] > rays.directions[0, 0]
    ndc = make_rays(cams, torch.zeros(2, dtype=torch.long), torch.tensor([0, 5]), torch.tensor([0, 3]), 2.0, 6.0, ndc=True)
    assert torch.equal(ndc.near, torch.zeros(2)) and torch.equal(ndc.far, torch.ones(2))
    assert torch.allclose(ndc.viewdirs.norm(dim=-1), torch.ones(2))


def test_rays_of_one_camera_equal_rays_of_mixed_cameras():
    """camera_rays has a one-camera path (a whole image); it gives what the per-ray path gives."""
    g = torch.Generator().manual_seed(0)
    rot, _ = torch.linalg.qr(torch.randn(3, 3, 3, generator=g))
    c2w = torch.cat([rot, torch.randn(3, 3, 1, generator=g)], 2)
    cams = Cameras(c2w=c2w, fx=torch.tensor([90.0, 100, 110]), fy=torch.tensor([95.0, 105, 115]), cx=torch.tensor([40.0, 50, 60]),
                   cy=torch.tensor([30.0, 40, 50]), width=100, height=80)
    u, v = torch.randint(0, 100, (500,), generator=g), torch.randint(0, 80, (500,), generator=g)
    for c in range(3):
        one = torch.full((500,), c, dtype=torch.long)
        mixed = one.clone()
        mixed[0] = (c + 1) % 3  # one ray of another camera: the per-ray path
        o1, d1 = camera_rays(cams, one, u, v)
        o2, d2 = camera_rays(cams, mixed, u, v)
        torch.testing.assert_close(d1[1:], d2[1:], atol=1e-6, rtol=0)
        torch.testing.assert_close(o1[1:], o2[1:])
        torch.testing.assert_close(o1[0], c2w[c, :, 3])
