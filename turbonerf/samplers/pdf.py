"""Inverse-CDF (importance) sampling of a piecewise-constant density along rays."""

from __future__ import annotations

import torch
from torch import Tensor


def sample_from_pdf(
    edges: Tensor,
    weights: Tensor,
    n_samples: int,
    deterministic: bool,
    eps: float = 1e-5,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Draw positions along each ray with probability proportional to ``weights`` per bin.

    Args:
        edges: [R, B+1] bin edges (non-decreasing).
        weights: [R, B] non-negative weight of each bin; ``eps`` is added so empty rays sample uniformly.
        n_samples: N.
        deterministic: use evenly spaced quantiles instead of uniform random ones (evaluation).
    Returns:
        [R, N] sorted positions in [edges[:, 0], edges[:, -1]].
    """
    r, b = weights.shape
    w = weights + eps
    pdf = w / w.sum(dim=-1, keepdim=True)
    cdf = torch.cat([torch.zeros_like(pdf[:, :1]), torch.cumsum(pdf, dim=-1)], dim=-1).clamp(max=1.0)
    if deterministic:
        u = torch.linspace(0.0, 1.0, n_samples + 2, device=edges.device)[1:-1].expand(r, -1).contiguous()
    else:
        u = torch.rand((r, n_samples), device=edges.device, generator=generator)
    idx = torch.searchsorted(cdf, u, right=True)
    lo = (idx - 1).clamp(0, b)
    hi = idx.clamp(0, b)
    c0, c1 = cdf.gather(1, lo), cdf.gather(1, hi)
    e0, e1 = edges.gather(1, lo), edges.gather(1, hi)
    denom = c1 - c0
    frac = torch.where(denom > 1e-8, (u - c0) / denom.clamp(min=1e-8), torch.zeros_like(u))
    return e0 + frac * (e1 - e0)


def merge_edges(edges: Tensor, extra: Tensor) -> Tensor:
    """Sorted union of bin edges [R, B+1] and new positions [R, N] -> edges [R, B+N+1]."""
    return torch.sort(torch.cat([edges, extra], dim=-1), dim=-1).values
