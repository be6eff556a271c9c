"""Occupancy grid (Instant-NGP / nerfacc): skip empty space when marching rays.

The grid is a module of its own, outside any field: it holds, per cell of a resolution^3 grid
over an axis-aligned box, an exponential moving maximum of the density (``density``) and a bool
``occupied`` field, both registered buffers (so they are checkpointed). It learns from a
callable ``density_fn: points [N, 3] -> sigma [N]`` and never imports a field.

Cells are indexed x-major: flat index = ix * res^2 + iy * res + iz.
"""

from __future__ import annotations

import math
from functools import partial
from typing import Callable

import torch
from torch import Tensor, nn

from turbonerf.rays import PackedSamples, RayBundle
from turbonerf.samplers.base import DensityFn



def opacity_to_density(opacity: float, step_size: float) -> float:
    """The density whose opacity over one marching step is ``opacity``: -ln(1 - opacity) / step."""
    return -math.log1p(-opacity) / step_size


def ray_aabb_intersect(origins: Tensor, directions: Tensor, aabb: Tensor) -> tuple[Tensor, Tensor]:
    """Slab test of rays against a box.

    Args:
        origins, directions: [R, 3].
        aabb: [2, 3] (min, max).
    Returns:
        t_enter, t_exit: [R]; a ray misses the box when t_exit <= t_enter (t_enter may be
        negative when the origin is inside).
    """
    inv = 1.0 / torch.where(directions.abs() < 1e-12, torch.full_like(directions, 1e-12), directions)
    t_a = (aabb[0] - origins) * inv
    t_b = (aabb[1] - origins) * inv
    t_enter = torch.minimum(t_a, t_b).amax(dim=-1)
    t_exit = torch.maximum(t_a, t_b).amin(dim=-1)
    return t_enter, t_exit


