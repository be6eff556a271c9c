"""Valid sampling (EfficientNeRF, Hu et al. CVPR 2022): skip empty space with a momentum density grid.

A dense grid V of D^3 cells over the scene box holds a running average of the density the
coarse network predicted in each cell. It starts at a positive value everywhere (every cell is
"possibly occupied"), and after every coarse pass the cells the samples fell into move towards
the predicted density:

    V[i] <- (1 - beta) * V[i] + beta * sigma

A coarse sample is *valid* when its cell has V > 0; only valid samples are evaluated, the others
count as empty space (sigma = 0). Because a cell is only updated where it is sampled, a cell
whose value has fallen to <= 0 stays that way unless the caller forces samples there (the
method's ``uniform_ratio``).

The grid stores the *raw* (pre-activation) density: with a softplus activation, raw values go
negative in empty space, so "V > 0" is a meaningful test (the density after ReLU or softplus
would never fall to zero, only decay towards it). This is what the official code does.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from turbonerf.rays import PackedSamples, RayBundle, packed_from_dense
from turbonerf.samplers.uniform import stratified_edges


CARVED = -1e4
"""V of a cell the training views prove empty (far below any raw density, so never valid)"""


class DensityGrid(nn.Module):
    """Momentum density voxel grid of ``resolution``^3 cells over ``aabb``.

    Buffers (saved with the model's state_dict):
        density: [D, D, D] float32, V, the running raw density per cell (x, y, z index order).
        aabb: [2, 3] the box the grid covers (min corner, max corner).

    Args:
        aabb: [2, 3] box in sample space.
        resolution: D, cells per axis.
        init: initial V of every cell (> 0: everything starts valid).
        beta: momentum rate of :meth:`observe`.
    """

    OPTIONAL_STATE = ("allowed",)
    """checkpoints written before carving lack it: every cell stays allowed"""

    def __init__(self, aabb: Tensor, resolution: int = 128, init: float = 10.0, beta: float = 0.1):
        super().__init__()
        self.resolution = int(resolution)
        self.beta = float(beta)
        self.register_buffer("aabb", torch.as_tensor(aabb, dtype=torch.float32).clone().reshape(2, 3))
        self.register_buffer("density", torch.full((self.resolution,) * 3, float(init), dtype=torch.float32))
        # cells that may ever be valid (all, unless :meth:`restrict` was given what the views prove empty)
        self.register_buffer("allowed", torch.ones((self.resolution,) * 3, dtype=torch.bool))

    def restrict(self, allowed: Tensor) -> None:
        """Mark every cell outside ``allowed`` [D^3] bool (flat x-major, as :meth:`cell_indices`)
        empty for good: its V is set to ``CARVED`` and :meth:`observe` leaves it there."""
        self.allowed &= allowed.to(self.allowed.device).reshape(self.allowed.shape)
        self.density.masked_fill_(~self.allowed, CARVED)

    def cell_centres(self) -> Tensor:
        """[D^3, 3] cell centres in flat-index order."""
        d = self.resolution
        idx = torch.arange(d, device=self.density.device, dtype=torch.float32)
        ijk = torch.stack(torch.meshgrid(idx, idx, idx, indexing="ij"), -1).reshape(-1, 3)
        return self.aabb[0] + (ijk + 0.5) / d * (self.aabb[1] - self.aabb[0])

    def half_diagonal(self) -> float:
        """Half the diagonal of one cell."""
        return float((self.aabb[1] - self.aabb[0]).norm()) / self.resolution / 2

    def inside(self, points: Tensor) -> Tensor:
        """points [N, 3] -> bool [N]: inside the (closed) box."""
        lo, hi = self.aabb[0], self.aabb[1]
        return ((points >= lo) & (points <= hi)).all(dim=-1)

    def cell_indices(self, points: Tensor) -> tuple[Tensor, Tensor]:
        """Flat cell index of each point and whether the point lies inside the box.

        Args:
            points: [N, 3].
        Returns:
            flat: [N] long in [0, D^3) (points outside the box get the index of the nearest
                border cell; mask them with ``inside``), inside: [N] bool.
        """
        d = self.resolution
        lo, hi = self.aabb[0], self.aabb[1]
        u = (points.float() - lo) / (hi - lo)
        ijk = (u * d).floor().long().clamp_(0, d - 1)
        flat = (ijk[:, 0] * d + ijk[:, 1]) * d + ijk[:, 2]
        return flat, self.inside(points)

    def query(self, points: Tensor) -> Tensor:
        """points [N, 3] -> V at each point's cell [N] (float32; points outside the box: -inf)."""
        flat, inside = self.cell_indices(points)
        v = self.density.reshape(-1)[flat]
        return torch.where(inside, v, torch.full_like(v, float("-inf")))

    def valid_mask(self, points: Tensor) -> Tensor:
        """points [N, 3] -> bool [N]: inside the box and V > 0 at the point's cell."""
        flat, inside = self.cell_indices(points)
        return inside & (self.density.reshape(-1)[flat] > 0)

    @torch.no_grad()
    def observe(self, points: Tensor, sigmas: Tensor, beta: float | None = None) -> None:
        """Momentum update V[i] <- (1 - beta) V[i] + beta * sigma of every cell a point falls in.

        When several points fall into one cell, sigma is their mean, so each touched cell moves
        exactly once per call and the result does not depend on the order of the points (the
        official code does an indexed assignment, where one arbitrary point wins). Points
        outside the box and non-finite sigmas are ignored.

        Args:
            points: [N, 3]; sigmas: [N] raw densities (any float dtype; accumulated in float32).
            beta: momentum rate in [0, 1] (default: the grid's ``beta``).
        """
        beta = self.beta if beta is None else beta
        flat, inside = self.cell_indices(points)
        s = sigmas.detach().float().reshape(-1)
        ok = inside & torch.isfinite(s)
        flat, s = flat[ok], s[ok]
        keep = self.allowed.view(-1)[flat]
        flat, s = flat[keep], s[keep]
        if flat.numel() == 0:
            return
        cells, inverse = torch.unique(flat, return_inverse=True)
        sums = torch.zeros(cells.shape[0], dtype=torch.float32, device=s.device).index_add_(0, inverse, s)
        counts = torch.bincount(inverse, minlength=cells.shape[0]).to(torch.float32)
        v = self.density.view(-1)
        v[cells] = (1.0 - beta) * v[cells] + beta * (sums / counts)

    def occupied_fraction(self) -> float:
        """Fraction of cells with V > 0."""
        return int(torch.count_nonzero(self.density > 0)) / self.density.numel()


def valid_samples(
    rays: RayBundle, edges: Tensor, grid: DensityGrid, force_rays: Tensor | None = None
) -> tuple[PackedSamples, Tensor]:
    """Keep only the samples whose grid cell is valid (V > 0).

    Args:
        rays: R rays.
        edges: [R, S+1] interval edges of the dense (e.g. stratified) coarse samples.
        grid: the density grid.
        force_rays: optional [R] bool; on these rays every sample inside the box is kept
            whatever V says (lets cells that fell to V <= 0 be re-examined; the official code
            does this on 1% of the rays).
    Returns:
        samples: the kept samples, packed and sorted by ray and t.
        keep: [R * S] bool over the dense samples (ray-major), True where kept.
    """
    dense = packed_from_dense(edges)
    pts = dense.positions(rays)
    keep = grid.valid_mask(pts)
    if force_rays is not None:
        keep = keep | (force_rays[dense.ray_indices] & grid.inside(pts))
    return dense.masked(keep), keep


class ValidSampler:
    """Valid sampling as a sampler (:mod:`turbonerf.samplers.base`): ``n_samples`` stratified
    samples per ray, kept where the density grid is valid; in training ``uniform_ratio`` of the
    rays keep every in-box sample. The grid learns in :meth:`observe` from the raw densities
    the method predicted at the kept samples; :meth:`update` has nothing to do."""

    def __init__(self, grid: DensityGrid, n_samples: int, uniform_ratio: float = 0.0):
        self.grid = grid
        self.n_samples = n_samples
        self.uniform_ratio = uniform_ratio

    def sample(self, rays: RayBundle, density_fn=None, train: bool = False) -> PackedSamples:
        edges = stratified_edges(rays.near, rays.far, self.n_samples, jitter=train)
        force = None
        if train and self.uniform_ratio > 0:
            force = torch.rand(len(rays), device=edges.device) < self.uniform_ratio
        return valid_samples(rays, edges, self.grid, force)[0]

    def update(self, step: int, density_fn) -> None:
        pass

    def observe(self, points: Tensor, density: Tensor) -> None:
        self.grid.observe(points, density)
