"""Pivotal sampling (EfficientNeRF, Hu et al. CVPR 2022): fine samples only around the coarse
samples that matter.

A coarse sample whose compositing weight exceeds a threshold (1e-4 in the paper) is a *pivot*.
Each pivot at t gets N_s fine samples at

    t_j = t + (j - (N_s - 1) / 2) * delta_f,   j = 0 .. N_s - 1

(centred on the pivot; for odd N_s the middle one is the pivot itself). All other coarse samples
get none, so the fine network runs only near surfaces.

Interval of each fine sample (what volume rendering integrates over): [t_j - delta_f / 2,
t_j + delta_f / 2]; where it overlaps the next sample's interval on the same ray, both are cut
in the middle of the overlap (kept between the two t's; all are also clipped to [near, far]
when given), so intervals
never overlap even when the clusters of two pivots do. The field is evaluated at the (possibly
clipped) interval midpoint, as everywhere in turbonerf.
With the default ``delta_f=None`` the spacing is each pivot's own interval width / N_s: the
fine samples then split the pivot's coarse interval exactly into N_s equal parts, which is
what the official code's fixed grid of N_c * N_s candidate depths amounts to, works with
jittered (stratified) coarse samples, and leaves no gap between adjacent pivots.
"""

from __future__ import annotations

import torch
from torch import Tensor

from turbonerf.rays import PackedSamples


def _sort_by_ray_then_t(ray_indices: Tensor, t: Tensor) -> Tensor:
    """Permutation [S] sorting samples by ray, then by t (two stable sorts)."""
    order_t = torch.argsort(t, stable=True)
    order_r = torch.argsort(ray_indices[order_t], stable=True)
    return order_t[order_r]


def pivotal_samples(
    samples: PackedSamples,
    weights: Tensor,
    n_per_pivot: int,
    delta_f: float | Tensor | None = None,
    threshold: float = 1e-4,
    near: Tensor | None = None,
    far: Tensor | None = None,
) -> tuple[PackedSamples, Tensor]:
    """Fine samples around every coarse sample whose weight exceeds ``threshold``.

    Args:
        samples: S coarse samples (packed, sorted by ray); pivots sit at their interval midpoints.
        weights: [S] compositing weights of the coarse samples (treated as constants).
        n_per_pivot: N_s, fine samples per pivot.
        delta_f: spacing of the fine samples: a float, an [R] tensor (per ray), or None for
            "each pivot's interval width / N_s" (see the module docstring).
        threshold: a coarse sample is a pivot when weight > threshold.
        near, far: optional [R]; fine intervals are clipped to [near, far] of their ray.
    Returns:
        fine: P * N_s samples (fewer if two pivots produce an identical t), sorted by ray and
            then t, with non-overlapping intervals.
        pivots: [S] bool, which coarse samples were pivots.
    """
    pivots = weights.detach() > threshold
    t_p = samples.t_mids[pivots]
    r_p = samples.ray_indices[pivots]
    if delta_f is None:
        step = samples.deltas[pivots] / n_per_pivot
    elif isinstance(delta_f, Tensor):
        step = delta_f.to(t_p.dtype)[r_p] if delta_f.ndim > 0 else delta_f.expand_as(t_p)
    else:
        step = torch.full_like(t_p, float(delta_f))
    offsets = torch.arange(n_per_pivot, device=t_p.device, dtype=t_p.dtype) - 0.5 * (n_per_pivot - 1)
    t = (t_p[:, None] + offsets * step[:, None]).reshape(-1)
    half = (0.5 * step)[:, None].expand(-1, n_per_pivot).reshape(-1)
    rays = r_p.repeat_interleave(n_per_pivot)

    # Sorted per ray (needed only when clusters overlap or pivots are unsorted); drop exact duplicates.
    order = _sort_by_ray_then_t(rays, t)
    t, half, rays = t[order], half[order], rays[order]
    if t.numel() > 1:
        dup = torch.zeros_like(rays, dtype=torch.bool)
        dup[1:] = (rays[1:] == rays[:-1]) & (t[1:] == t[:-1])
        if bool(dup.any()):
            t, half, rays = t[~dup], half[~dup], rays[~dup]

    starts, ends = t - half, t + half
    if t.numel() > 1:
        overlap = (rays[1:] == rays[:-1]) & (ends[:-1] > starts[1:])
        cut = torch.minimum(torch.maximum(0.5 * (ends[:-1] + starts[1:]), t[:-1]), t[1:])
        ends[:-1] = torch.where(overlap, cut, ends[:-1])
        starts[1:] = torch.where(overlap, cut, starts[1:])
    if near is not None:
        starts = torch.maximum(starts, near[rays].to(starts.dtype))
        ends = torch.maximum(ends, starts)
    if far is not None:
        ends = torch.minimum(ends, far[rays].to(ends.dtype))
        starts = torch.minimum(starts, ends)
    return PackedSamples(rays, starts, ends, samples.n_rays), pivots
