"""Evaluate a coarse-to-fine NeRF with activation-based sampling (Radl et al., CVPRW 2024) against
its own coarse-to-fine pipeline, with render time split into stages.

Configurations (keys as in the reference code's ``stats.json``):

- ``base``: the method's coarse-to-fine pipeline (its n_coarse first-pass bins,
  ``CoarseToFine.initial_edges``, through the whole coarse network, then the fine level on the
  bins the method derives from the coarse weights, ``CoarseToFine.fine_edges``: vanilla NeRF the
  union with n_fine inverse-CDF samples, Mip-NeRF n_fine blur-pooled resampled bins, nerfacto
  the second proposal network and its draw of the field's samples), reproduced stage by stage.
- ``layer_{L:02d}_ups_{0|1}_fct_{name}``: the coarse network is evaluated only up to trunk layer
  L at the n_coarse first-pass bins (on the method's own trunk input: points for vanilla NeRF,
  the IPE of the frustums for Mip-NeRF, whose two levels share one MLP, the hash encoding of the
  points for nerfacto's first proposal network), its ReLU activations
  reduced to a density estimate (:mod:`turbonerf.samplers.activation`), whose normalised
  compositing weights go through the same ``fine_edges`` (with the sweep's padding): the same
  fine-pass size as ``base``.
  ``ups_1``: the activation pass runs at every second pixel in both image directions and at
  n_coarse // 2 samples per ray (8x fewer points), nearest-upsampled back. A suffix
  ``_red_{how}`` marks a reduction other than the reference's mean over the hidden units, and
  ``_net_fine`` an estimate read from the fine MLP's trunk instead of the coarse one.

Timing contract (per image, seconds, ``time.perf_counter``; CUDA is synchronised at every stage
boundary): ``t`` is the wall time of the whole image render, from ray generation to the
assembled [H, W] outputs. Inside it, three disjoint stage timers accumulate over chunks:

- ``t_act``: first-pass bins, the partial trunk, reductions, upsampling, transform -> estimate;
- ``t_coarse``: first-pass bins, the whole coarse network, compositing weights (0 for activation configs);
- ``t_fine``: weights -> resampled bins (nerfacto: and its second proposal network) -> fine
  network -> compositing.

``t_other = t - (t_act + t_coarse + t_fine) >= 0`` is everything outside the stages (ray
generation, slicing into chunks, concatenating and reshaping outputs), so the four add up to
``t`` exactly and the stage sum never exceeds ``t``.
"""

from __future__ import annotations

import math
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch
from torch import Tensor

from turbonerf.cameras import Cameras
from turbonerf.errors import TurboNerfError
from turbonerf.methods.base import CoarseToFine
from turbonerf.rays import RayBundle, image_ray_bundle
from turbonerf.render.renderer import RenderFn, render_rays_chunked
from turbonerf.samplers.activation import (
    REDUCTIONS,
    TRANSFORMS,
    reduce_activations,
    transform_along_ray,
    upsample_along_ray,
    upsample_image,
    weights_from_estimate,
)

REFERENCE_FCTS = ("std", "std_half", "std_half_sq")
"""the reference's along-ray transforms, in its index order 0, 1, 2"""
SWEEP_LAYERS = (0, 1, 2)


def fct_name(fct: str) -> str:
    """An along-ray transform by name or by the reference code's integer code ("0", "1", "2":
    std, std_half, std_half_sq, as in nerfinternals' ``--fct 0``) -> its name."""
    text = str(fct).strip()
    if text.isdigit():
        if int(text) < len(REFERENCE_FCTS):
            return REFERENCE_FCTS[int(text)]
        raise TurboNerfError(f"unknown --fct {text}: the reference's codes are 0, 1, 2 ({', '.join(REFERENCE_FCTS)})")
    if text not in TRANSFORMS:
        raise TurboNerfError(f"unknown --fct '{text}' (choose from {', '.join(TRANSFORMS)}, or the codes 0, 1, 2)")
    return text
STAGES = ("t_act", "t_coarse", "t_fine")

