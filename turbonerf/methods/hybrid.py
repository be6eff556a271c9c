"""hybrid: a feature field volume-rendered at low resolution, then a 2D upsampler ("Faster
NeRFs" report, approach 2; GIRAFFE's neural renderer is the published reference).

1. The rays of a low-resolution grid (every ``stride`` x ``stride`` block of the padded image is
   one ray through its centre: :func:`turbonerf.methods.image_student.grid_rays`) are sampled at
   ``n_samples`` stratified points between near and far.
2. A field (multiresolution hash encoding + a small MLP, as Instant-NGP's, but its output is a
   density and an M-dimensional feature instead of a colour) is evaluated at the points and the
   features are composited with the usual weights; the ray's remaining transmittance is appended
   as one more channel, so the upsampler can blend in the background.
3. The feature image [M + 1, h, w] goes through a 3x3 convolution and ``log2(stride)`` 2x
   upsampling stages with an RGB skip at every scale
   (:class:`turbonerf.methods.image_student.RgbSkipUpsampler`): ``upsampler`` ``transposed``
   (stride-2 transposed convolutions, which leave checkerboard artifacts) or ``bilinear``
   (upsampling + convolution, the report's fix). :mod:`turbonerf.eval.checkerboard` measures the
   difference.

The report rendered 16 x 16 x 128 features from 32 samples per ray; here the grid is the output
size / ``stride``, and M and the samples are options.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from turbonerf.cameras import Cameras
from turbonerf.encodings.hashgrid import HashEncoding
from turbonerf.fields.hash_field import normalize_points, trunc_exp
from turbonerf.methods.base import adam
from turbonerf.methods.image_student import (
    ImageStudent,
    RgbSkipUpsampler,
    StudentFrame,
    crop,
    grid_rays,
    padded_size,
    to_hwc,
    upsampling_stages,
)
from turbonerf.methods.r2l import ray_point_ts
from turbonerf.render.volrend import render_weight_dense


@dataclass
class HybridConfig(StudentFrame):
    """hybrid hyper-parameters (height / width / near / far / ndc: the scene's, set by ``turbonerf distill``)."""

    stride: int = 8
    """output pixels per feature pixel along each axis (a power of 2: log2(stride) upsampling stages)"""
    features: int = 64
    """M, feature channels the field renders (report: 128)"""
    n_samples: int = 32
    """stratified samples per low-resolution ray (report: 32)"""
    upsampler: str = "bilinear"
    """bilinear (upsample + 3x3 convolution) or transposed (stride-2 transposed convolution)"""
    channels: int = 64
    """channels of the upsampler's first stage (halved at each stage, at least 16)"""
    n_levels: int = 16
    log2_table_size: int = 17
    max_resolution: int = 512
    hidden: int = 64
    lr: float = 1e-3
    """learning rate of the MLP and the upsampler"""
    table_lr: float = 1e-2
    """learning rate of the hash table (Instant-NGP's)"""
    lr_decay_steps: int = 20_000


class Hybrid(ImageStudent):
    """Low-resolution feature rendering + a 2D upsampler."""

    def __init__(self, config: HybridConfig, aabb: Tensor):
        super().__init__(aabb)
        c = self.config = config
        stages = upsampling_stages(c.stride, "hybrid")
        self.stages = stages
        self.register_buffer("aabb", torch.as_tensor(aabb, dtype=torch.float32).reshape(2, 3).clone(), persistent=False)
        self.encoding = HashEncoding(c.n_levels, 2, c.log2_table_size, 16, c.max_resolution)
        self.mlp = nn.Sequential(nn.Linear(self.encoding.out_dim, c.hidden), nn.ReLU(), nn.Linear(c.hidden, 1 + c.features))
        self.stem = nn.Conv2d(c.features + 1, c.channels, 3, padding=1)
        self.upsampler = RgbSkipUpsampler(c.channels, stages, c.upsampler)

    def feature_image(self, cameras: Cameras, train: bool) -> Tensor:
        """[N, M + 1, h, w]: composited features and remaining transmittance on the low-resolution grid."""
        c = self.config
        low_h, low_w = padded_size(cameras.height, cameras.width, c.stride)
        rays = grid_rays(cameras, c.stride, c.near, c.far, c.ndc)
        t = ray_point_ts(rays.near, rays.far, c.n_samples, jitter=train)
        pts = rays.origins[:, None] + t[..., None] * rays.directions[:, None]
        r, s = t.shape
        u = normalize_points(pts.reshape(r * s, 3), self.aabb)
        inside = ((u >= 0.0) & (u <= 1.0)).all(dim=-1)
        raw = self.mlp(self.encoding(u.clamp(0.0, 1.0))).float()
        sigma = (trunc_exp(raw[:, 0]) * inside).reshape(r, s)
        edges = torch.cat([t, rays.far[:, None]], dim=-1)
        weights = render_weight_dense(edges, sigma)
        feats = (weights[..., None] * raw[:, 1:].reshape(r, s, -1)).sum(dim=1)
        img = torch.cat([feats, 1.0 - weights.sum(dim=1, keepdim=True)], dim=-1)
        return img.reshape(len(cameras), low_h, low_w, -1).permute(0, 3, 1, 2)

    def render_views(self, cameras: Cameras, train: bool = False) -> Tensor:
        """N cameras -> rgb [N, H, W, 3] at the cameras' own size."""
        feats = self.feature_image(cameras, train)
        rgb = self.upsampler(torch.relu(self.stem(feats.to(self.stem.weight.dtype))), train)
        return to_hwc(crop(rgb, cameras.height, cameras.width))

    def samples_per_ray(self) -> float:
        """Field evaluations per output pixel: ``n_samples`` per low-resolution ray, / stride^2."""
        return self.config.n_samples / self.config.stride**2

    def make_optimizer(self):
        c = self.config
        table = [self.encoding.table]
        rest = [p for n, p in self.named_parameters() if not n.startswith("encoding.")]
        opt = adam([{"params": table, "lr": c.table_lr}, {"params": rest, "lr": c.lr}], c.lr)
        return opt, lambda step: 0.1 ** (step / c.lr_decay_steps)
