"""Activation-based sampling (Radl et al., "Analyzing the Internals of Neural Radiance Fields",
CVPRW 2024): read a density estimate off the early-layer activations of a trained NeRF MLP and
draw the fine samples from it, instead of running the full coarse network.

Pipeline, per ray (R rays, S uniform bins, W hidden units; all pure functions over tensors):

1. ``activation_values``: evaluate the trunk of an MLP up to layer L (a callable
   ``points [N, 3] -> ReLU activations [N, W]``) at the midpoints of S uniform bins over
   [near, far] and reduce each activation vector to one number (``reduce_activations``; the
   reference code uses the mean over the W units)                           -> [R, S]
2. optionally computed at lower resolution and brought back with ``upsample_along_ray`` /
   ``upsample_image`` (nearest neighbour, as the reference's ``--upsample``)
3. ``transform_along_ray`` ("fct"): the paper's finding is that samples of high density sit at
   *local minima* of the activations along a ray, so the reference turns the reduced values x
   into a non-negative estimate relative to the ray's own statistics:
   ``std``: relu(mean_ray(x) - std_ray(x) - x), ``std_half``: relu(mean - std/2 - x),
   ``std_half_sq``: its square (fct indices 0, 1, 2 of the reference). ``none`` uses x itself
   as the estimate (a plain "activation magnitude = density" reading, kept for comparison)
4. ``weights_from_estimate``: the estimate is treated as a density and volume-rendered into
   compositing weights w_i = T_i (1 - exp(-est_i delta_i)), then normalised to sum to 1 per ray
   (as the reference does with nerfstudio's ``get_weights``)
5. ``activation_fine_edges``: inverse-CDF samples from those weights with a uniform padding
   added to the normalised weights (nerfstudio's PDFSampler adds 0.01 per bin), merged with the
   uniform edges, exactly like the coarse-to-fine pipeline merges coarse and fine samples.

A sampler never imports a field: it receives callables.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from turbonerf.rays import RayBundle, packed_from_dense
from turbonerf.render.volrend import render_weight_from_density
from turbonerf.samplers.pdf import merge_edges, sample_from_pdf

TrunkFn = Callable[[Tensor], Tensor]

REDUCTIONS = ("mean", "std", "max", "l1")
"""ways to reduce an activation vector [W] to one number ("mean" is the reference's)"""
TRANSFORMS = ("std", "std_half", "std_half_sq", "none")
"""along-ray transforms ("fct"); the first three are the reference's indices 0, 1, 2"""


def reduce_activations(act: Tensor, how: str = "mean") -> Tensor:
    """One number per sample from its activation vector.

    Args:
        act: [N, W] activations (ReLU outputs, so >= 0).
        how: "mean" (the reference), "std" (population std over the W units), "max", or "l1"
            (sum of absolute values).
    Returns:
        [N] float32.
    """
    a = act.float()
    if how == "mean":
        return a.mean(dim=-1)
    if how == "std":
        return a.std(dim=-1, correction=0)
    if how == "max":
        return a.amax(dim=-1)
    if how == "l1":
        return a.abs().sum(dim=-1)
    raise ValueError(f"unknown activation reduction {how!r} (choose from {', '.join(REDUCTIONS)})")


def transform_along_ray(values: Tensor, fct: str = "std") -> Tensor:
    """Turn reduced activations into a non-negative density estimate, per ray.

    Args:
        values: [R, S] reduced activations at S samples along each ray.
        fct: "std": relu(mean - std - x); "std_half": relu(mean - std / 2 - x);
            "std_half_sq": relu(mean - std / 2 - x) ** 2; "none": x (clamped at 0).
            mean and std are taken over the S samples of the same ray (std with Bessel's
            correction, as torch's default in the reference).
    Returns:
        [R, S] float32 >= 0.
    """
    x = values.float()
    if fct == "none":
        return x.clamp(min=0.0)
    if fct not in TRANSFORMS:
        raise ValueError(f"unknown activation transform {fct!r} (choose from {', '.join(TRANSFORMS)})")
    mean = x.mean(dim=-1, keepdim=True)
    std = x.std(dim=-1, keepdim=True) if x.shape[-1] > 1 else torch.zeros_like(mean)
    if fct == "std":
        return torch.relu(mean - std - x)
    est = torch.relu(mean - 0.5 * std - x)
    return est * est if fct == "std_half_sq" else est


def activation_values(trunk_fn: TrunkFn, rays: RayBundle, edges: Tensor, reduce: str = "mean") -> Tensor:
    """Reduced trunk activations at the midpoints of the bins given by ``edges``.

    Args:
        trunk_fn: points [N, 3] -> activations [N, W] (e.g. an MLP's trunk up to layer L).
        rays: R rays (samples at origins + t * directions).
        edges: [R, S+1] bin edges along each ray.
        reduce: see :func:`reduce_activations`.
    Returns:
        [R, S] float32.
    """
    r, s1 = edges.shape
    t_mid = 0.5 * (edges[:, :-1] + edges[:, 1:])
    pts = rays.origins[:, None, :] + t_mid[..., None] * rays.directions[:, None, :]
    act = trunk_fn(pts.reshape(-1, 3))
    return reduce_activations(act, reduce).reshape(r, s1 - 1)


def activation_density(
    trunk_fn: TrunkFn, rays: RayBundle, edges: Tensor, fct: str = "std", reduce: str = "mean"
) -> Tensor:
    """Density estimate [R, S] >= 0 at the bins of ``edges`` [R, S+1]: reduced activations
    (:func:`activation_values`) turned into an estimate by :func:`transform_along_ray`."""
    return transform_along_ray(activation_values(trunk_fn, rays, edges, reduce), fct)


def _nearest_index(n_in: int, n_out: int, device) -> Tensor:
    """[n_out] index of the input cell whose centre is nearest to each output cell centre
    (cells tile the same interval); for n_in = ceil(n_out / 2) this is j // 2."""
    j = torch.arange(n_out, device=device, dtype=torch.float64)
    return ((j + 0.5) * n_in / n_out).floor().long().clamp(max=n_in - 1)


def upsample_along_ray(values: Tensor, n_out: int) -> Tensor:
    """Nearest-neighbour upsampling of per-bin values along each ray.

    Input bins and output bins tile the same [near, far] uniformly; each output bin takes the
    value of the input bin containing its centre (a factor 2 repeats every value twice, what
    ``torch.nn.Upsample(mode="nearest")`` does in the reference).

    Args:
        values: [R, S_in].
    Returns:
        [R, n_out].
    """
    return values[:, _nearest_index(values.shape[1], n_out, values.device)]


def upsample_image(values: Tensor, height: int, width: int, factor: int = 2) -> Tensor:
    """Nearest-neighbour upsampling of per-pixel values computed at every ``factor``-th pixel.

    Args:
        values: [h, w, ...] values of pixels (factor * i, factor * j), h = ceil(height / factor),
            w = ceil(width / factor).
    Returns:
        [height, width, ...]; pixel (v, u) gets the value of (v // factor, u // factor).
    """
    rows = torch.arange(height, device=values.device) // factor
    cols = torch.arange(width, device=values.device) // factor
    return values[rows][:, cols]


def weights_from_estimate(edges: Tensor, estimate: Tensor) -> Tensor:
    """Normalised compositing weights of a density estimate.

    The estimate is volume-rendered as if it were a density (w_i = T_i * alpha_i over the bins
    of ``edges``, so an opaque first hit hides what lies behind it) and each ray's weights are
    divided by their sum; rays whose estimate is zero everywhere get zero weights.

    Args:
        edges: [R, S+1] bin edges.
        estimate: [R, S] >= 0.
    Returns:
        [R, S] weights summing to 1 (or 0) per ray.
    """
    r, s = estimate.shape
    p = packed_from_dense(edges)
    w = render_weight_from_density(p.t_starts, p.t_ends, estimate.reshape(-1).float(), p.ray_indices, r)[0].reshape(r, s)
    w = torch.nan_to_num(w, nan=0.0)
    return w / w.sum(dim=-1, keepdim=True).clamp(min=1e-12)


def activation_fine_edges(
    edges: Tensor, estimate: Tensor, n_fine: int, padding: float = 0.01, deterministic: bool = True
) -> Tensor:
    """Fine intervals drawn from an activation density estimate.

    Args:
        edges: [R, S+1] the uniform bins at which the estimate was taken.
        estimate: [R, S] density estimate >= 0 (e.g. from :func:`activation_density`).
        n_fine: N, positions drawn per ray by inverse CDF.
        padding: added to every bin of the normalised weights before sampling (a floor that
            keeps some samples spread along the ray when the estimate is wrong; nerfstudio's
            PDFSampler, used by the reference, adds 0.01).
        deterministic: evenly spaced quantiles (evaluation) instead of random ones.
    Returns:
        [R, S+N+1] sorted edges: the union of ``edges`` and the N drawn positions.
    """
    w = weights_from_estimate(edges, estimate)
    t = sample_from_pdf(edges, w, n_fine, deterministic=deterministic, eps=padding)
    return merge_edges(edges, t)
