"""Chunked inference: render whole images from any method's ``render(rays, background)``."""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from turbonerf.cameras import Cameras
from turbonerf.rays import RayBundle, image_ray_bundle

RenderFn = Callable[[RayBundle, Tensor], dict[str, Tensor]]


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
