"""Vanilla NeRF (Mildenhall et al. 2020): the teacher and the quality reference.

Coarse network on 64 stratified samples, fine network on the union of those with 128
inverse-CDF samples drawn from the coarse weights, both trained with an L2 loss.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from turbonerf.fields.nerf_mlp import NeRFMLP
from turbonerf.methods.base import Method, adam, linear_flops
from turbonerf.rays import RayBundle, packed_from_dense
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


class VanillaNeRF(Method):
    """Coarse + fine NeRF MLPs with hierarchical sampling (a :class:`CoarseToFine` method)."""

    def __init__(self, config: VanillaNeRFConfig, aabb: Tensor):
        super().__init__()
        self.config = c = config
        self.n_coarse, self.n_fine = c.n_coarse, c.n_fine
        self.coarse = NeRFMLP(c.pos_freqs, c.dir_freqs, c.depth, c.width, 4, c.color_width)
        self.fine = NeRFMLP(c.pos_freqs, c.dir_freqs, c.depth, c.width, 4, c.color_width)

    def _shade(self, mlp: NeRFMLP, rays: RayBundle, edges: Tensor, background: Tensor, train: bool) -> dict:
        """Run ``mlp`` at the midpoints of the bins ``edges`` [R, S+1] and composite: rgb [R, 3],
        depth [R], opacity [R], weights [R * S]."""
        samples = packed_from_dense(edges)
        sigma, rgb = mlp(samples.positions(rays), samples.viewdirs(rays))
        noise = self.config.density_noise_std if train else 0.0
        if noise > 0:
            sigma = torch.relu(sigma + noise * torch.randn_like(sigma))
        return composite(samples.t_starts, samples.t_ends, sigma, rgb, samples.ray_indices, samples.n_rays, background)

    def coarse_stage(self, rays: RayBundle, background: Tensor, train: bool = False) -> tuple[Tensor, Tensor, dict]:
        """n_coarse stratified samples through the coarse MLP: (edges [R, n_coarse + 1],
        detached weights [R, n_coarse], coarse outputs)."""
        edges = stratified_edges(rays.near, rays.far, self.n_coarse, jitter=train)  # initial_edges when not train
        coarse = self._shade(self.coarse, rays, edges, background, train)
        return edges, coarse["weights"].detach().reshape(len(rays), self.n_coarse), coarse

    def fine_stage(self, rays: RayBundle, background: Tensor, fine_edges: Tensor, train: bool = False) -> dict:
        """The fine MLP on the merged intervals ``fine_edges`` [R, S + 1]."""
        return self._shade(self.fine, rays, fine_edges, background, train)

    def fine_edges(self, rays: RayBundle, edges: Tensor, weights: Tensor, train: bool = False, padding: float | None = None) -> Tensor:
        """The union of ``edges`` [R, B + 1] and n_fine inverse-CDF samples of ``weights`` [R, B]
        (``padding`` added per bin, default 1e-5; random quantiles when ``train``): [R, B + n_fine + 1]."""
        eps = 1e-5 if padding is None else padding
        return merge_edges(edges, sample_from_pdf(edges, weights, self.n_fine, deterministic=not train, eps=eps))

    def trunk(self, net: str) -> NeRFMLP:
        return {"coarse": self.coarse, "fine": self.fine}[net]

    def initial_edges(self, rays: RayBundle, n: int | None = None) -> Tensor:
        """[R, n + 1] the coarse pass's bins at inference: uniform over [near, far] (n: n_coarse)."""
        return stratified_edges(rays.near, rays.far, self.n_coarse if n is None else n, jitter=False)

    def trunk_depth(self, net: str) -> int:
        return len(self.trunk(net).trunk)

    def trunk_activations(self, rays: RayBundle, edges: Tensor, layer: int, net: str) -> Tensor:
        """[R * S, width] activations of trunk layer ``layer`` at the midpoints of the bins ``edges`` [R, S + 1]."""
        return self.trunk(net).trunk_features(packed_from_dense(edges).positions(rays), upto=layer)

    def bin_density(self, rays: RayBundle, edges: Tensor, net: str) -> Tensor:
        """[R, S] density of ``net`` at the midpoints of the bins ``edges`` [R, S + 1]."""
        pts = packed_from_dense(edges).positions(rays)
        return self.trunk(net).density(pts).float().reshape(edges.shape[0], -1)

    def forward(self, rays: RayBundle, background: Tensor, train: bool = False) -> dict:
        """Fine outputs (rgb, depth, opacity, weights) and ``coarse_rgb`` [R, 3]."""
        edges, w, coarse = self.coarse_stage(rays, background, train)
        out = self.fine_stage(rays, background, self.fine_edges(rays, edges, w, train), train)
        out["coarse_rgb"] = coarse["rgb"]
        return out

    def loss(self, outputs: dict, target: Tensor):
        mse_c = torch.mean((outputs["coarse_rgb"] - target) ** 2)
        mse_f = torch.mean((outputs["rgb"] - target) ** 2)
        return mse_c + mse_f, {"mse": mse_f.item(), "mse_coarse": mse_c.item()}

    def samples_per_ray(self) -> int:
        """Network evaluations per rendered ray (coarse + fine)."""
        return self.n_coarse + self.n_coarse + self.n_fine

    def flops_per_ray(self) -> float:
        """The coarse MLP on n_coarse samples, the fine MLP on n_coarse + n_fine."""
        return float(linear_flops(self.coarse) * self.n_coarse + linear_flops(self.fine) * (self.n_coarse + self.n_fine))

    def baking_field(self) -> nn.Module:
        return self.fine

    def make_optimizer(self):
        c = self.config
        return adam(self.parameters(), c.lr, eps=1e-7), lambda step: c.lr_final_factor ** (step / c.lr_decay_steps)
