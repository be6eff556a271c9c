"""pixelNeRF's projection, feature lookup and view-order invariance."""

import torch

from turbonerf.cameras import Cameras, camera_rays, project_points
from turbonerf.fields.pixel_field import PixelMLP, SourceViews, conditioned_field, project_to_pixels, sample_features, world_to_views
from turbonerf.methods.pixelnerf import PixelNeRF, PixelNeRFConfig, stack_cameras


def orbit_cameras(n: int, size: int = 20) -> Cameras:
    c2w = []
    for k in range(n):
        a = 2 * torch.pi * k / n + 0.3
        eye = torch.tensor([4 * torch.cos(torch.tensor(a)), 4 * torch.sin(torch.tensor(a)), 1.5])
        back = eye / eye.norm()
        right = torch.linalg.cross(torch.tensor([0.0, 0.0, 1.0]), back)
        right = right / right.norm()
        up = torch.linalg.cross(back, right)
        c2w.append(torch.stack([right, up, back, eye], 1))
    full = lambda v: torch.full((n,), v)  # noqa: E731
    return Cameras(torch.stack(c2w), full(25.0), full(27.0), full(size / 2 + 0.3), full(size / 2 - 0.2), size, size)


def test_projection_lands_on_the_pixel_of_the_ray_generator():
    cams = orbit_cameras(3)
    g = torch.Generator().manual_seed(0)
    u = torch.randint(0, 20, (50,), generator=g)
    v = torch.randint(0, 20, (50,), generator=g)
    for i in range(3):
        o, d = camera_rays(cams, torch.full((50,), i), u, v)
        points = o + torch.rand(50, 1, generator=g) * 5 * d
        c2w, focal, centre = stack_cameras([cams])
        uv = project_to_pixels(world_to_views(points[None], c2w), focal, centre)[0, i]
        assert torch.allclose(uv[:, 0], u.float() + 0.5, atol=1e-3) and torch.allclose(uv[:, 1], v.float() + 0.5, atol=1e-3)
        pu, pv, _ = project_points(cams, i, points)
        assert torch.allclose(uv[:, 0], pu, atol=1e-3) and torch.allclose(uv[:, 1], pv, atol=1e-3)


def test_feature_at_a_projected_point_equals_a_direct_lookup():
    cams = orbit_cameras(2)
    feats = torch.randn(2, 5, 20, 20)  # full-resolution maps: pixel (i, j) holds feats[:, :, j, i]
    u = torch.tensor([0, 7, 19, 3])
    v = torch.tensor([0, 12, 19, 15])
    o, d = camera_rays(cams, torch.full((4,), 1), u, v)
    points = (o + 3.0 * d)[None]
    c2w, focal, centre = stack_cameras([cams])
    uv = project_to_pixels(world_to_views(points, c2w), focal, centre)
    got = sample_features(feats, uv, 20, 20)[0, 1]  # [N, C] in view 1
    assert torch.allclose(got, feats[1, :, v, u].T, atol=1e-4)


def test_output_does_not_depend_on_the_order_of_source_views():
    torch.manual_seed(0)
    model = PixelNeRF(PixelNeRFConfig(width=16, n_blocks=3, combine_at=2, encoder_widths="8,8", n_coarse=6, n_fine=4), None).eval()
    for block in list(model.coarse.blocks) + list(model.fine.blocks):
        torch.nn.init.normal_(block.fc1.weight, std=0.3)  # zero-initialised: make the blocks count
    cams = orbit_cameras(3)
    images = torch.randint(0, 255, (3, 20, 20, 3), dtype=torch.uint8)
    from turbonerf.rays import image_ray_bundle

    rays = image_ray_bundle(orbit_cameras(4), 3, 2.0, 6.0)[:64]
    model.condition(images, cams)
    a = model(rays, torch.ones(3))
    perm = torch.tensor([2, 0, 1])
    model.condition(images[perm], cams[perm])
    b = model(rays, torch.ones(3))
    assert torch.allclose(a["rgb"], b["rgb"], atol=1e-5) and torch.allclose(a["depth"], b["depth"], atol=1e-4)
    model.condition(images[:2], cams[torch.arange(2)])  # and the views do matter
    assert not torch.allclose(model(rays, torch.ones(3))["rgb"], a["rgb"], atol=1e-4)


def test_mlp_combines_views_by_their_mean():
    mlp = PixelMLP(4, 2, 8, 2, 2)
    local, dirs, feats = torch.randn(1, 2, 5, 3), torch.randn(1, 2, 5, 3), torch.randn(1, 2, 5, 4)
    s1, c1 = mlp(local, dirs, feats)
    s2, c2 = mlp(local.flip(1), dirs.flip(1), feats.flip(1))
    assert s1.shape == (1, 5) and c1.shape == (1, 5, 3)
    assert torch.allclose(s1, s2, atol=1e-6) and torch.allclose(c1, c2, atol=1e-6)


def test_renders_in_fp32_under_autocast():
    """Rays made under bf16 autocast are bf16; the model (fp32 by default) still renders."""
    from turbonerf.rays import image_ray_bundle

    model = PixelNeRF(PixelNeRFConfig(width=16, n_blocks=3, combine_at=2, encoder_widths="8,8", n_coarse=6, n_fine=4), None).eval()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model.condition(torch.randint(0, 255, (3, 20, 20, 3), dtype=torch.uint8), orbit_cameras(3))
        rays = image_ray_bundle(orbit_cameras(4), 3, 2.0, 6.0)[:16]
        out = model.render(rays, torch.ones(3))
    assert out["rgb"].dtype == torch.float32 and torch.isfinite(out["rgb"]).all()
