"""Occupancy grid: learning a known box, marching through occupied cells only, early stopping."""

import math

import pytest
import torch

from turbonerf.rays import RayBundle
from turbonerf.render.volrend import composite
from turbonerf.render.renderer import render_with_early_stop
from turbonerf.samplers.occupancy import (
    OccupancyGrid,
    opacity_to_density,
    ray_aabb_intersect,
)

AABB = torch.tensor([[-1.5, -1.5, -1.5], [1.5, 1.5, 1.5]])
RES = 24  # cells of 0.125: the box [-0.5, 0.5]^3 is exactly cells 8..15 on each axis


def inside_box(x: torch.Tensor, half: float = 0.5) -> torch.Tensor:
    return (x.abs() <= half).all(dim=-1).float()


def box_density(x: torch.Tensor) -> torch.Tensor:
    return 100.0 * inside_box(x)


def _box_grid() -> OccupancyGrid:
    grid = OccupancyGrid(AABB, resolution=RES, density_threshold=opacity_to_density(0.01, 3 * math.sqrt(3) / 1024))
    assert grid.update(0, box_density)
    return grid


def _rays(n: int, seed: int = 0, near: float = 2.0, far: float = 6.0) -> RayBundle:
    g = torch.Generator().manual_seed(seed)
    o = torch.nn.functional.normalize(torch.randn(n, 3, generator=g), dim=-1) * 4.0
    d = torch.nn.functional.normalize(-o + 0.8 * torch.randn(n, 3, generator=g), dim=-1)
    return RayBundle(o, d, d, torch.full((n,), near), torch.full((n,), far))


def test_ray_aabb_intersect():
    box = torch.tensor([[-1.0, -1.0, -1.0], [1.0, 1.0, 1.0]])
    o = torch.tensor([[-3.0, 0.0, 0.0], [0.0, 0.0, 0.0], [-3.0, 2.0, 0.0]])
    d = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])
    t_in, t_out = ray_aabb_intersect(o, d, box)
    assert t_in[:2].tolist() == [2.0, -1.0] and t_out[:2].tolist() == [4.0, 1.0]
    assert t_out[2] <= t_in[2]  # parallel to the slab and outside it: a miss


def test_opacity_to_density():
    sigma = opacity_to_density(0.01, 0.005)
    assert 1.0 - math.exp(-sigma * 0.005) == pytest.approx(0.01)


def test_update_marks_a_solid_box_occupied_and_the_rest_empty():
    grid = _box_grid()
    occ = grid.occupied.reshape(RES, RES, RES)
    expect = torch.zeros(RES, RES, RES, dtype=torch.bool)
    expect[8:16, 8:16, 8:16] = True
    assert torch.equal(occ, expect)
    assert grid.occupied_fraction() == pytest.approx(8**3 / RES**3)
    pts = torch.tensor([[0.0, 0.0, 0.0], [0.4, -0.4, 0.1], [1.0, 0.0, 0.0], [0.0, 0.0, -1.2], [2.0, 0.0, 0.0]])
    assert grid.is_occupied(pts).tolist() == [True, True, False, False, False]


def test_update_schedule_ema_decay_and_subsampling():
    grid = _box_grid()
    assert not grid.update(5, box_density)  # not a multiple of update_every
    before = grid.density.clone()
    assert grid.update(16, lambda x: torch.zeros(len(x)))
    torch.testing.assert_close(grid.density, 0.95 * before)
    assert grid.occupied.sum() == 8**3  # 95 is still far above the threshold
    cells = grid.cells_to_update(grid.warmup_steps)  # after warm-up: random + occupied cells
    m = int(grid.n_cells * grid.sample_fraction)
    assert torch.equal(cells[m:], grid.occupied.nonzero()[:, 0])  # fewer than m occupied: each once
    grid.occupied.fill_(True)
    cells = grid.cells_to_update(grid.warmup_steps)
    assert len(cells) == 2 * m
    assert set(grid.state_dict()) == {"aabb", "density", "occupied", "allowed"}


