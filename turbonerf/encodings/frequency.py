"""Positional (frequency) encoding of the NeRF paper."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class FrequencyEncoding(nn.Module):
    """gamma(x) = (x, sin(2^0 pi' x), cos(2^0 pi' x), ..., sin(2^(L-1) x), cos(2^(L-1) x)).

    As in the reference code, frequencies are 2^k (no factor pi) and the input is included.

    Args:
        n_freqs: L, the number of octaves.
        include_input: prepend x itself.
    """

    def __init__(self, n_freqs: int, include_input: bool = True):
        super().__init__()
        self.n_freqs = n_freqs
        self.include_input = include_input
        self.register_buffer("freqs", 2.0 ** torch.arange(n_freqs, dtype=torch.float32), persistent=False)

    def out_dim(self, in_dim: int) -> int:
        return in_dim * (2 * self.n_freqs + int(self.include_input))

    def forward(self, x: Tensor) -> Tensor:
        """x: [N, D] -> [N, D * (2L + 1)]."""
        xf = (x[..., None, :] * self.freqs[:, None]).flatten(-2)  # [N, L*D]
        parts = [x] if self.include_input else []
        parts += [torch.sin(xf), torch.cos(xf)]
        return torch.cat(parts, dim=-1)
