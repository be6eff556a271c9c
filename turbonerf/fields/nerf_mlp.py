"""The NeRF MLP: points (and directions) in, (sigma, rgb) out."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from turbonerf.encodings.frequency import FrequencyEncoding


def skip_trunk(trunk: nn.ModuleList, enc: Tensor, skip: int, upto: int | None = None) -> Tensor:
    """ReLU activations after trunk layer ``upto`` (inclusive; None: the last) of a NeRF-style
    trunk whose input ``enc`` [N, C] is concatenated again before layer ``skip + 1``. Returns [N, width]."""
    h = enc
    last = len(trunk) - 1 if upto is None else upto
    for i, layer in enumerate(trunk[: last + 1]):
        if i == skip + 1:
            h = torch.cat([enc, h], dim=-1)
        h = F.relu(layer(h))
    return h


class NeRFMLP(nn.Module):
    """The MLP of Mildenhall et al.: ``depth`` x ``width`` trunk with the encoded input
    concatenated again after layer ``skip``, a density head, and a ``color_width`` colour branch
    that sees the encoded view direction.

    Args:
        pos_freqs, dir_freqs: octaves of the positional encoding (paper: 10 and 4).
        depth, width: trunk size (paper: 8 x 256).
        skip: trunk layer after whose output the input is concatenated again (paper: 4).
        color_width: hidden width of the colour branch (paper: 128).
    """

    def __init__(
        self, pos_freqs: int = 10, dir_freqs: int = 4, depth: int = 8, width: int = 256, skip: int = 4, color_width: int = 128
    ):
        super().__init__()
        self.pos_enc = FrequencyEncoding(pos_freqs)
        self.dir_enc = FrequencyEncoding(dir_freqs)
        in_pos = self.pos_enc.out_dim(3)
        in_dir = self.dir_enc.out_dim(3)
        self.skip = skip
        layers = []
        for i in range(depth):
            fan_in = in_pos if i == 0 else width
            if i == skip + 1:
                fan_in += in_pos
            layers.append(nn.Linear(fan_in, width))
        self.trunk = nn.ModuleList(layers)
        self.sigma_head = nn.Linear(width, 1)
        self.feature = nn.Linear(width, width)
        self.color_hidden = nn.Linear(width + in_dir, color_width)
        self.color_head = nn.Linear(color_width, 3)

    def trunk_features(self, x: Tensor, upto: int | None = None) -> Tensor:
        """Trunk activations after layer ``upto`` (inclusive; None: the last layer).

        Args:
            x: [N, 3] points.
        Returns:
            [N, width] ReLU activations.
        """
        return skip_trunk(self.trunk, self.pos_enc(x), self.skip, upto)

    def density(self, x: Tensor) -> Tensor:
        """x: [N, 3] -> sigma [N] (ReLU, as in the paper)."""
        return F.relu(self.sigma_head(self.trunk_features(x))[:, 0]).float()

    def forward(self, x: Tensor, d: Tensor) -> tuple[Tensor, Tensor]:
        """x: [N, 3] points, d: [N, 3] unit directions -> sigma [N], rgb [N, 3] (float32)."""
        h = self.trunk_features(x)
        sigma = F.relu(self.sigma_head(h)[:, 0])
        feat = self.feature(h)
        c = F.relu(self.color_hidden(torch.cat([feat, self.dir_enc(d).to(feat.dtype)], dim=-1)))
        rgb = torch.sigmoid(self.color_head(c))
        return sigma.float(), rgb.float()