def test_restricted_cells_are_never_occupied_nor_probed():
    grid = _box_grid()
    allowed = torch.ones(RES, RES, RES, dtype=torch.bool)
    allowed[:12] = False  # half of the solid box is proven empty
    grid.restrict(allowed.reshape(-1))
    seen = []
    grid.update(0, lambda x: seen.append(x) or box_density(x), force=True)
    probed = torch.cat(seen)
    assert (probed[:, 0] >= grid.aabb[0, 0] + 12 / RES * (grid.aabb[1, 0] - grid.aabb[0, 0]) - 1e-6).all()
    occ = grid.occupied.reshape(RES, RES, RES)
    expect = torch.zeros(RES, RES, RES, dtype=torch.bool)
    expect[12:16, 8:16, 8:16] = True
    assert torch.equal(occ, expect)
    assert (grid.cells_to_update(grid.warmup_steps) >= 12 * RES * RES).all()


def _brute_force_counts(grid: OccupancyGrid, rays: RayBundle, step: float) -> list[int]:
    counts = []
    t_in, t_out = ray_aabb_intersect(rays.origins, rays.directions, grid.aabb)
    for r in range(len(rays)):
        t0, t1 = max(float(rays.near[r]), float(t_in[r])), min(float(rays.far[r]), float(t_out[r]))
        dt = step / float(rays.directions[r].norm())
        n, k = 0, 0
        while t0 + (k + 0.5) * dt < t1 and k < 1024:
            p = rays.origins[r] + (t0 + (k + 0.5) * dt) * rays.directions[r]
            n += bool(grid.is_occupied(p[None])[0])
            k += 1
        counts.append(n)
    return counts


@pytest.mark.parametrize("jitter", [False, True])
def test_march_keeps_only_occupied_sorted_samples_inside_near_far(jitter):
    grid = _box_grid()
    rays = _rays(64)
    step = 3 * math.sqrt(3) / 256
    s = grid.march(rays, step, max_samples=1024, jitter=jitter, max_candidates=5000)  # several ray chunks
    assert len(s) > 0
    assert (s.ray_indices[1:] >= s.ray_indices[:-1]).all()
    same = s.ray_indices[1:] == s.ray_indices[:-1]
    assert (s.t_starts[1:][same] > s.t_starts[:-1][same]).all()
    assert (s.t_starts >= rays.near[s.ray_indices]).all() and (s.t_ends <= rays.far[s.ray_indices]).all()
    assert (s.t_ends > s.t_starts).all() and (s.deltas <= step + 1e-6).all()
    assert grid.is_occupied(s.positions(rays)).all()
    if not jitter:
        counts = torch.bincount(s.ray_indices, minlength=len(rays)).tolist()
        assert counts == _brute_force_counts(grid, rays, step)


def test_march_through_the_box_along_an_axis_and_misses():
    grid = _box_grid()
    o = torch.tensor([[-4.0, 0.01, 0.02], [-4.0, 1.0, 0.0], [-4.0, 0.0, 0.0]])
    d = torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
    rays = RayBundle(o, d, d, torch.tensor([2.0, 2.0, 5.0]), torch.tensor([6.0, 6.0, 6.0]))
    step = 0.01
    s = grid.march(rays, step)
    counts = torch.bincount(s.ray_indices, minlength=3).tolist()
    assert abs(counts[0] - 100) <= 1  # the box is 1 thick
    assert counts[1] == 0 and counts[2] == 0  # passes beside the box; starts behind it
    # non-unit directions (NDC-style) march the same spatial step
    rays2 = RayBundle(o[:1], 2.0 * d[:1], d[:1], torch.tensor([1.0]), torch.tensor([3.0]))
    s2 = grid.march(rays2, step)
    assert abs(len(s2) - counts[0]) <= 1
    empty = grid.march(RayBundle(o[:0], d[:0], d[:0], torch.zeros(0), torch.zeros(0)), step)
    assert len(empty) == 0 and empty.n_rays == 0


