"""EfficientNeRF (Hu et al., CVPR 2022): valid sampling, pivotal sampling, a lightweight coarse
MLP and spherical-harmonics colour.

Per ray and step:

1. Coarse: ``n_coarse`` stratified samples; only those whose cell in the momentum density grid
   has V > 0 (valid samples, ``turbonerf.samplers.valid``) are evaluated by a small MLP; the
   rest count as empty. In training the grid is then updated with the raw densities predicted.
2. Fine: the coarse samples with compositing weight > ``weight_threshold`` are pivots; each
   gets ``n_per_pivot`` fine samples around it (``turbonerf.samplers.pivotal``) and only these
   are evaluated by the 8x256 fine MLP. Everything else along the ray is empty space.
3. Loss: coarse + fine MSE.

Both MLPs output a raw density (activated with softplus, as in the official code, so that the
grid can hold negative values in empty space) and 3 x sh_degree^2 SH coefficients, turned into
colour by evaluating the SH basis at the view direction and a sigmoid.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from turbonerf.fields.sh_field import SHField, activate_density
from turbonerf.methods.base import Method, adam, linear_flops
from turbonerf.rays import RayBundle
from turbonerf.render.renderer import eval_in_chunks
from turbonerf.render.volrend import composite, render_weight_from_density
from turbonerf.samplers.pivotal import pivotal_samples
from turbonerf.samplers.base import OBSERVED_DENSITY, OBSERVED_POINTS, SamplerUpdate
from turbonerf.samplers.carving import carve_grid
from turbonerf.samplers.valid import DensityGrid, ValidSampler


@dataclass
class EfficientNeRFConfig:
    """EfficientNeRF hyper-parameters (defaults: the official code's Blender settings unless noted)."""

    n_coarse: int = 128
    """stratified coarse samples per ray before valid sampling (official train.sh: 128)"""
    n_per_pivot: int = 5
    """N_s, fine samples around each pivotal coarse sample (official train.sh: 5)"""
    delta_f: float = 0.0
    """spacing of the fine samples in units of t; 0: each pivot's coarse interval / n_per_pivot"""
    weight_threshold: float = 1e-4
    """a coarse sample is a pivot when its weight exceeds this (paper: 1e-4; official lego script: 1e-5)"""
    max_fine_per_ray: float = 32.0
    """training only: when pivots would give more fine samples than this per ray on average, a
    random subset of pivots is kept; 0: no cap. The official code caps at 64; 32 halves the
    early steps on a CPU, when every coarse sample is still a pivot (lego, 200x200, first 90 s:
    0.33 s/step and 14.1 dB with 32 and grid_init 1, against 0.86 s/step and 10.4 dB with 64 and 10)"""
    pivots_from_grid: bool = False
    """take pivot weights from the density grid (softplus V) instead of the coarse MLP, as the
    official code does; then rendering never evaluates the coarse MLP"""
    grid_resolution: int = 128
    """D, cells per axis of the density grid over the scene box (official: 384 over a 2x larger box)"""
    grid_init: float = 1.0
    """initial raw density of every grid cell (paper: 10; official code: 30). At beta 0.1 a cell
    needs ~10 updates to fall from 10 below zero in empty space, and at CPU batch sizes (1024
    rays) a cell is hit only every few dozen steps, so with 10 the grid still covered 98% of the
    box after 100 steps on lego; from 1 it takes ~2 updates (79% after 100 steps, 19% after 200)"""
    carve_from_views: bool = True
    """start the density grid from the training views: cells outside every camera frustum or seen
    through a transparent pixel are never valid (:mod:`turbonerf.samplers.carving`)"""
    beta: float = 0.1
    """momentum of the grid update V <- (1 - beta) V + beta sigma"""
    uniform_ratio: float = 0.01
    """training only: fraction of rays on which every in-box sample is evaluated whatever the
    grid says, so cells that fell to V <= 0 can come back"""
    coarse_depth: int = 4
    """layers of the lightweight coarse MLP trunk (official: 4)"""
    coarse_width: int = 128
    """width of the coarse MLP (official: 128)"""
    coarse_skip: int = 2
    """the encoded input is concatenated again before this trunk layer of the coarse MLP (official: 2)"""
    fine_depth: int = 8
    """layers of the fine MLP trunk"""
    fine_width: int = 256
    """width of the fine MLP"""
    fine_skip: int = 4
    """the encoded input is concatenated again before this trunk layer of the fine MLP"""
    sh_degree: int = 3
    """SH bands of the colour: sh_degree^2 coefficients per channel (official: l <= 2, i.e. 3 bands)"""
    pos_freqs: int = 10
    """positional-encoding octaves for positions"""
    density_noise_std: float = 1.0
    """training only: std of Gaussian noise added to the raw density before the activation (official: 1)"""
    lr: float = 5e-4
    """initial Adam learning rate"""
    lr_final_factor: float = 0.1
    """the learning rate decays exponentially by this factor every ``lr_decay_steps``"""
    lr_decay_steps: int = 200_000
    """steps over which the learning rate falls by ``lr_final_factor``"""


def random_subset(mask: Tensor, n_keep: int) -> Tensor:
    """[S] bool: ``n_keep`` of the True entries of ``mask`` [S], chosen uniformly at random."""
    idx = torch.nonzero(mask).squeeze(1)
    perm = torch.randperm(idx.numel(), device=idx.device)[:n_keep]
    keep = torch.zeros_like(mask)
    keep[idx[perm]] = True
    return keep


class EfficientNeRF(Method):
    """Lightweight coarse SH-MLP on valid samples + fine SH-MLP on pivotal samples."""

    def __init__(self, config: EfficientNeRFConfig, aabb: Tensor):
        super().__init__()
        self.config = c = config
        self.coarse = SHField(c.coarse_depth, c.coarse_width, c.coarse_skip, c.sh_degree, c.pos_freqs)
        self.fine = SHField(c.fine_depth, c.fine_width, c.fine_skip, c.sh_degree, c.pos_freqs)
        self.grid = DensityGrid(aabb, c.grid_resolution, c.grid_init, c.beta)
        self.sampler = ValidSampler(self.grid, c.n_coarse, c.uniform_ratio)
        self.rendered = [0, 0]  # [network evaluations, rays] over all inference calls

    def forward(self, rays: RayBundle, background: Tensor, train: bool = False) -> dict:
        """Fine outputs (rgb [R, 3], depth, opacity, weights) plus ``coarse_rgb`` [R, 3] (when
        the coarse MLP ran), the valid points and raw coarse densities the grid observes
        (training), and ``stats``."""
        c = self.config
        n_rays = len(rays)
        noise = c.density_noise_std if train else 0.0

        # Coarse stage on valid samples.
        cs = self.sampler.sample(rays, None, train)
        pts = cs.positions(rays)
        grid_raw = self.grid.query(pts) if c.pivots_from_grid else None
        coarse, raw_c = None, None
        if train or not c.pivots_from_grid:
            raw_c, rgb_c = self.coarse(pts, cs.viewdirs(rays)) if train else eval_in_chunks(self.coarse, pts, cs.viewdirs(rays))
            sigma_c = activate_density(raw_c, noise)
            coarse = composite(cs.t_starts, cs.t_ends, sigma_c, rgb_c, cs.ray_indices, n_rays, background)

        # Pivots and fine stage.
        if c.pivots_from_grid:
            w = render_weight_from_density(cs.t_starts, cs.t_ends, F.softplus(grid_raw), cs.ray_indices, n_rays)[0]
        else:
            w = coarse["weights"].detach()
        n_pivots = int((w > c.weight_threshold).sum())
        if train and c.max_fine_per_ray > 0:
            cap = int(c.max_fine_per_ray * n_rays / c.n_per_pivot)
            if n_pivots > cap:
                w = torch.where(random_subset(w > c.weight_threshold, cap), w, torch.zeros_like(w))
                n_pivots = cap
        fs, _ = pivotal_samples(cs, w, c.n_per_pivot, c.delta_f if c.delta_f > 0 else None, c.weight_threshold, rays.near, rays.far)
        field = self.fine if train else partial(eval_in_chunks, self.fine)
        raw_f, rgb_f = field(fs.positions(rays), fs.viewdirs(rays))
        sigma_f = activate_density(raw_f, noise)
        out = composite(fs.t_starts, fs.t_ends, sigma_f, rgb_f, fs.ray_indices, n_rays, background)

        n_dense = max(n_rays * c.n_coarse, 1)
        n_evals = (len(cs) if coarse is not None else 0) + len(fs)
        out["stats"] = {
            "valid_fraction": len(cs) / n_dense,
            "pivotal_fraction": n_pivots / n_dense,
            "samples_per_ray": n_evals / max(n_rays, 1),
            "fine_per_ray": len(fs) / max(n_rays, 1),
            "grid_occupied": self.grid.occupied_fraction(),
        }
        if coarse is not None:
            out["coarse_rgb"] = coarse["rgb"]
        if train:
            out[OBSERVED_POINTS], out[OBSERVED_DENSITY] = pts, raw_c.detach()
        else:
            self.rendered[0] += n_evals
            self.rendered[1] += n_rays
        return out

    def loss(self, outputs: dict, target: Tensor):
        mse_c = torch.mean((outputs["coarse_rgb"] - target) ** 2)
        mse_f = torch.mean((outputs["rgb"] - target) ** 2)
        return mse_c + mse_f, {"mse": float(mse_f.detach()), "mse_coarse": float(mse_c.detach())}

    def prepare_from_views(self, cameras, alphas) -> dict[str, float]:
        if not self.config.carve_from_views:
            return {}
        return {"grid_cells_left": carve_grid(self.grid, cameras, alphas)}

    def callbacks(self) -> list:
        """The density grid's momentum update from each step's valid coarse samples."""
        return [SamplerUpdate(self.sampler, self.coarse.density)]

    def samples_per_ray(self) -> float:
        """Network evaluations per rendered ray: the average over every ray rendered so far
        (it depends on the scene and the grid), or the worst case before any render."""
        if self.rendered[1] > 0:
            return self.rendered[0] / self.rendered[1]
        c = self.config
        return float(c.n_coarse * (1 + c.n_per_pivot))

    def flops_per_ray(self) -> float:
        """The fine network on every evaluation counted by :meth:`samples_per_ray` (an upper
        bound: the coarse network is lighter)."""
        return float(linear_flops(self.fine)) * self.samples_per_ray()

    def baking_field(self) -> nn.Module:
        return self.fine

    def occupancy_fn(self):
        return self.grid.valid_mask

    def make_optimizer(self):
        c = self.config
        opt = adam([p for p in self.parameters() if p.requires_grad], c.lr, eps=1e-7)
        return opt, lambda step: c.lr_final_factor ** (step / c.lr_decay_steps)
