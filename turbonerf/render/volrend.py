"""Volume rendering as pure functions over packed samples.

All functions take samples sorted by ray (``ray_indices`` non-decreasing), so the same code
serves 192 samples per ray and 3 valid samples per ray. Notation: S samples, R rays.
"""

from __future__ import annotations

import torch
from torch import Tensor


def ray_offsets(ray_indices: Tensor, n_rays: int) -> Tensor:
    """[R] index of each ray's first sample in the packed arrays (rays without samples: their end)."""
    counts = torch.bincount(ray_indices, minlength=n_rays)
    return torch.cumsum(counts, 0) - counts


def exclusive_sum_along_rays(values: Tensor, ray_indices: Tensor, n_rays: int) -> Tensor:
    """Per-ray exclusive prefix sum of ``values`` [S]: sum of the earlier samples of the same ray.

    Accumulates in float64 so that long packed arrays do not lose precision.
    """
    if values.numel() == 0:
        return values
    v64 = values.double()
    excl = torch.cumsum(v64, 0) - v64
    start = ray_offsets(ray_indices, n_rays)[ray_indices]
    return (excl - excl[start]).to(values.dtype)


def render_transmittance_from_density(
    t_starts: Tensor, t_ends: Tensor, sigmas: Tensor, ray_indices: Tensor, n_rays: int
) -> tuple[Tensor, Tensor]:
    """Transmittance T_i = exp(-sum_{j<i} sigma_j delta_j) and alpha_i = 1 - exp(-sigma_i delta_i).

    Args:
        t_starts, t_ends, sigmas: [S].
    Returns:
        trans, alphas: [S].
    """
    sigma_delta = sigmas * (t_ends - t_starts)
    trans = torch.exp(-exclusive_sum_along_rays(sigma_delta, ray_indices, n_rays))
    alphas = 1.0 - torch.exp(-sigma_delta)
    return trans, alphas


def render_weight_from_density(
    t_starts: Tensor, t_ends: Tensor, sigmas: Tensor, ray_indices: Tensor, n_rays: int
) -> tuple[Tensor, Tensor, Tensor]:
    """Compositing weights w_i = T_i * alpha_i.

    Args:
        t_starts, t_ends, sigmas: [S].
    Returns:
        weights, trans, alphas: [S].
    """
    trans, alphas = render_transmittance_from_density(t_starts, t_ends, sigmas, ray_indices, n_rays)
    return trans * alphas, trans, alphas


def accumulate_along_rays(weights: Tensor, values: Tensor | None, ray_indices: Tensor, n_rays: int) -> Tensor:
    """Sum of weights * values per ray.

    Args:
        weights: [S].
        values: [S, C], or None to accumulate the weights themselves.
    Returns:
        [R, C] (or [R, 1] when ``values`` is None).
    """
    src = weights[:, None] if values is None else weights[:, None] * values
    out = torch.zeros((n_rays, src.shape[1]), dtype=src.dtype, device=src.device)
    return out.index_add(0, ray_indices, src)


def composite(
    t_starts: Tensor,
    t_ends: Tensor,
    sigmas: Tensor,
    rgbs: Tensor,
    ray_indices: Tensor,
    n_rays: int,
    background: Tensor | None = None,
) -> dict[str, Tensor]:
    """Render colour, expected depth and opacity per ray.

    Args:
        t_starts, t_ends, sigmas: [S]; rgbs: [S, 3].
        background: [3] or [R, 3] colour behind the scene, or None for black.
    Returns:
        dict with rgb [R, 3], depth [R], opacity [R], weights [S].
    """
    weights, _, _ = render_weight_from_density(t_starts, t_ends, sigmas, ray_indices, n_rays)
    opacity = accumulate_along_rays(weights, None, ray_indices, n_rays)[:, 0]
    rgb = accumulate_along_rays(weights, rgbs, ray_indices, n_rays)
    t_mids = 0.5 * (t_starts + t_ends)
    depth = accumulate_along_rays(weights, t_mids[:, None], ray_indices, n_rays)[:, 0]
    if background is not None:
        rgb = rgb + (1.0 - opacity)[:, None] * background
    return {"rgb": rgb, "depth": depth, "opacity": opacity, "weights": weights}


def render_weight_dense(t_edges: Tensor, sigmas: Tensor) -> Tensor:
    """Compositing weights w_i = T_i * alpha_i when every ray has the same S samples.

    Args:
        t_edges: [R, S+1] interval edges; sigmas: [R, S] densities.
    Returns:
        weights: [R, S].
    """
    sigma_delta = sigmas * (t_edges[:, 1:] - t_edges[:, :-1])
    before = torch.cumsum(sigma_delta, dim=-1) - sigma_delta
    return torch.exp(-before) * (1.0 - torch.exp(-sigma_delta))
