"""Mip-NeRF's integrated positional encoding (Barron et al. 2021, google/mipnerf ``internal/mip.py``).

A sample of Mip-NeRF is not a point but the conical frustum a pixel's cone sweeps between two
distances t0 < t1 along its ray. :func:`conical_frustum_to_gaussian` approximates the frustum by
a Gaussian (its mean and the diagonal of its covariance, with the numerically stable closed
forms of the paper), and :func:`integrated_pos_enc` is the expected value of the NeRF encoding
sin / cos(2^l x) under that Gaussian: for z ~ N(mu, var), E[sin z] = sin(mu) exp(-var / 2), so

    IPE(mu, Sigma) = [sin(2^l mu) * exp(-4^l diag(Sigma) / 2), cos(2^l mu) * exp(-4^l diag(Sigma) / 2)]

for l = min_deg .. max_deg - 1 (the official code: 0 .. 15), every coordinate, frequencies
without a factor pi and without the input itself appended. High frequencies whose period is
smaller than the frustum fade to zero instead of aliasing.

Where nerfstudio differs (its ``NeRFEncoding.forward(x, covs)`` and ``expected_sin``, used by its
Mip-NeRF and by the reference code of Radl et al.): it multiplies the input by 2 pi before the
frequencies but scales the variance by freq^2 only, not (2 pi freq)^2, so its high frequencies
are attenuated (2 pi)^2 ~ 39x less than the Gaussian implies; its frequencies are
2^linspace(min, max, n) (for 0, 16, 16 steps of 16/15 octave, not 2^0..2^15); it takes the full
3x3 covariance and keeps its diagonal (the same values as the diagonal formula here); it
appends the input (include_input); and its frustum radius is sqrt(pixel area / pi), not the
official pixel footprint * 2 / sqrt(12) that :attr:`turbonerf.rays.RayBundle.radii` carries.
This module follows the official code.
"""

from __future__ import annotations

import torch
from torch import Tensor


def frustum_moments(t0: Tensor, t1: Tensor, radius: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Moments of a conical frustum of a cone with apex at t = 0 and radius ``radius`` * t,
    between t0 and t1, in the stable form of Mip-NeRF (mu = (t0 + t1) / 2, hw = (t1 - t0) / 2).

    Args:
        t0, t1: [...] interval ends (t1 >= t0 > 0 for a true cone).
        radius: broadcastable to t0, the cone's radius per unit of t.
    Returns:
        t_mean [...] (mean distance along the axis), t_var [...] (variance along the axis),
        r_var [...] (variance of each of the two perpendicular coordinates).
    """
    mu = 0.5 * (t0 + t1)
    hw = 0.5 * (t1 - t0)
    mu2, hw2 = mu * mu, hw * hw
    den = 3.0 * mu2 + hw2
    t_mean = mu + 2.0 * mu * hw2 / den
    t_var = hw2 / 3.0 - (4.0 / 15.0) * (hw2 * hw2 * (12.0 * mu2 - hw2)) / (den * den)
    r_var = radius * radius * (mu2 / 4.0 + (5.0 / 12.0) * hw2 - (4.0 / 15.0) * hw2 * hw2 / den)
    return t_mean, t_var, r_var


def lift_gaussian(origins: Tensor, directions: Tensor, t_mean: Tensor, t_var: Tensor, r_var: Tensor) -> tuple[Tensor, Tensor]:
    """A Gaussian given along rays, in world coordinates (the official ``lift_gaussian``, diagonal):
    mean o + t_mean d, covariance t_var d d^T + r_var (I - d d^T / |d|^2), of which only the
    diagonal is returned.

    Args:
        origins, directions: [R, 3] (directions need not be unit).
        t_mean, t_var, r_var: [R, S].
    Returns:
        means [R, S, 3], cov_diag [R, S, 3].
    """
    d = directions[:, None, :]
    d2 = d * d
    null_diag = 1.0 - d2 / d2.sum(dim=-1, keepdim=True).clamp(min=1e-10)
    means = origins[:, None, :] + d * t_mean[..., None]
    cov_diag = t_var[..., None] * d2 + r_var[..., None] * null_diag
    return means, cov_diag


def conical_frustum_to_gaussian(
    origins: Tensor, directions: Tensor, radii: Tensor, t0: Tensor, t1: Tensor
) -> tuple[Tensor, Tensor]:
    """Gaussian (mean, diagonal covariance) of the frustums [t0, t1] of R cones (apex at the
    origin, radius ``radii`` * t): :func:`frustum_moments` lifted by :func:`lift_gaussian`.

    Args:
        origins, directions: [R, 3] cone apexes and axes (need not be unit).
        radii: [R] cone radius per unit of t.
        t0, t1: [R, S] interval ends of S frustums per cone.
    Returns:
        means [R, S, 3], cov_diag [R, S, 3].
    """
    return lift_gaussian(origins, directions, *frustum_moments(t0, t1, radii[:, None]))


def cylinder_to_gaussian(
    origins: Tensor, directions: Tensor, radii: Tensor, t0: Tensor, t1: Tensor
) -> tuple[Tensor, Tensor]:
    """Like :func:`conical_frustum_to_gaussian` for cylinders of constant radius ``radii`` [R]
    (the official ``ray_shape='cylinder'``, its LLFF setting): t_mean = (t0 + t1) / 2,
    t_var = (t1 - t0)^2 / 12, r_var = radius^2 / 4."""
    r_var = (radii * radii / 4.0)[:, None].expand_as(t0)
    return lift_gaussian(origins, directions, 0.5 * (t0 + t1), (t1 - t0) ** 2 / 12.0, r_var)


def ipe_dim(min_deg: int = 0, max_deg: int = 16, in_dim: int = 3) -> int:
    """Width of :func:`integrated_pos_enc`'s output: 2 * in_dim * (max_deg - min_deg)."""
    return 2 * in_dim * (max_deg - min_deg)


def integrated_pos_enc(means: Tensor, cov_diag: Tensor, min_deg: int = 0, max_deg: int = 16) -> Tensor:
    """Expected sin / cos encoding of Gaussians with diagonal covariance.

    Layout as the official code: [sin of (l, coordinate) for l in min_deg..max_deg-1, then cos of
    the same], (l, coordinate) flattened with the coordinate varying fastest.

    Args:
        means: [..., D]; cov_diag: [..., D] variances.
    Returns:
        [..., 2 * D * (max_deg - min_deg)].
    """
    scales = 2.0 ** torch.arange(min_deg, max_deg, device=means.device, dtype=means.dtype)
    y = (means[..., None, :] * scales[:, None]).flatten(-2)
    y_var = (cov_diag[..., None, :] * (scales * scales)[:, None]).flatten(-2)
    damp = torch.exp(-0.5 * y_var)
    return torch.cat([torch.sin(y) * damp, torch.cos(y) * damp], dim=-1)