def _field(x: torch.Tensor, d: torch.Tensor):
    sigma = 50.0 * inside_box(x) * (1.0 + x[:, 0].abs())
    rgb = torch.sigmoid(torch.cat([x[:, :2], d[:, :1]], dim=-1) * 3.0)
    return sigma, rgb


def test_early_stop_renderer_matches_composite():
    grid = _box_grid()
    rays = _rays(200, seed=3)
    s = grid.march(rays, 3 * math.sqrt(3) / 1024)
    sigma, rgb = _field(s.positions(rays), s.viewdirs(rays))
    bg = torch.tensor([1.0, 0.5, 0.0])
    ref = composite(s.t_starts, s.t_ends, sigma, rgb, s.ray_indices, s.n_rays, bg)
    exact, n_all = render_with_early_stop(rays, s, _field, bg, early_stop_eps=0.0, samples_per_round=3000)
    assert n_all == len(s)
    for k in ("rgb", "depth", "opacity"):
        torch.testing.assert_close(exact[k], ref[k], rtol=1e-4, atol=1e-5)
    fast, n_fast = render_with_early_stop(rays, s, _field, bg, early_stop_eps=1e-4, samples_per_round=3000)
    assert n_fast < 0.5 * n_all  # the box is opaque: most samples behind its front face are skipped
    for k in ("rgb", "opacity"):
        torch.testing.assert_close(fast[k], ref[k], rtol=0, atol=1e-3)


def test_cone_stepping_counts_and_positions_agree():
    from turbonerf.samplers.occupancy import cone_positions, cone_steps

    t0 = torch.tensor([0.05, 0.5, 3.0, 1.0])
    t1 = torch.tensor([40.0, 2.0, 50.0, 0.5])  # the last ray is empty
    dt = torch.full((4,), 0.01)
    cone = 1 / 64
    n = cone_steps(t0, t1, dt, cone)
    assert n[3] == 0
    k = torch.arange(int(n.max()) + 1, dtype=torch.float32)
    t = cone_positions(t0, dt, k, cone)
    for r in range(3):
        assert t[r, int(n[r])] >= t1[r] - 1e-4 and t[r, int(n[r]) - 1] < t1[r]
        steps = t[r, 1 : int(n[r]) + 1] - t[r, : int(n[r])]
        expected = torch.maximum(dt[r], cone * t[r, : int(n[r])])
        # each step is max(dt, cone * t) up to the one-step lag at the switch to geometric growth
        assert torch.allclose(steps, expected, rtol=cone * 1.01, atol=1e-6)
    # far content costs a logarithmic number of steps, not (t1 - t0) / dt
    assert n[0] < 400 < float((t1[0] - t0[0]) / dt[0])
    assert torch.equal(cone_steps(t0[:3], t1[:3], dt[:3], 0.0), torch.ceil((t1[:3] - t0[:3]) / dt[:3]))


def test_march_with_a_warp_looks_cells_up_in_warped_space():
    grid = _box_grid()
    rays = _rays(64)
    plain = grid.march(rays, 0.01)
    # the identity warp with the rays clipped to the box by near/far gives the same samples
    t_in, t_out = ray_aabb_intersect(rays.origins, rays.directions, grid.aabb)
    clipped = RayBundle(rays.origins, rays.directions, rays.viewdirs, torch.maximum(rays.near, t_in), torch.minimum(rays.far, t_out))
    warped = grid.march(clipped, 0.01, warp=lambda x: x)
    assert torch.equal(plain.ray_indices, warped.ray_indices)
    torch.testing.assert_close(plain.t_starts, warped.t_starts)
    # through a warp that halves coordinates the occupied box [-0.5, 0.5]^3 spans [-1, 1]^3 of sample space
    halved = grid.march(rays, 0.01, warp=lambda x: 0.5 * x)
    pts = halved.positions(rays)
    assert len(halved) > 4 * len(plain)
    assert pts.abs().amax() <= 1.0 + 0.01 and pts.abs().amax(dim=-1).max() > 0.9