EFFICIENT_NERF_REASON = (
    "activation-based sampling does not apply to efficient-nerf: it replaces a coarse NeRF MLP whose "
    "compositing weights drive inverse-CDF sampling, but efficient-nerf places its fine samples around "
    "pivots found on grid-filtered (valid) samples, and it can already skip its small coarse MLP at render "
    "time by taking pivot weights from its density grid (--set pivots_from_grid=true), which costs a grid "
    "lookup instead of a 256-wide layer; the reference's per-ray mean/std transform also needs dense uniform "
    "samples, not the varying valid samples per ray"
)


@dataclass(frozen=True)
class SamplerConfig:
    """One way of placing the fine samples.

    Attributes:
        sampler: "default" (the method's coarse-to-fine pipeline, key ``base``) or "activation".
        layer: trunk layer (0-based) whose ReLU activations are read.
        fct: along-ray transform (:data:`turbonerf.samplers.activation.TRANSFORMS`).
        upsample: run the activation pass at half resolution in x, y and along the ray.
        reduce: reduction over the hidden units (the reference: "mean").
        net: "coarse" (the reference code) or "fine": which MLP's trunk is read.
    """

    sampler: str = "default"
    layer: int = 0
    fct: str = "std"
    upsample: bool = False
    reduce: str = "mean"
    net: str = "coarse"

    def __post_init__(self):
        if self.sampler not in ("default", "activation"):
            raise TurboNerfError(f"unknown sampler '{self.sampler}' (choose default or activation)")
        if self.fct not in TRANSFORMS:
            raise TurboNerfError(f"unknown --fct '{self.fct}' (choose from {', '.join(TRANSFORMS)})")
        if self.reduce not in REDUCTIONS:
            raise TurboNerfError(f"unknown --reduce '{self.reduce}' (choose from {', '.join(REDUCTIONS)})")
        if self.net not in ("coarse", "fine"):
            raise TurboNerfError(f"unknown --act-net '{self.net}' (choose coarse or fine)")
        if self.layer < 0:
            raise TurboNerfError(f"--layer must be >= 0, got {self.layer}")

    @property
    def key(self) -> str:
        if self.sampler == "default":
            return "base"
        key = f"layer_{self.layer:02d}_ups_{int(self.upsample)}_fct_{self.fct}"
        if self.reduce != "mean":
            key += f"_red_{self.reduce}"
        if self.net != "coarse":
            key += f"_net_{self.net}"
        return key


BASE = SamplerConfig()


def sweep_configs(
    layers: Sequence[int] = SWEEP_LAYERS,
    fcts: Sequence[str] = REFERENCE_FCTS,
    upsample: Sequence[bool] = (False, True),
    reduce: str = "mean",
    net: str = "coarse",
) -> list[SamplerConfig]:
    """``base`` followed by every activation configuration of layers x fcts x upsample."""
    acts = [SamplerConfig("activation", l, f, u, reduce, net) for l in layers for f in fcts for u in upsample]
    return [BASE, *acts]


def check_supported(model: torch.nn.Module, method: str) -> None:
    """TurboNerfError unless ``model`` is a coarse-to-fine NeRF (:class:`CoarseToFine`)."""
    if method == "efficient-nerf":
        raise TurboNerfError(EFFICIENT_NERF_REASON)
    if not isinstance(model, CoarseToFine):
        raise TurboNerfError(
            f"activation-based sampling needs a NeRF whose later samples come from a first pass's weights "
            f"(vanilla-nerf, mip-nerf, nerfacto); method '{method}' has no such pass"
        )