class OccupancyGrid(nn.Module):
    """A binary occupancy grid over ``aabb`` with an EMA (moving max) of density per cell.

    Args:
        aabb: [2, 3] box (min, max).
        resolution: cells per axis (Instant-NGP: 128).
        density_threshold: a cell is occupied when its density EMA exceeds
            min(density_threshold, mean density EMA) (see :func:`opacity_to_density`).
        update_every: ``update`` refreshes the grid every this many steps (Instant-NGP: 16).
        warmup_steps: before this step every cell is re-evaluated; after it a random
            ``sample_fraction`` of all cells plus (up to as many) occupied ones.
        decay: EMA decay per update (0.95): density <- max(density * decay, new).
        sample_fraction: fraction of all cells drawn uniformly per update after warm-up.
        chunk: points per call of ``density_fn``.
    """

    OPTIONAL_STATE = ("allowed",)
    """checkpoints written before carving lack it: every cell stays allowed"""

    def __init__(
        self,
        aabb: Tensor,
        resolution: int = 128,
        density_threshold: float = 2.0,
        update_every: int = 16,
        warmup_steps: int = 256,
        decay: float = 0.95,
        sample_fraction: float = 0.25,
        chunk: int = 1 << 18,
    ):
        super().__init__()
        self.resolution = resolution
        self.density_threshold = density_threshold
        self.update_every = update_every
        self.warmup_steps = warmup_steps
        self.decay = decay
        self.sample_fraction = sample_fraction
        self.chunk = chunk
        n = resolution**3
        self.register_buffer("aabb", aabb.detach().clone().float().reshape(2, 3))
        self.register_buffer("density", torch.zeros(n))
        # everything is occupied until the first update has looked at the field
        self.register_buffer("occupied", torch.ones(n, dtype=torch.bool))
        # cells that may ever be occupied (all, unless :meth:`restrict` was given what the views prove empty)
        self.register_buffer("allowed", torch.ones(n, dtype=torch.bool))

    @property
    def n_cells(self) -> int:
        return self.resolution**3

    def occupied_fraction(self) -> float:
        return float(self.occupied.float().mean())

    def restrict(self, allowed: Tensor) -> None:
        """Mark every cell outside ``allowed`` [n_cells] bool as empty for good (see
        :mod:`turbonerf.samplers.carving`); refreshes then only look at the allowed cells."""
        self.allowed &= allowed.to(self.allowed.device).reshape(-1)
        self.occupied &= self.allowed
        self.density.mul_(self.allowed)

    def cell_centres(self) -> Tensor:
        """[n_cells, 3] the centre of every cell, in flat-index order."""
        return self.cell_points(torch.arange(self.n_cells, device=self.density.device), jitter=False)

    def half_diagonal(self) -> float:
        """Half the diagonal of one cell."""
        return float((self.aabb[1] - self.aabb[0]).norm()) / self.resolution / 2

    def cell_index(self, points: Tensor) -> Tensor:
        """points [N, 3] (clamped to the box) -> flat cell index [N] (long)."""
        res = self.resolution
        ijk = ((points - self.aabb[0]) * (res / (self.aabb[1] - self.aabb[0]))).floor().long().clamp(0, res - 1)
        return (ijk[:, 0] * res + ijk[:, 1]) * res + ijk[:, 2]

    def is_occupied(self, points: Tensor) -> Tensor:
        """points [N, 3] -> [N] bool: inside the box and in an occupied cell."""
        u = (points - self.aabb[0]) / (self.aabb[1] - self.aabb[0])
        inside = ((u >= 0.0) & (u <= 1.0)).all(dim=-1)
        return self.occupied[self.cell_index(points)] & inside

    def cell_points(self, cells: Tensor, jitter: bool = True) -> Tensor:
        """A point in each cell: uniformly random inside it (``jitter``) or its centre. cells: [M] -> [M, 3]."""
        res = self.resolution
        ijk = torch.stack([cells // (res * res), (cells // res) % res, cells % res], dim=-1).float()
        off = torch.rand_like(ijk) if jitter else torch.full_like(ijk, 0.5)
        return self.aabb[0] + (ijk + off) / res * (self.aabb[1] - self.aabb[0])

    def cells_to_update(self, step: int) -> Tensor:
        """[M] cell indices to re-evaluate at ``step``: every allowed cell during warm-up, else m =
        sample_fraction * (allowed cells) uniformly random allowed cells plus every occupied cell, or m random occupied ones when
        there are more (duplicates allowed). Instant-NGP always draws m occupied cells; taking
        each once when there are fewer saves CPU time for the same coverage."""
        dev = self.density.device
        allowed = self.allowed.nonzero()[:, 0]
        if step < self.warmup_steps or allowed.numel() == 0:
            return allowed
        m = max(1, int(allowed.numel() * self.sample_fraction))
        uniform = allowed[torch.randint(allowed.numel(), (m,), device=dev)]
        occ = self.occupied.nonzero()[:, 0]
        if occ.numel() > m:
            occ = occ[torch.randint(occ.numel(), (m,), device=dev)]
        return torch.cat([uniform, occ])

    @torch.no_grad()
    def update(self, step: int, density_fn: DensityFn, force: bool = False) -> bool:
        """Refresh the grid from ``density_fn`` if ``step`` is a multiple of ``update_every``
        (or ``force``). Returns whether it did. Only allowed cells are ever looked at (and occupied).

        Each chosen cell is evaluated at a random point inside it; density <- max(density *
        decay, new) over all cells (unvisited cells decay), then occupied <- density >
        min(threshold, mean density). A freshly initialised field has an almost constant
        density, so the first refresh marks about half of the cells occupied at random; the
        next refreshes prune them (as in Instant-NGP and nerfacc).
        """
        if not force and step % self.update_every != 0:
            return False
        cells = self.cells_to_update(step)
        if cells.numel() == 0:
            self.occupied.zero_()
            return True
        pts = self.cell_points(cells, jitter=True)
        sigma = torch.cat([density_fn(pts[i : i + self.chunk]).float().reshape(-1) for i in range(0, len(pts), self.chunk)])
        sigma = torch.nan_to_num(sigma, nan=0.0, posinf=1e6)
        fresh = torch.zeros_like(self.density).scatter_reduce_(0, cells, sigma, "amax")
        self.density.copy_(torch.maximum(self.density * self.decay, fresh))
        threshold = min(self.density_threshold, float(self.density[self.allowed].mean()))
        self.occupied.copy_((self.density > threshold) & self.allowed)
        return True

    @torch.no_grad()
    def march(
        self,
        rays: RayBundle,
        step_size: float,
        max_samples: int = 1024,
        jitter: bool = False,
        max_candidates: int = 1 << 22,
        cone_angle: float = 0.0,
        warp: Callable[[Tensor], Tensor] | None = None,
    ) -> PackedSamples:
        """Ray marching that keeps only samples in occupied cells.

        Each ray is clipped to [t0, t1] = [max(near, box entry), min(far, box exit)] (without
        ``warp``; with it, to [near, far]). Steps are dt = step_size / |direction| (``step_size``
        is a distance in sample space, so NDC rays with non-unit directions march alike), or with
        ``cone_angle`` > 0 grow with distance as Instant-NGP's cone stepping does: dt(t) =
        max(dt, cone_angle * t), so t grows linearly up to dt / cone_angle and geometrically
        beyond (far content of unbounded scenes costs a few hundred steps, not thousands).
        Sample k covers [t_k, t_k+1] shifted by u (u ~ U[0, 1) of a step per ray with
        ``jitter``), is kept when its midpoint is before t1 and in an occupied cell, and ends no
        later than t1. ``warp`` maps sample-space points into the grid's space (a scene
        contraction); the grid then covers the warped space. Vectorised: a dense [R, K]
        candidate set per chunk of rays (at most ``max_candidates``), compacted with a mask.

        Returns:
            PackedSamples sorted by ray (and by t within a ray).
        """
        n_rays = len(rays)
        t0, t1 = rays.near, rays.far
        if warp is None:
            t_in, t_out = ray_aabb_intersect(rays.origins, rays.directions, self.aabb)
            t0, t1 = torch.maximum(t0, t_in), torch.minimum(t1, t_out)
        dt = step_size / rays.directions.norm(dim=-1).clamp_min(1e-12)
        steps_of = partial(cone_steps, cone_angle=cone_angle)
        n_steps = steps_of(t0, t1, dt).clamp(0, max_samples).long()
        k_max = int(n_steps.max()) if n_rays else 0
        empty = torch.zeros(0, device=rays.origins.device)
        if k_max == 0:
            return PackedSamples(empty.long(), empty, empty, n_rays)
        res = self.resolution
        scale = res / (self.aabb[1] - self.aabb[0])
        chunk = max(1, max_candidates // k_max)
        ray_parts, start_parts, end_parts = [], [], []
        steps = torch.arange(k_max + 1, device=rays.origins.device, dtype=torch.float32)
        for r0 in range(0, n_rays, chunk):
            sl = slice(r0, r0 + chunk)
            k = int(n_steps[sl].max())
            if k == 0:
                continue
            u = torch.rand_like(t0[sl])[:, None] if jitter else 0.0
            edges = cone_positions(t0[sl], dt[sl], steps[: k + 1] + u, cone_angle)  # [r, k + 1]
            ts, ends = edges[:, :-1], edges[:, 1:]
            mids = 0.5 * (ts + ends)
            keep = (steps[:k] < n_steps[sl, None]) & (mids < t1[sl, None])
            if warp is None:
                origins_g = (rays.origins[sl] - self.aabb[0]) * scale  # rays in grid units
                dirs_g = rays.directions[sl] * scale
                cell = None  # flat cell index of every midpoint, built axis by axis (int32, in place)
                for axis in range(3):
                    c = torch.addcmul(origins_g[:, axis, None], mids, dirs_g[:, axis, None])
                    c = c.floor_().clamp_(0, res - 1).to(torch.int32)
                    cell = c if cell is None else cell.mul_(res).add_(c)
                keep &= self.occupied[cell]
            else:
                rows, cols = keep.nonzero(as_tuple=True)
                pts = rays.origins[sl][rows] + mids[rows, cols, None] * rays.directions[sl][rows]
                keep[rows, cols] = self.is_occupied(warp(pts))
            rows, cols = keep.nonzero(as_tuple=True)
            ray_parts.append(rows + r0)
            start_parts.append(ts[rows, cols])
            end_parts.append(torch.minimum(ends[rows, cols], t1[sl][rows]))
        if not ray_parts:
            return PackedSamples(empty.long(), empty, empty, n_rays)
        return PackedSamples(torch.cat(ray_parts), torch.cat(start_parts), torch.cat(end_parts), n_rays)


def cone_steps(t0: Tensor, t1: Tensor, dt: Tensor, cone_angle: float) -> Tensor:
    """[R] float: steps to march from t0 to t1 with dt(t) = max(dt, cone_angle * t) (rounded up;
    <= 0 where t1 <= t0). t0, t1, dt: [R]."""
    if cone_angle <= 0:
        return torch.ceil((t1 - t0) / dt)
    t_switch = dt / cone_angle  # where cone steps become longer than dt
    lin_end = torch.minimum(t1, torch.maximum(t0, t_switch))
    n_lin = torch.ceil((lin_end - t0).clamp_min(0) / dt)
    start_geo = t0 + n_lin * dt
    n_geo = torch.ceil(torch.log(torch.clamp(t1 / start_geo.clamp_min(1e-12), min=1.0)) / math.log1p(cone_angle))
    return torch.where(t1 > t0, n_lin + n_geo, torch.zeros_like(t0))


def cone_positions(t0: Tensor, dt: Tensor, k: Tensor, cone_angle: float) -> Tensor:
    """[R, K] t after k (fractional) steps from t0 [R] with dt(t) = max(dt, cone_angle * t);
    dt: [R]; k: [K] or [R, K]."""
    k = k if k.dim() == 2 else k[None]
    linear = t0[:, None] + k * dt[:, None]
    if cone_angle <= 0:
        return linear
    t_switch = dt / cone_angle
    n_lin = torch.ceil((t_switch - t0).clamp_min(0) / dt)[:, None]  # linear steps before cone stepping
    start_geo = t0[:, None] + n_lin * dt[:, None]
    geometric = start_geo * torch.pow(1.0 + cone_angle, (k - n_lin).clamp_min(0))
    return torch.where(k <= n_lin, linear, geometric)


class OccupancySampler:
    """The occupancy grid as a sampler (:mod:`turbonerf.samplers.base`): steps of ``step_size``
    (growing with distance by ``cone_angle``; at most ``max_samples`` per ray) through occupied
    cells, jittered in training; :meth:`update` refreshes the grid from the field's density
    every ``grid.update_every`` steps. With ``warp`` the grid lives in warped (contracted) space
    and the density callables it is refreshed with take warped points."""

    def __init__(self, grid: OccupancyGrid, step_size: float, max_samples: int = 1024, cone_angle: float = 0.0,
                 warp: Callable[[Tensor], Tensor] | None = None):
        self.grid = grid
        self.step_size = step_size
        self.max_samples = max_samples
        self.cone_angle = cone_angle
        self.warp = warp

    def sample(self, rays: RayBundle, density_fn=None, train: bool = False) -> PackedSamples:
        return self.grid.march(rays, self.step_size, self.max_samples, jitter=train, cone_angle=self.cone_angle,
                               warp=self.warp)

    def update(self, step: int, density_fn: DensityFn) -> None:
        self.grid.update(step, density_fn)

    def observe(self, points: Tensor, density: Tensor) -> None:
        pass
