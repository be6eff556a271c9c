"""shared-backbone: one pose encoder feeding a NeRF branch and an image branch ("Faster NeRFs"
report, approach 3).

Why it exists: pose2image (:mod:`turbonerf.methods.pose2image`) must learn the whole map from
poses to images from 2D supervision alone, and on 360-degree scenes it collapses. Here the pose
code that the image decoder reads is also read by a small NeRF branch, which renders individual
rays of the same target views through 3D points (positional encoding of the points, concatenated
with the pose code). The NeRF branch's 3D supervision shapes the shared encoder towards codes
that vary with the camera the way geometry does. Both branches train jointly on the same target
images (``nerf_weight`` scales the NeRF branch's loss); at inference only the image branch runs,
so it costs what pose2image costs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from turbonerf.cameras import Cameras
from turbonerf.encodings.frequency import FrequencyEncoding
from turbonerf.methods.image_student import ImageStudent, PoseDecoder, crop, fit_size, padded_size, to_hwc
from turbonerf.methods.r2l import ray_point_ts
from turbonerf.rays import make_rays
from turbonerf.render.volrend import render_weight_dense


@dataclass
class SharedBackboneConfig:
    """shared-backbone hyper-parameters (the image branch's as pose2image's; height / width /
    near / far / ndc: the scene's, set by ``turbonerf distill``)."""

    height: int = 200
    width: int = 200
    near: float = 2.0
    far: float = 6.0
    ndc: bool = False
    stages: int = 5
    channels: int = 256
    code_dim: int = 256
    mlp_layers: int = 3
    pose_freqs: int = 4
    upsampler: str = "bilinear"
    nerf_width: int = 128
    nerf_layers: int = 4
    nerf_samples: int = 32
    """stratified samples per ray of the NeRF branch"""
    nerf_freqs: int = 8
    """positional-encoding octaves of the NeRF branch's points"""
    nerf_rays: int = 256
    """rays per target image the NeRF branch renders each step"""
    nerf_weight: float = 1.0
    lr: float = 5e-4
    lr_decay_steps: int = 20_000


class SharedBackbone(ImageStudent):
    """Pose encoder -> (image decoder, NeRF branch); :meth:`render_views` runs the image branch only."""

    def __init__(self, config: SharedBackboneConfig, aabb: Tensor):
        super().__init__(aabb)
        c = self.config = config
        h0, w0 = padded_size(c.height, c.width, 2**c.stages)
        self.net = PoseDecoder(h0, w0, c.stages, c.channels, c.code_dim, c.mlp_layers, c.pose_freqs, c.upsampler)
        self.point_encoding = FrequencyEncoding(c.nerf_freqs)
        layers: list[nn.Module] = []
        d = self.point_encoding.out_dim(3) + self.net.code_dim
        for _ in range(c.nerf_layers):
            layers += [nn.Linear(d, c.nerf_width), nn.ReLU()]
            d = c.nerf_width
        layers.append(nn.Linear(d, 4))
        self.nerf = nn.Sequential(*layers)

    def render_views(self, cameras: Cameras, train: bool = False) -> Tensor:
        """The image branch: N cameras -> rgb [N, H, W, 3]."""
        c = self.config
        rgb = crop(self.net.decode(self.net.code(self.camera_vectors(cameras))), c.height, c.width)
        return to_hwc(fit_size(rgb, cameras.height, cameras.width))

    def nerf_rays(self, code: Tensor, cameras: Cameras, cam_idx: Tensor, u: Tensor, v: Tensor) -> Tensor:
        """The NeRF branch: rgb [R, 3] of the pixels (u, v) of cameras ``cam_idx`` [R], each ray's
        points encoded and concatenated with its camera's code (``code`` [N, code_dim])."""
        c = self.config
        rays = make_rays(cameras, cam_idx, u, v, c.near, c.far, c.ndc)
        t = ray_point_ts(rays.near, rays.far, c.nerf_samples, jitter=self.training)
        pts = rays.origins[:, None] + t[..., None] * rays.directions[:, None]
        r, s = t.shape
        x = ((pts - self.centre) / self.scale).reshape(r * s, 3)
        h = torch.cat([self.point_encoding(x), code[cam_idx].repeat_interleave(s, dim=0)], dim=-1)
        raw = self.nerf(h).float().reshape(r, s, 4)
        edges = torch.cat([t, rays.far[:, None]], dim=-1)
        weights = render_weight_dense(edges, torch.nn.functional.softplus(raw[..., 0]))
        rgb = (weights[..., None] * torch.sigmoid(raw[..., 1:])).sum(dim=1)
        return rgb + (1.0 - weights.sum(dim=1, keepdim=True))  # the remaining light: a white default,
        # learnt around by the MLP where the scene's background differs (the student learns
        # composited colours)

    def image_loss(self, cameras: Cameras, images: Tensor) -> tuple[Tensor, dict[str, float]]:
        """Image-branch MSE + ``nerf_weight`` x NeRF-branch MSE on ``nerf_rays`` random pixels of
        each target image, both through the one shared pose code."""
        c = self.config
        code = self.net.code(self.camera_vectors(cameras))
        pred = to_hwc(crop(self.net.decode(code), c.height, c.width))
        mse_image = torch.mean((pred - images) ** 2)
        n, h, w = images.shape[:3]
        cam_idx = torch.arange(n, device=images.device).repeat_interleave(c.nerf_rays)
        u = torch.randint(w, (n * c.nerf_rays,), device=images.device)
        v = torch.randint(h, (n * c.nerf_rays,), device=images.device)
        mse_nerf = torch.mean((self.nerf_rays(code, cameras, cam_idx, u, v) - images[cam_idx, v, u]) ** 2)
        loss = mse_image + c.nerf_weight * mse_nerf
        return loss, {"mse": mse_image.item(), "mse_nerf": mse_nerf.item()}
