"""Regularisers of proposal-sampled NeRFs (Mip-NeRF 360, nerfstudio's nerfacto), as pure functions
over dense per-ray intervals: every ray has the same number of samples.

Notation: R rays; a level's intervals are given by edges [R, S+1] (non-decreasing, usually the
normalised "s" coordinates in [0, 1]) and weights [R, S].
"""

from __future__ import annotations

import torch
from torch import Tensor

OUTER_EPS = 1e-7
"""added to the NeRF's weights in the denominator of the interlevel loss"""


def outer_weights(edges: Tensor, proposal_edges: Tensor, proposal_weights: Tensor) -> Tensor:
    """For each interval of ``edges`` [R, S+1], the summed proposal weight of every proposal
    interval that overlaps it (the "outer measure" of Mip-NeRF 360).

    Args:
        edges: [R, S+1]; proposal_edges: [R, P+1]; proposal_weights: [R, P].
    Returns:
        [R, S].
    """
    p = proposal_weights.shape[-1]
    csum = torch.cat([torch.zeros_like(proposal_weights[:, :1]), torch.cumsum(proposal_weights, dim=-1)], dim=-1)
    starts, ends = edges[:, :-1].contiguous(), edges[:, 1:].contiguous()
    # first proposal interval whose end lies beyond the start; last one whose start lies before the end
    lo = torch.searchsorted(proposal_edges[:, 1:].contiguous(), starts, right=True).clamp(0, p)
    hi = torch.searchsorted(proposal_edges[:, :-1].contiguous(), ends, right=False).clamp(0, p)
    return (csum.gather(1, hi) - csum.gather(1, lo)).clamp(min=0.0)


def interlevel_loss(edges: Tensor, weights: Tensor, proposal_edges: list[Tensor], proposal_weights: list[Tensor]) -> Tensor:
    """Proposal loss: each proposal level's weights must bound the NeRF's from above,
    sum over levels of mean(max(w - outer, 0)^2 / (w + eps)) (mean over rays and samples, as
    nerfstudio). The NeRF's edges and weights are detached: only the proposals learn from it.

    Args:
        edges: [R, S+1], weights: [R, S] of the NeRF; proposal_edges[k]: [R, P_k+1],
            proposal_weights[k]: [R, P_k].
    Returns:
        scalar.
    """
    e, w = edges.detach(), weights.detach()
    loss = w.new_zeros(())
    for pe, pw in zip(proposal_edges, proposal_weights):
        outer = outer_weights(e, pe.detach(), pw)
        loss = loss + torch.mean((w - outer).clamp(min=0.0) ** 2 / (w + OUTER_EPS))
    return loss


def distortion_loss(edges: Tensor, weights: Tensor) -> Tensor:
    """Mip-NeRF 360's distortion loss, mean over rays of
    sum_ij w_i w_j |m_i - m_j| + 1/3 sum_i w_i^2 (e_{i+1} - e_i), m the interval midpoints,
    computed in O(S) with prefix sums.

    Args:
        edges: [R, S+1], weights: [R, S].
    Returns:
        scalar.
    """
    mids = 0.5 * (edges[:, 1:] + edges[:, :-1])
    widths = edges[:, 1:] - edges[:, :-1]
    wm = weights * mids
    w_before = torch.cumsum(weights, dim=-1) - weights
    wm_before = torch.cumsum(wm, dim=-1) - wm
    inter = 2.0 * (weights * (mids * w_before - wm_before)).sum(dim=-1)
    intra = (weights**2 * widths).sum(dim=-1) / 3.0
    return torch.mean(inter + intra)
