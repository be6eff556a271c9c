"""Valid sampling: the momentum density grid and the samples it keeps."""

import torch

from turbonerf.rays import RayBundle
from turbonerf.samplers.uniform import stratified_edges
from turbonerf.samplers.valid import DensityGrid, valid_samples

AABB = torch.tensor([[-1.0, -1.0, -1.0], [1.0, 1.0, 1.0]])


def _rays(n: int, seed: int = 0) -> RayBundle:
    g = torch.Generator().manual_seed(seed)
    d = torch.nn.functional.normalize(torch.randn(n, 3, generator=g), dim=-1)
    o = -2.0 * d + 0.3 * torch.randn(n, 3, generator=g)
    return RayBundle(o, d, d, torch.full((n,), 0.5), torch.full((n,), 3.5))


def test_momentum_update_exact_on_hand_example():
    grid = DensityGrid(AABB, resolution=2, init=10.0)
    # Cell (0,0,0) gets two points (sigmas 2 and 4 -> mean 3); cell (1,1,1) gets one (sigma -6).
    pts = torch.tensor([[-0.5, -0.5, -0.5], [-0.9, -0.1, -0.7], [0.5, 0.5, 0.5], [5.0, 0.0, 0.0]])
    sig = torch.tensor([2.0, 4.0, -6.0, 100.0])  # the last point is outside the box: ignored
    grid.observe(pts, sig, beta=0.25)
    expect = torch.full((2, 2, 2), 10.0)
    expect[0, 0, 0] = 0.75 * 10.0 + 0.25 * 3.0
    expect[1, 1, 1] = 0.75 * 10.0 + 0.25 * -6.0
    assert torch.equal(grid.density, expect)
    # A second update compounds from the new value.
    grid.observe(pts[2:3], torch.tensor([-6.0]), beta=0.25)
    assert grid.density[1, 1, 1].item() == 0.75 * 6.0 + 0.25 * -6.0
    # Cell indexing is x-major: point (0.5, -0.5, -0.5) lies in cell [1, 0, 0].
    flat, inside = grid.cell_indices(torch.tensor([[0.5, -0.5, -0.5]]))
    assert flat.item() == 4 and inside.item()


def test_valid_mask_follows_grid_and_box():
    grid = DensityGrid(AABB, resolution=4, init=1.0)
    grid.density[0] = -1.0  # the x < -0.5 slab is empty
    pts = torch.tensor([[-0.9, 0.0, 0.0], [0.1, 0.2, 0.3], [1.0, 1.0, 1.0], [1.01, 0.0, 0.0], [0.0, -2.0, 0.0]])
    assert grid.valid_mask(pts).tolist() == [False, True, True, False, False]
    q = grid.query(pts)
    assert q[1].item() == 1.0 and q[0].item() == -1.0 and torch.isinf(q[3])


def test_valid_samples_never_drop_occupied_cells():
    g = torch.Generator().manual_seed(1)
    grid = DensityGrid(AABB, resolution=8, init=1.0)
    grid.density.copy_(torch.where(torch.rand(8, 8, 8, generator=g) < 0.3, 1.0, -1.0))
    rays = _rays(64)
    edges = stratified_edges(rays.near, rays.far, 32, jitter=True, generator=g)
    samples, keep = valid_samples(rays, edges, grid)
    dense_pts = (rays.origins[:, None] + 0.5 * (edges[:, 1:] + edges[:, :-1])[..., None] * rays.directions[:, None]).reshape(-1, 3)
    lo, hi = AABB
    ijk = ((dense_pts - lo) / (hi - lo) * 8).floor().long()
    inside = ((dense_pts >= lo) & (dense_pts <= hi)).all(-1)
    ijk = ijk.clamp(0, 7)
    occupied = inside & (grid.density[ijk[:, 0], ijk[:, 1], ijk[:, 2]] > 0)
    assert torch.equal(keep, occupied)  # no occupied sample dropped, no empty one kept
    assert len(samples) == int(occupied.sum()) and 0 < len(samples) < keep.numel()
    assert torch.all(samples.ray_indices[1:] >= samples.ray_indices[:-1])
    assert torch.allclose(samples.positions(rays), dense_pts[keep], atol=1e-5)


def test_forced_rays_keep_every_in_box_sample():
    grid = DensityGrid(AABB, resolution=4, init=-1.0)  # everything empty
    rays = _rays(8)
    edges = stratified_edges(rays.near, rays.far, 16, jitter=False)
    samples, _ = valid_samples(rays, edges, grid)
    assert len(samples) == 0
    force = torch.zeros(8, dtype=torch.bool)
    force[3] = True
    samples, keep = valid_samples(rays, edges, grid, force)
    assert len(samples) > 0 and torch.all(samples.ray_indices == 3)
    assert grid.inside(samples.positions(rays)).all()


def test_grid_is_a_saved_buffer():
    grid = DensityGrid(AABB, resolution=4)
    assert set(grid.state_dict()) == {"aabb", "density", "allowed"}
