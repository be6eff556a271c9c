"""Chunked inference: render whole images from any method's ``render(rays, background)``."""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from turbonerf.cameras import Cameras
from turbonerf.rays import PackedSamples, RayBundle, image_ray_bundle
from turbonerf.render.volrend import accumulate_along_rays, render_weight_from_density

RenderFn = Callable[[RayBundle, Tensor], dict[str, Tensor]]
"""(rays, background [3]) -> {rgb [R, 3], depth [R], opacity [R]}"""
FieldFn = Callable[[Tensor, Tensor], "tuple[Tensor, Tensor]"]
"""(points [N, 3], unit directions [N, 3]) -> (sigma [N], rgb [N, 3])"""


def eval_in_chunks(fn: Callable[..., tuple[Tensor, ...]], *inputs: Tensor, chunk: int = 1 << 18) -> tuple[Tensor, ...]:
    """``fn(*inputs)`` evaluated on slices of ``chunk`` rows and concatenated, bounding peak memory
    when a field is queried at millions of points without gradients. All inputs share dim 0."""
    n = inputs[0].shape[0]
    if n <= chunk:
        return fn(*inputs)
    parts = [fn(*(x[i : i + chunk] for x in inputs)) for i in range(0, n, chunk)]
    return tuple(torch.cat(p, dim=0) for p in zip(*parts))


@torch.no_grad()
def render_rays_chunked(render_fn: RenderFn, rays: RayBundle, background: Tensor, chunk: int) -> dict[str, Tensor]:
    """Call ``render_fn`` on slices of ``chunk`` rays and concatenate its outputs along dim 0."""
    parts: dict[str, list[Tensor]] = {}
    for start in range(0, len(rays), chunk):
        out = render_fn(rays[start : start + chunk], background)
        for k, v in out.items():
            parts.setdefault(k, []).append(v.float())
    return {k: torch.cat(v, dim=0) for k, v in parts.items()}


@torch.no_grad()
def render_image(
    render_fn: RenderFn,
    cameras: Cameras,
    index: int,
    near: float,
    far: float,
    ndc: bool,
    background: Tensor,
    chunk: int = 4096,
    device: torch.device | str = "cpu",
) -> dict[str, Tensor]:
    """Render camera ``index``: rgb [H, W, 3], depth [H, W], opacity [H, W] on the CPU."""
    rays = image_ray_bundle(cameras, index, near, far, ndc).to(device)
    out = render_rays_chunked(render_fn, rays, background.to(device), chunk)
    h, w = cameras.height, cameras.width
    return {
        "rgb": out["rgb"].reshape(h, w, 3).clamp(0, 1).cpu(),
        "depth": out["depth"].reshape(h, w).cpu(),
        "opacity": out["opacity"].reshape(h, w).cpu(),
    }


def render_with_early_stop(
    rays: RayBundle,
    samples: PackedSamples,
    field_fn: FieldFn,
    background: Tensor | None = None,
    early_stop_eps: float = 1e-4,
    samples_per_round: int = 1 << 17,
    min_per_ray: int = 4,
) -> tuple[dict[str, Tensor], int]:
    """Inference compositing that stops evaluating a ray once its transmittance is below
    ``early_stop_eps`` (the compacting renderer of ngp_pl, over packed samples).

    Rounds: every ray still alive contributes its next m samples (m = samples_per_round /
    alive rays, at least ``min_per_ray``), the field is evaluated on them in one batch, colour,
    depth and transmittance are accumulated, and rays whose transmittance fell below the
    threshold, or whose samples are used up, leave the alive set. As rays die, m grows.

    Args:
        rays: the R rays the samples belong to.
        samples: packed samples sorted by ray (e.g. from :meth:`OccupancyGrid.march`).
        field_fn: (points, dirs) -> (sigma [N], rgb [N, 3]).
        background: [3] or [R, 3], or None for black.
    Returns:
        ({rgb [R, 3], depth [R], opacity [R]}, number of samples evaluated).
    """
    n_rays = samples.n_rays
    dev = rays.origins.device
    counts = torch.bincount(samples.ray_indices, minlength=n_rays)
    offsets = torch.cumsum(counts, 0) - counts
    trans = torch.ones(n_rays, device=dev)
    rgb = torch.zeros(n_rays, 3, device=dev)
    depth = torch.zeros(n_rays, device=dev)
    opacity = torch.zeros(n_rays, device=dev)
    done = torch.zeros(n_rays, dtype=torch.long, device=dev)
    alive = (counts > 0).nonzero()[:, 0]
    max_count = int(counts.max()) if n_rays else 0
    evaluated = 0
    while alive.numel() > 0:
        a = alive.numel()
        m = min(max(samples_per_round // a, min_per_ray), max_count)
        j = done[alive, None] + torch.arange(m, device=dev)  # [A, m]
        valid = j < counts[alive, None]
        rows, cols = valid.nonzero(as_tuple=True)
        idx = offsets[alive][rows] + j[rows, cols]
        ray = alive[rows]
        t_s, t_e = samples.t_starts[idx], samples.t_ends[idx]
        mids = 0.5 * (t_s + t_e)
        x = rays.origins[ray] + mids[:, None] * rays.directions[ray]
        sigma, col = field_fn(x, rays.viewdirs[ray])
        sigma, col = sigma.float(), col.float()
        evaluated += idx.numel()
        w, _, _ = render_weight_from_density(t_s, t_e, sigma, rows, a)
        w = w * trans[ray]
        rgb.index_add_(0, ray, w[:, None] * col)
        depth.index_add_(0, ray, w * mids)
        opacity.index_add_(0, ray, w)
        optical = accumulate_along_rays(sigma * (t_e - t_s), None, rows, a)[:, 0]
        trans[alive] = trans[alive] * torch.exp(-optical)
        done[alive] += m
        alive = alive[(trans[alive] > early_stop_eps) & (done[alive] < counts[alive])]
    if background is not None:
        rgb = rgb + (1.0 - opacity)[:, None] * background
    return {"rgb": rgb, "depth": depth, "opacity": opacity}, evaluated