def check_layer(model: torch.nn.Module, config: SamplerConfig) -> None:
    """TurboNerfError when ``config.layer`` is not a trunk layer of the network it reads."""
    if config.sampler == "activation":
        depth = model.trunk_depth(config.net)
        if config.layer >= depth:
            raise TurboNerfError(f"--layer {config.layer} does not exist: the {config.net} MLP has {depth} trunk layers (0..{depth - 1})")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class StageTimer:
    """Accumulates seconds per render stage (see the module docstring for what each covers)."""

    device: torch.device
    t_act: float = 0.0
    t_coarse: float = 0.0
    t_fine: float = 0.0

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Add the wall time of the ``with`` body to ``name`` (one of :data:`STAGES`)."""
        _sync(self.device)
        t0 = time.perf_counter()
        try:
            yield
        finally:
            _sync(self.device)
            setattr(self, name, getattr(self, name) + time.perf_counter() - t0)

    def totals(self) -> dict[str, float]:
        return {k: getattr(self, k) for k in STAGES}


def _outputs(res: dict[str, Tensor]) -> dict[str, Tensor]:
    return {"rgb": res["rgb"], "depth": res["depth"], "opacity": res["opacity"]}


def render_rays_base(model: CoarseToFine, rays: RayBundle, background: Tensor, timer: StageTimer) -> dict[str, Tensor]:
    """The method's own coarse-to-fine render at evaluation (its stages, no jitter,
    deterministic quantiles), with t_coarse and t_fine timed."""
    with timer.stage("t_coarse"):
        edges, w, _ = model.coarse_stage(rays, background, train=False)
    with timer.stage("t_fine"):
        fine = model.fine_stage(rays, background, model.fine_edges(rays, edges, w, train=False), train=False)
    return _outputs(fine)


def activation_values_for(model, config: SamplerConfig, rays: RayBundle, n_samples: int) -> Tensor:
    """[R, n_samples] reduced activations of ``config.net``'s trunk layer ``config.layer`` at
    the method's n_samples first-pass bins (``initial_edges``; the method's own trunk input for a bin:
    its midpoint for vanilla NeRF, its frustum's IPE for Mip-NeRF)."""
    edges = model.initial_edges(rays, n_samples)
    act = model.trunk_activations(rays, edges, config.layer, config.net)
    return reduce_activations(act, config.reduce).reshape(len(rays), n_samples)


def render_rays_from_estimate(
    model, rays: RayBundle, estimate: Tensor, background: Tensor, timer: StageTimer, padding: float = 0.01
) -> dict[str, Tensor]:
    """Fine pass (timed as t_fine) on the bins the method derives from its n_coarse first-pass
    bins and the normalised compositing weights of a density estimate [R, n_coarse], with
    ``padding`` as the weight floor (vanilla NeRF: the uniform bins plus n_fine inverse-CDF
    samples, exactly :func:`~turbonerf.samplers.activation.activation_fine_edges`; Mip-NeRF:
    blur-pool and n_fine + 1 resampled edges; nerfacto: the second proposal network's bins drawn
    from them, that network, the field's bins)."""
    with timer.stage("t_fine"):
        edges = model.initial_edges(rays)
        w = weights_from_estimate(edges, estimate)
        fine = model.fine_stage(rays, background, model.fine_edges(rays, edges, w, train=False, padding=padding), train=False)
    return _outputs(fine)


def make_render_fn(model, config: SamplerConfig, timer: StageTimer, padding: float = 0.01) -> RenderFn:
    """A ``(rays, background) -> {rgb, depth, opacity}`` function for ``config`` whose stages
    accumulate into ``timer``. Spatial upsampling needs the whole image: use
    :func:`render_image_timed` for ``config.upsample``."""
    if config.sampler == "default":
        return lambda rays, background: render_rays_base(model, rays, background, timer)
    if config.upsample:
        raise ValueError("upsampled activation configurations need the whole image: use render_image_timed")
    n = model.n_coarse

    def render_fn(rays: RayBundle, background: Tensor) -> dict[str, Tensor]:
        with timer.stage("t_act"):
            est = transform_along_ray(activation_values_for(model, config, rays, n), config.fct)
        return render_rays_from_estimate(model, rays, est, background, timer, padding)

    return render_fn


