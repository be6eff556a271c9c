"""Mip-NeRF (Barron et al., ICCV 2021; the official code is google/mipnerf).

Each ray is a cone (its radius per unit t is :attr:`turbonerf.rays.RayBundle.radii`, the pixel
footprint x 2/sqrt(12)); each sample is the conical frustum between two bin edges, approximated
by a Gaussian and encoded with the integrated positional encoding
(:mod:`turbonerf.encodings.ipe`: degrees 0..15, diagonal covariance, the official closed forms;
the module docstring lists where nerfstudio's version differs). ONE MLP
(:class:`turbonerf.fields.mip_mlp.MipMLP`) serves both levels:

1. coarse: n_coarse (128) stratified bins over [near, far];
2. fine: the coarse weights (no gradient flows into the new edges) are blur-pooled
   (:func:`turbonerf.samplers.pdf.blur_pool_weights`), padded by ``resample_padding`` (0.01) and
   inverted into n_fine + 1 (129) new edges (:func:`turbonerf.samplers.pdf.resample_edges`), which
   replace the coarse ones (no union, unlike vanilla NeRF);
3. loss: coarse_loss_weight (0.1) x MSE(coarse) + MSE(fine).

Learning rate as the official code: log-linear from ``lr`` to ``lr * lr_final_factor`` over
``lr_decay_steps``, times a warm-up factor rising from ``lr_delay_mult`` to 1 along a quarter sine
over ``lr_delay_steps``. Official values throughout (Blender config), except that
``lr_decay_steps`` should be set to the length of the training run, as the official code does
with max_steps. The official LLFF config adds ``ray_shape=cylinder`` and ``density_noise_std=1``.
Glorot-uniform initialisation and zero biases, as flax's Dense in the official code.

Activation-based sampling (:mod:`turbonerf.eval.activation_eval`) works on it as on vanilla NeRF
(it is a :class:`~turbonerf.methods.base.CoarseToFine`): the shared MLP's trunk is read on the
uniform frustums and the fine level's edges are drawn from the estimate with the same blur-pool
and resampling. There is no field to bake: the MLP needs a frustum, not a point.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from turbonerf.encodings.ipe import conical_frustum_to_gaussian, cylinder_to_gaussian
from turbonerf.errors import TurboNerfError
from turbonerf.fields.mip_mlp import MipMLP
from turbonerf.methods.base import Method, adam, linear_flops
from turbonerf.rays import RayBundle, packed_from_dense
from turbonerf.render.volrend import composite
from turbonerf.samplers.pdf import blur_pool_weights, resample_edges
from turbonerf.samplers.uniform import stratified_edges


@dataclass
class MipNeRFConfig:
    """Mip-NeRF hyper-parameters (defaults: the official code's Blender configuration)."""

    n_coarse: int = 128
    """stratified bins per ray of the first (coarse) level"""
    n_fine: int = 128
    """bins per ray of the second (fine) level, resampled from the coarse weights"""
    depth: int = 8
    """layers in the trunk of the shared MLP"""
    width: int = 256
    """width of the trunk"""
    skip: int = 4
    """trunk layer after which the encoding is concatenated again"""
    color_width: int = 128
    """width of the view-dependent colour layer"""
    min_deg: int = 0
    """lowest IPE octave"""
    max_deg: int = 16
    """IPE octaves min_deg .. max_deg - 1"""
    dir_freqs: int = 4
    """positional-encoding octaves of the view direction"""
    density_bias: float = -1.0
    """added to the raw density before the softplus"""
    rgb_padding: float = 0.001
    """the sigmoid colour is widened to [-rgb_padding, 1 + rgb_padding]"""
    resample_padding: float = 0.01
    """added to the blur-pooled coarse weights before resampling the fine bins"""
    coarse_loss_weight: float = 0.1
    """weight of the coarse level's MSE in the loss"""
    density_noise_std: float = 0.0
    """std of Gaussian noise added to the raw density during training (official: 1.0 on LLFF)"""
    ray_shape: str = "cone"
    """"cone" (conical frustums) or "cylinder" (constant radius; the official LLFF setting)"""
    lr: float = 5e-4
    """initial Adam learning rate"""
    lr_final_factor: float = 0.01
    """the learning rate falls log-linearly to lr * lr_final_factor over lr_decay_steps"""
    lr_decay_steps: int = 1_000_000
    """steps of the log-linear decay (official: the run's max_steps)"""
    lr_delay_steps: int = 2500
    """warm-up steps (0: none)"""
    lr_delay_mult: float = 0.01
    """learning-rate factor at step 0 of the warm-up"""


class MipNeRF(Method):
    """Integrated positional encoding over conical frustums, one MLP for two levels (a
    :class:`~turbonerf.methods.base.CoarseToFine` method)."""

    def __init__(self, config: MipNeRFConfig, aabb: Tensor):
        super().__init__()
        self.config = c = config
        self.n_coarse, self.n_fine = c.n_coarse, c.n_fine
        if c.ray_shape not in ("cone", "cylinder"):
            raise TurboNerfError(f"mip-nerf: ray_shape must be cone or cylinder, got '{c.ray_shape}'")
        self.mlp = MipMLP(c.min_deg, c.max_deg, c.dir_freqs, c.depth, c.width, c.skip, c.color_width, c.density_bias, c.rgb_padding)

    def _gaussians(self, rays: RayBundle, edges: Tensor) -> tuple[Tensor, Tensor]:
        """Frustum Gaussians of the bins ``edges`` [R, S + 1]: means [R * S, 3], cov_diag [R * S, 3]."""
        if rays.radii is None:
            raise TurboNerfError("mip-nerf needs rays with cone radii (RayBundle.radii, set by make_rays)")
        to_gaussian = conical_frustum_to_gaussian if self.config.ray_shape == "cone" else cylinder_to_gaussian
        means, cov = to_gaussian(rays.origins, rays.directions, rays.radii, edges[:, :-1], edges[:, 1:])
        return means.reshape(-1, 3), cov.reshape(-1, 3)

    def _shade(self, rays: RayBundle, edges: Tensor, background: Tensor, train: bool) -> dict:
        """The MLP on the frustums of ``edges`` [R, S + 1], composited: rgb [R, 3], depth [R],
        opacity [R], weights [R * S]."""
        means, cov = self._gaussians(rays, edges)
        s = edges.shape[1] - 1
        dirs = rays.viewdirs[:, None, :].expand(-1, s, -1).reshape(-1, 3)
        noise = self.config.density_noise_std if train else 0.0
        sigma, rgb = self.mlp(means, cov, dirs, noise)
        p = packed_from_dense(edges)
        return composite(p.t_starts, p.t_ends, sigma, rgb, p.ray_indices, p.n_rays, background)

    def coarse_stage(self, rays: RayBundle, background: Tensor, train: bool = False) -> tuple[Tensor, Tensor, dict]:
        """n_coarse stratified bins through the MLP: (edges [R, n_coarse + 1], detached weights
        [R, n_coarse], coarse outputs)."""
        edges = stratified_edges(rays.near, rays.far, self.n_coarse, jitter=train)  # initial_edges when not train
        coarse = self._shade(rays, edges, background, train)
        return edges, coarse["weights"].detach().reshape(len(rays), self.n_coarse), coarse

    def fine_edges(self, rays: RayBundle, edges: Tensor, weights: Tensor, train: bool = False, padding: float | None = None) -> Tensor:
        """n_fine + 1 new edges [R, n_fine + 1] from the blur-pooled ``weights`` [R, B] plus
        ``padding`` (default: resample_padding), stratified quantiles when ``train``."""
        pad = self.config.resample_padding if padding is None else padding
        w = blur_pool_weights(weights.detach()) + pad
        return resample_edges(edges.detach(), w, self.n_fine + 1, randomized=train)

    def fine_stage(self, rays: RayBundle, background: Tensor, fine_edges: Tensor, train: bool = False) -> dict:
        """The MLP on the fine bins ``fine_edges`` [R, S + 1]."""
        return self._shade(rays, fine_edges, background, train)

    def trunk(self, net: str) -> MipMLP:
        """The shared MLP (for ``"coarse"`` and ``"fine"`` alike)."""
        return self.mlp

    def initial_edges(self, rays: RayBundle, n: int | None = None) -> Tensor:
        """[R, n + 1] the coarse pass's bins at inference: uniform over [near, far] (n: n_coarse)."""
        return stratified_edges(rays.near, rays.far, self.n_coarse if n is None else n, jitter=False)

    def trunk_depth(self, net: str) -> int:
        return len(self.trunk(net).trunk)

    def trunk_activations(self, rays: RayBundle, edges: Tensor, layer: int, net: str) -> Tensor:
        """[R * S, width] activations of trunk layer ``layer`` on the frustums of ``edges`` [R, S + 1]."""
        return self.trunk(net).trunk_features(*self._gaussians(rays, edges), upto=layer)

    def bin_density(self, rays: RayBundle, edges: Tensor, net: str) -> Tensor:
        """[R, S] density of the frustums of ``edges`` [R, S + 1]."""
        return self.trunk(net).density(*self._gaussians(rays, edges)).reshape(edges.shape[0], -1)

    def forward(self, rays: RayBundle, background: Tensor, train: bool = False) -> dict:
        """Fine outputs (rgb, depth, opacity, weights) and ``coarse_rgb`` [R, 3]."""
        edges, w, coarse = self.coarse_stage(rays, background, train)
        out = self.fine_stage(rays, background, self.fine_edges(rays, edges, w, train), train)
        out["coarse_rgb"] = coarse["rgb"]
        return out

    def loss(self, outputs: dict, target: Tensor):
        mse_c = torch.mean((outputs["coarse_rgb"] - target) ** 2)
        mse_f = torch.mean((outputs["rgb"] - target) ** 2)
        return self.config.coarse_loss_weight * mse_c + mse_f, {"mse": mse_f.item(), "mse_coarse": mse_c.item()}

    def samples_per_ray(self) -> int:
        """Network evaluations per rendered ray (coarse + fine)."""
        return self.n_coarse + self.n_fine

    def flops_per_ray(self) -> float:
        """The shared MLP on n_coarse + n_fine frustums."""
        return float(linear_flops(self.mlp) * (self.n_coarse + self.n_fine))

    def baking_field(self):
        raise TurboNerfError("mip-nerf has no field to bake: its MLP reads the Gaussian of a conical frustum (IPE), not a point")

    def make_optimizer(self):
        c = self.config

        def lr_factor(step: int) -> float:
            t = min(max(step / max(c.lr_decay_steps, 1), 0.0), 1.0)
            decay = c.lr_final_factor**t
            if c.lr_delay_steps <= 0:
                return decay
            ramp = min(max(step / c.lr_delay_steps, 0.0), 1.0)
            return decay * (c.lr_delay_mult + (1.0 - c.lr_delay_mult) * math.sin(0.5 * math.pi * ramp))

        return adam(self.parameters(), c.lr), lr_factor
