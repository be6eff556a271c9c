"""Vanilla NeRF (Mildenhall et al. 2020): the teacher and the quality reference.

Coarse network on 64 stratified samples, fine network on the union of those with 128
inverse-CDF samples drawn from the coarse weights, both trained with an L2 loss.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from turbonerf.fields.nerf_mlp import NeRFMLP
from turbonerf.rays import PackedSamples, RayBundle, packed_from_dense
from turbonerf.render.volrend import composite
from turbonerf.samplers.pdf import merge_edges, sample_from_pdf
from turbonerf.samplers.uniform import stratified_edges


@dataclass
class VanillaNeRFConfig:
    """Vanilla NeRF hyper-parameters (defaults: the paper's)."""

    n_coarse: int = 64
    """stratified samples per ray for the coarse network"""
    n_fine: int = 128
    """extra inverse-CDF samples per ray for the fine network"""
    depth: int = 8
    """layers in the trunk of each MLP"""
    width: int = 256
    """width of the trunk"""
    color_width: int = 128
    """width of the view-dependent colour branch"""
    pos_freqs: int = 10
    """positional-encoding octaves for positions"""
    dir_freqs: int = 4
    """positional-encoding octaves for directions"""
    lr: float = 5e-4
    """initial Adam learning rate"""
    lr_final_factor: float = 0.1
    """the learning rate decays exponentially by this factor every ``lr_decay_steps``"""
    lr_decay_steps: int = 250_000
    """steps over which the learning rate falls by ``lr_final_factor``"""
    density_noise_std: float = 0.0
    """std of Gaussian noise added to raw density during training (paper: 1.0 on LLFF)"""


class VanillaNeRF(nn.Module):
    """Coarse + fine NeRF MLPs with hierarchical sampling."""

    def __init__(self, config: VanillaNeRFConfig, aabb: Tensor):
        super().__init__()
        self.config = config
        c = config
        self.coarse = NeRFMLP(c.pos_freqs, c.dir_freqs, c.depth, c.width, 4, c.color_width)
        self.fine = NeRFMLP(c.pos_freqs, c.dir_freqs, c.depth, c.width, 4, c.color_width)

    def _shade(self, mlp: NeRFMLP, rays: RayBundle, samples: PackedSamples, background: Tensor, noise: float):
        sigma, rgb = mlp(samples.positions(rays), samples.viewdirs(rays))
        if noise > 0:
            sigma = torch.relu(sigma + noise * torch.randn_like(sigma))
        return composite(samples.t_starts, samples.t_ends, sigma, rgb, samples.ray_indices, samples.n_rays, background)

    def _forward(self, rays: RayBundle, background: Tensor, train: bool) -> tuple[dict, dict]:
        c = self.config
        noise = c.density_noise_std if train else 0.0
        edges = stratified_edges(rays.near, rays.far, c.n_coarse, jitter=train)
        coarse = self._shade(self.coarse, rays, packed_from_dense(edges), background, noise)
        w = coarse["weights"].detach().reshape(len(rays), c.n_coarse)
        t_fine = sample_from_pdf(edges, w, c.n_fine, deterministic=not train)
        fine_edges = merge_edges(edges, t_fine)
        fine = self._shade(self.fine, rays, packed_from_dense(fine_edges), background, noise)
        return coarse, fine

    def training_loss(self, rays: RayBundle, target: Tensor, background: Tensor, step: int):
        coarse, fine = self._forward(rays, background, train=True)
        mse_c = torch.mean((coarse["rgb"] - target) ** 2)
        mse_f = torch.mean((fine["rgb"] - target) ** 2)
        return mse_c + mse_f, {"mse": mse_f.item(), "mse_coarse": mse_c.item()}

    def render(self, rays: RayBundle, background: Tensor) -> dict[str, Tensor]:
        _, fine = self._forward(rays, background, train=False)
        return {"rgb": fine["rgb"], "depth": fine["depth"], "opacity": fine["opacity"]}

    def samples_per_ray(self) -> int:
        """Network evaluations per rendered ray (coarse + fine)."""
        return self.config.n_coarse + self.config.n_coarse + self.config.n_fine

    def make_optimizer(self):
        c = self.config
        opt = torch.optim.Adam(self.parameters(), lr=c.lr, betas=(0.9, 0.999), eps=1e-7)
        return opt, lambda step: c.lr_final_factor ** (step / c.lr_decay_steps)
