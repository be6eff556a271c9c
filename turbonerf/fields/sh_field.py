"""EfficientNeRF's field: positions in, raw density and spherical-harmonics colour out.

The raw density goes through :func:`activate_density` (softplus, as in the official code, so
that a density grid can hold negative values in empty space); the colour is the SH basis at the
view direction dotted with the predicted coefficients, through a sigmoid.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from turbonerf.encodings.frequency import FrequencyEncoding
from turbonerf.encodings.sh import sh_basis


def activate_density(raw: Tensor, noise_std: float) -> Tensor:
    """raw [N] -> softplus(raw + noise_std * N(0, 1)) [N] (no noise when noise_std is 0)."""
    if noise_std > 0:
        raw = raw + noise_std * torch.randn_like(raw)
    return F.softplus(raw)



class SHField(nn.Module):
    """Positions (and directions) in, raw density and SH colour out.

    Trunk of ``depth`` x ``width`` ReLU layers on the positional encoding, with the encoding
    concatenated again before layer ``skip``; density head and SH head are each
    Linear(width, width) - ReLU - Linear (as in the official code). The view direction enters
    only through the SH basis.

    Args:
        depth, width, skip: trunk shape.
        sh_degree: SH bands (sh_degree^2 coefficients per colour channel).
        pos_freqs: positional-encoding octaves.
    """

    def __init__(self, depth: int, width: int, skip: int, sh_degree: int, pos_freqs: int = 10):
        super().__init__()
        self.pos_enc = FrequencyEncoding(pos_freqs)
        in_pos = self.pos_enc.out_dim(3)
        self.skip = skip
        self.sh_degree = sh_degree
        self.trunk = nn.ModuleList(
            nn.Linear(in_pos if i == 0 else width + (in_pos if i == skip else 0), width) for i in range(depth)
        )
        self.sigma_head = nn.Sequential(nn.Linear(width, width), nn.ReLU(), nn.Linear(width, 1))
        self.sh_head = nn.Sequential(nn.Linear(width, width), nn.ReLU(), nn.Linear(width, 3 * sh_degree**2))

    def features(self, x: Tensor) -> Tensor:
        """x: [N, 3] -> [N, width] trunk activations."""
        enc = self.pos_enc(x)
        h = enc
        for i, layer in enumerate(self.trunk):
            if i == self.skip and i > 0:
                h = torch.cat([enc.to(h.dtype), h], dim=-1)
            h = F.relu(layer(h))
        return h

    def density(self, x: Tensor) -> Tensor:
        """x: [N, 3] -> activated density softplus(raw) [N] (float32)."""
        return activate_density(self.sigma_head(self.features(x))[:, 0].float(), 0.0)

    def forward(self, x: Tensor, d: Tensor) -> tuple[Tensor, Tensor]:
        """x: [N, 3] points, d: [N, 3] unit directions -> raw sigma [N], rgb [N, 3] (float32)."""
        h = self.features(x)
        raw = self.sigma_head(h)[:, 0].float()
        coeffs = self.sh_head(h).float().reshape(-1, 3, self.sh_degree**2)
        basis = sh_basis(d.float(), self.sh_degree)  # [N, deg^2]
        rgb = torch.sigmoid((coeffs * basis[:, None, :]).sum(-1))
        return raw, rgb
