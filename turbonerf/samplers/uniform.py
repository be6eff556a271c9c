"""Stratified sampling along rays."""

from __future__ import annotations

import torch
from torch import Tensor


def stratified_edges(near: Tensor, far: Tensor, n_samples: int, jitter: bool, generator: torch.Generator | None = None) -> Tensor:
    """Interval edges splitting [near, far] into ``n_samples`` bins per ray.

    With ``jitter`` each interior edge moves uniformly within half a bin either side, so every
    interval (and its midpoint, where the field is evaluated) is random but the bins still tile
    [near, far]: the stratified sampling of the NeRF paper.

    Args:
        near, far: [R].
    Returns:
        [R, n_samples + 1] non-decreasing edges.
    """
    r = near.shape[0]
    u = torch.linspace(0.0, 1.0, n_samples + 1, device=near.device).expand(r, -1)
    if jitter and n_samples > 1:
        noise = torch.rand((r, n_samples - 1), device=near.device, generator=generator) - 0.5
        u = torch.cat([u[:, :1], u[:, 1:-1] + noise / n_samples, u[:, -1:]], dim=1)
    return near[:, None] + (far - near)[:, None] * u
