"""Mip-NeRF's MLP: Gaussians (frustum mean and diagonal covariance) and directions in, (sigma, rgb) out."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from turbonerf.encodings.frequency import FrequencyEncoding
from turbonerf.encodings.ipe import integrated_pos_enc, ipe_dim
from turbonerf.fields.nerf_mlp import skip_trunk


class MipMLP(nn.Module):
    """The MLP of the official Mip-NeRF (google/mipnerf ``internal/models.py``), shared by both
    sampling levels: the integrated positional encoding of a frustum Gaussian
    (:func:`turbonerf.encodings.ipe.integrated_pos_enc`, no input appended) through a ``depth`` x
    ``width`` ReLU trunk with the encoding concatenated again after layer ``skip``; a density
    head, softplus(raw + density_bias); a linear bottleneck concatenated with the direction's
    plain positional encoding (input appended) into one ``color_width`` ReLU layer and a sigmoid
    colour head widened to [-rgb_padding, 1 + rgb_padding].

    Args:
        min_deg, max_deg: IPE octaves min_deg .. max_deg - 1 (official: 0, 16).
        dir_freqs: positional-encoding octaves of the view direction (official: 4).
        depth, width, skip, color_width: official 8, 256, 4, 128.
        density_bias: added to the raw density before the softplus (official: -1).
        rgb_padding: official 0.001.
    """

    def __init__(
        self,
        min_deg: int = 0,
        max_deg: int = 16,
        dir_freqs: int = 4,
        depth: int = 8,
        width: int = 256,
        skip: int = 4,
        color_width: int = 128,
        density_bias: float = -1.0,
        rgb_padding: float = 0.001,
    ):
        super().__init__()
        self.min_deg, self.max_deg = min_deg, max_deg
        self.density_bias, self.rgb_padding = density_bias, rgb_padding
        self.dir_enc = FrequencyEncoding(dir_freqs)
        in_pos = ipe_dim(min_deg, max_deg)
        self.skip = skip
        self.trunk = nn.ModuleList(
            nn.Linear((in_pos if i == 0 else width) + (in_pos if i == skip + 1 else 0), width) for i in range(depth)
        )
        self.sigma_head = nn.Linear(width, 1)
        self.feature = nn.Linear(width, width)
        self.color_hidden = nn.Linear(width + self.dir_enc.out_dim(3), color_width)
        self.color_head = nn.Linear(color_width, 3)
        for m in self.modules():  # the official initialisation: Glorot-uniform weights, zero biases
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    def encode(self, means: Tensor, cov_diag: Tensor) -> Tensor:
        """means, cov_diag: [N, 3] -> IPE [N, 2 * 3 * (max_deg - min_deg)]."""
        return integrated_pos_enc(means, cov_diag, self.min_deg, self.max_deg)

    def trunk_features(self, means: Tensor, cov_diag: Tensor, upto: int | None = None) -> Tensor:
        """Trunk activations after layer ``upto`` (inclusive; None: the last layer).

        Args:
            means, cov_diag: [N, 3] frustum Gaussians.
        Returns:
            [N, width] ReLU activations.
        """
        return skip_trunk(self.trunk, self.encode(means, cov_diag), self.skip, upto)

    def activate_density(self, raw: Tensor) -> Tensor:
        """raw density [N] -> softplus(raw + density_bias) (float32)."""
        return F.softplus(raw.float() + self.density_bias)

    def density(self, means: Tensor, cov_diag: Tensor) -> Tensor:
        """[N, 3], [N, 3] -> sigma [N]."""
        return self.activate_density(self.sigma_head(self.trunk_features(means, cov_diag))[:, 0])

    def forward(self, means: Tensor, cov_diag: Tensor, d: Tensor, density_noise: float = 0.0) -> tuple[Tensor, Tensor]:
        """means, cov_diag: [N, 3] frustum Gaussians; d: [N, 3] unit view directions;
        density_noise: std of Gaussian noise added to the raw density (training only).
        Returns sigma [N], rgb [N, 3] (float32)."""
        h = self.trunk_features(means, cov_diag)
        raw = self.sigma_head(h)[:, 0].float()
        if density_noise > 0:
            raw = raw + density_noise * torch.randn_like(raw)
        feat = self.feature(h)
        c = F.relu(self.color_hidden(torch.cat([feat, self.dir_enc(d).to(feat.dtype)], dim=-1)))
        rgb = torch.sigmoid(self.color_head(c).float()) * (1.0 + 2.0 * self.rgb_padding) - self.rgb_padding
        return self.activate_density(raw), rgb
