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
    r = weights.shape[0]
    w = weights + eps
    pdf = w / w.sum(dim=-1, keepdim=True)
    cdf = torch.cat([torch.zeros_like(pdf[:, :1]), torch.cumsum(pdf, dim=-1)], dim=-1).clamp(max=1.0)
    if deterministic:
        u = torch.linspace(0.0, 1.0, n_samples + 2, device=edges.device)[1:-1].expand(r, -1).contiguous()
    else:
        u = torch.rand((r, n_samples), device=edges.device, generator=generator)
    return _invert_cdf(edges, cdf, u)


def merge_edges(edges: Tensor, extra: Tensor) -> Tensor:
    """Sorted union of bin edges [R, B+1] and new positions [R, N] -> edges [R, B+N+1]."""
    return torch.sort(torch.cat([edges, extra], dim=-1), dim=-1).values


def blur_pool_weights(weights: Tensor) -> Tensor:
    """Mip-NeRF's blur-pool of the coarse weights: each bin takes the max with each neighbour
    (the end bins are repeated), then the two maxima are averaged:
    w'_i = (max(w_{i-1}, w_i) + max(w_i, w_{i+1})) / 2. Widens peaks by a bin on either side.

    Args:
        weights: [R, B].
    Returns:
        [R, B].
    """
    pad = torch.cat([weights[:, :1], weights, weights[:, -1:]], dim=-1)
    maxed = torch.maximum(pad[:, :-1], pad[:, 1:])
    return 0.5 * (maxed[:, :-1] + maxed[:, 1:])


def resample_edges(
    edges: Tensor, weights: Tensor, n_edges: int, randomized: bool, generator: torch.Generator | None = None
) -> Tensor:
    """New bin edges drawn by inverse CDF from a piecewise-constant pdf (Mip-NeRF's
    ``sorted_piecewise_constant_pdf``): they replace the old edges rather than joining them.

    Quantiles: stratified, (k + U[0, 1)) / n_edges for k = 0..n_edges-1 (``randomized``), or
    evenly spaced from 0 to 1 - eps (so the first edge is the ray's start). Rays whose weights
    sum to less than 1e-5 get uniform weights added up to that sum.

    Args:
        edges: [R, B+1] non-decreasing bin edges.
        weights: [R, B] >= 0 (not necessarily normalised).
        n_edges: N, edges per ray to return (N - 1 new intervals).
    Returns:
        [R, N] non-decreasing positions in [edges[:, 0], edges[:, -1]].
    """
    r, b = weights.shape
    eps = 1e-5
    total = weights.sum(dim=-1, keepdim=True)
    pad = (eps - total).clamp(min=0.0)
    pdf = (weights + pad / b) / (total + pad)
    cdf = torch.cat([torch.zeros_like(pdf[:, :1]), torch.cumsum(pdf[:, :-1], dim=-1).clamp(max=1.0), torch.ones_like(pdf[:, :1])], dim=-1)
    top = 1.0 - torch.finfo(torch.float32).eps
    if randomized:
        u = torch.arange(n_edges, device=edges.device, dtype=pdf.dtype) / n_edges
        u = u + torch.rand((r, n_edges), device=edges.device, generator=generator, dtype=pdf.dtype) * (1.0 / n_edges - torch.finfo(torch.float32).eps)
        u = u.clamp(max=top)
    else:
        u = torch.linspace(0.0, top, n_edges, device=edges.device, dtype=pdf.dtype).expand(r, -1).contiguous()
    return _invert_cdf(edges, cdf.contiguous(), u)


def _invert_cdf(edges: Tensor, cdf: Tensor, u: Tensor) -> Tensor:
    """Positions [R, N] where the piecewise-linear CDF (values ``cdf`` [R, B+1] at ``edges``
    [R, B+1]) reaches the quantiles ``u`` [R, N]."""
    b = cdf.shape[1] - 1
    idx = torch.searchsorted(cdf, u, right=True)
    lo = (idx - 1).clamp(0, b)
    hi = idx.clamp(0, b)
    c0, c1 = cdf.gather(1, lo), cdf.gather(1, hi)
    e0, e1 = edges.gather(1, lo), edges.gather(1, hi)
    denom = c1 - c0
    frac = torch.where(denom > 1e-8, (u - c0) / denom.clamp(min=1e-8), torch.zeros_like(u))
    return e0 + frac.clamp(0.0, 1.0) * (e1 - e0)