def _upsampled_estimate(model, config: SamplerConfig, rays: RayBundle, height: int, width: int, chunk: int) -> Tensor:
    """[H * W, n_coarse] estimate from an activation pass at every second pixel (both image
    directions) and n_coarse // 2 samples per ray, nearest-upsampled (the reference's --upsample)."""
    n = model.n_coarse
    n_half = max(1, n // 2)
    rows = torch.arange(0, height, 2, device=rays.origins.device)
    cols = torch.arange(0, width, 2, device=rays.origins.device)
    sub = rays[(rows[:, None] * width + cols[None, :]).reshape(-1)]
    vals = torch.cat([activation_values_for(model, config, sub[i : i + chunk], n_half) for i in range(0, len(sub), chunk)])
    vals = upsample_image(vals.reshape(len(rows), len(cols), n_half), height, width).reshape(height * width, n_half)
    return transform_along_ray(upsample_along_ray(vals, n), config.fct)


@torch.no_grad()
def render_image_timed(
    model,
    config: SamplerConfig,
    cameras: Cameras,
    index: int,
    near: float,
    far: float,
    ndc: bool,
    background: Tensor,
    chunk: int = 4096,
    device: torch.device | str = "cpu",
    padding: float = 0.01,
) -> tuple[dict[str, Tensor], dict[str, float]]:
    """Render camera ``index`` with ``config``.

    Returns:
        outputs rgb [H, W, 3] (clamped to [0, 1]), depth [H, W], opacity [H, W] on the CPU;
        times {t, t_act, t_coarse, t_fine, t_other} in seconds (see the module docstring).
    """
    device = torch.device(device)
    timer = StageTimer(device)
    h, w = cameras.height, cameras.width
    _sync(device)
    t0 = time.perf_counter()
    rays = image_ray_bundle(cameras, index, near, far, ndc).to(device)
    bg = background.to(device)
    if config.sampler == "activation" and config.upsample:
        with timer.stage("t_act"):
            est = _upsampled_estimate(model, config, rays, h, w, chunk)
        parts = [
            render_rays_from_estimate(model, rays[i : i + chunk], est[i : i + chunk], bg, timer, padding)
            for i in range(0, len(rays), chunk)
        ]
        out = {k: torch.cat([p[k].float() for p in parts]) for k in ("rgb", "depth", "opacity")}
    else:
        out = render_rays_chunked(make_render_fn(model, config, timer, padding), rays, bg, chunk)
    result = {
        "rgb": out["rgb"].reshape(h, w, 3).clamp(0, 1).cpu(),
        "depth": out["depth"].reshape(h, w).cpu(),
        "opacity": out["opacity"].reshape(h, w).cpu(),
    }
    _sync(device)
    times = {"t": time.perf_counter() - t0, **timer.totals()}
    times["t_other"] = times["t"] - sum(timer.totals().values())
    return result, times


def evaluations_per_ray(model, config: SamplerConfig) -> dict[str, float]:
    """Network evaluations per rendered ray: ``act`` points through ``act_layers`` trunk layers,
    ``coarse`` and ``fine`` points through the whole MLP (the upsampled pass evaluates one ray in
    four at half the samples). The fine pass is what the method's own render spends after its
    coarse pass: n_coarse + n_fine for vanilla NeRF (the union), n_fine for Mip-NeRF."""
    n_coarse = model.n_coarse
    fine = float(model.samples_per_ray() - n_coarse)
    if config.sampler == "default":
        return {"act": 0.0, "act_layers": 0, "coarse": float(n_coarse), "fine": fine}
    act = (max(1, n_coarse // 2) / 4.0) if config.upsample else float(n_coarse)
    return {"act": act, "act_layers": config.layer + 1, "coarse": 0.0, "fine": fine}


def _ranks(x: Tensor) -> Tensor:
    """[R, S] -> per-row ranks 0..S-1, ties sharing their average rank."""
    less = (x[:, None, :] < x[:, :, None]).sum(-1).float()
    equal = (x[:, None, :] == x[:, :, None]).sum(-1).float()
    return less + 0.5 * (equal - 1.0)


def _row_pearson(a: Tensor, b: Tensor) -> Tensor:
    """[R, S] x [R, S] -> [R] Pearson correlation per row (0 where a row is constant)."""
    a = a - a.mean(-1, keepdim=True)
    b = b - b.mean(-1, keepdim=True)
    den = a.norm(dim=-1) * b.norm(dim=-1)
    return torch.where(den > 0, (a * b).sum(-1) / den.clamp(min=1e-30), torch.zeros_like(den))


@torch.no_grad()
def estimate_diagnostics(
    model,
    config: SamplerConfig,
    cameras: Cameras,
    index: int,
    near: float,
    far: float,
    ndc: bool,
    chunk: int = 4096,
    device: torch.device | str = "cpu",
    max_rays: int = 2048,
    min_opacity: float = 0.5,
) -> dict[str, float | int]:
    """How well a configuration's density estimate matches the fine network, along the rays of
    camera ``index`` that hit something.

    The estimate is the one the sampler uses (for ``base``: the coarse network's density) at the
    n_coarse uniform bins; the truth is the fine network's density at the same bin midpoints.
    Rays: every k-th pixel (at most ``max_rays``) whose fine opacity over the bins exceeds
    ``min_opacity``.

    Returns:
        n_rays: rays scored; pearson, spearman: per-ray correlation of estimate and fine
        density, averaged over rays (Spearman with tied ranks averaged); pdf_overlap: mean over
        rays of sum_i min(w_est_i, w_fine_i), the overlap of the normalised weight
        distributions (1: identical, no padding included); pdf_overlap_uniform: the same for
        uniform weights, the floor any useful estimate must beat.
    """
    device = torch.device(device)
    n = model.n_coarse
    h, w = cameras.height, cameras.width
    rays = image_ray_bundle(cameras, index, near, far, ndc).to(device)
    stride = max(1, math.ceil(h * w / max_rays))
    pick = torch.arange(0, h * w, stride, device=device)
    sub = rays[pick]
    edges = model.initial_edges(sub, n)
    truth = model.bin_density(sub, edges, "fine").float()
    if config.sampler == "default":
        est = model.bin_density(sub, edges, "coarse").float()
    elif config.upsample:
        est = _upsampled_estimate(model, config, rays, h, w, chunk)[pick]
    else:
        est = transform_along_ray(activation_values_for(model, config, sub, n), config.fct)
    opacity = 1.0 - torch.exp(-(truth * (edges[:, 1:] - edges[:, :-1])).sum(-1))
    hit = opacity > min_opacity
    truth, est, edges = truth[hit], est[hit].float(), edges[hit]
    if not bool(hit.any()):
        return {"n_rays": 0, "pearson": None, "spearman": None, "pdf_overlap": None, "pdf_overlap_uniform": None}
    w_true = weights_from_estimate(edges, truth)
    w_est = weights_from_estimate(edges, est)
    deltas = edges[:, 1:] - edges[:, :-1]
    w_uni = deltas / deltas.sum(-1, keepdim=True)
    return {
        "n_rays": int(hit.sum()),
        "pearson": float(_row_pearson(est, truth).mean()),
        "spearman": float(_row_pearson(_ranks(est), _ranks(truth)).mean()),
        "pdf_overlap": float(torch.minimum(w_est, w_true).sum(-1).mean()),
        "pdf_overlap_uniform": float(torch.minimum(w_uni, w_true).sum(-1).mean()),
    }


def format_table(stats: dict) -> str:
    """A markdown table of a stats.json (one top-level entry per configuration, see
    :mod:`turbonerf.app.sweep`): configuration, time per image with its split, quality, speed-up
    against ``base``."""
    lines = [
        "| configuration | t / image [s] | t_act | t_coarse | t_fine | t_other | PSNR | SSIM | LPIPS | speed-up vs base |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]

    def f(v, fmt):
        return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, fmt)

    for key, e in stats.items():
        m, q, d = e["metrics"], e["metrics"]["quantitative"], e.get("diagnostics", {})
        lines.append(
            f"| {key} | {f(e['t'], '.3f')} | {f(q['t_act'], '.3f')} | {f(q['t_coarse'], '.3f')} | {f(q['t_fine'], '.3f')} "
            f"| {f(d.get('t_other'), '.3f')} | {f(m['psnr'], '.2f')} | {f(m['ssim'], '.4f')} | {f(m['lpips'], '.4f')} "
            f"| {f(d.get('speedup_vs_base'), '.2f')}x |"
        )
    return "\n".join(lines)
