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
from turbonerf.methods.image_student import crop, to_hwc
from turbonerf.methods.pose2image import Pose2Image, Pose2ImageConfig
from turbonerf.methods.r2l import ray_point_ts
from turbonerf.rays import make_rays
from turbonerf.render.volrend import render_weight_dense


@dataclass
class SharedBackboneConfig(Pose2ImageConfig):
    """shared-backbone hyper-parameters: pose2image's (the image branch) and the NeRF branch's."""

    nerf_width: int = 128
    nerf_layers: int = 4
    nerf_samples: int = 32
    """stratified samples per ray of the NeRF branch"""
    nerf_freqs: int = 8
    """positional-encoding octaves of the NeRF branch's points"""
    nerf_rays: int = 256
    """rays per target image the NeRF branch renders each step"""
    nerf_weight: float = 1.0


class SharedBackbone(Pose2Image):
    """Pose encoder -> (image decoder, NeRF branch); :meth:`render_views` (pose2image's) runs the
    image branch only."""

    def __init__(self, config: SharedBackboneConfig, aabb: Tensor):
        super().__init__(config, aabb)
        c = config
        self.point_encoding = FrequencyEncoding(c.nerf_freqs)
        layers: list[nn.Module] = []
        d = self.point_encoding.out_dim(3) + self.net.code_dim
        for _ in range(c.nerf_layers):
            layers += [nn.Linear(d, c.nerf_width), nn.ReLU()]
            d = c.nerf_width
        layers.append(nn.Linear(d, 4))
        self.nerf = nn.Sequential(*layers)

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
        pred = to_hwc(crop(self.net.decode(code, train=True), c.height, c.width))
        mse_image = torch.mean((pred - images) ** 2)
        n, h, w = images.shape[:3]
        cam_idx = torch.arange(n, device=images.device).repeat_interleave(c.nerf_rays)
        u = torch.randint(w, (n * c.nerf_rays,), device=images.device)
        v = torch.randint(h, (n * c.nerf_rays,), device=images.device)
        mse_nerf = torch.mean((self.nerf_rays(code, cameras, cam_idx, u, v) - images[cam_idx, v, u]) ** 2)
        loss = mse_image + c.nerf_weight * mse_nerf
        return loss, {"mse": mse_image.item(), "mse_nerf": mse_nerf.item()}
