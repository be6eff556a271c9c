"""``turbonerf eval --sampler activation`` / ``--sweep``: a coarse-to-fine run rendered once per
sampler configuration (its own coarse pass, ``base``, and activation-based sampling), scored and
timed stage by stage into ``RUN/eval/stats.json`` (the pieces: :mod:`turbonerf.eval.activation_eval`).

``stats.json`` has the layout of the reference code (nerfinternals): one top-level entry per
configuration, keyed ``base`` or ``layer_LL_ups_U_fct_NAME``::

    {"layer_00_ups_0_fct_std": {"t": seconds per image,
                                "metrics": {"psnr", "ssim", "lpips",
                                            "quantitative": {"t_act", "t_coarse", "t_fine"}},
                                "diagnostics": {...}}, ...}

``diagnostics`` holds what turbonerf adds (the configuration's fields, lpips_vgg, t_other,
per-image totals, speed-up against base, network evaluations per ray, the estimate's agreement
with the fine network, per-image rows). The run's metadata (method, step, split, image size,
device, skipped configurations, ...) goes to ``stats_meta.json`` beside it, so that every
top-level key of stats.json is a configuration.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import torch
from tqdm.auto import tqdm

from turbonerf.app.evaluate import EvalOptions, check_eval_options, device_name, eval_images
from turbonerf.app.runs import RunLock, renderer_for_run
from turbonerf.engine import runtime
from turbonerf.errors import TurboNerfError
from turbonerf.eval.activation_eval import (
    BASE,
    STAGES,
    SamplerConfig,
    StageTimer,
    check_layer,
    check_supported,
    estimate_diagnostics,
    fct_name,
    evaluations_per_ray,
    format_table,
    make_render_fn,
    render_image_timed,
    sweep_configs,
)

__all__ = ["SweepOptions", "evaluate_sampler_configs", "format_table", "sampler_configs"]


def sampler_configs(sweep: bool, layer: int, fct: str, upsample: bool, reduce: str, net: str) -> list[SamplerConfig]:
    """``base`` plus either every reference configuration (``sweep``) or the one asked for
    (``fct``: a transform's name or the reference's code 0, 1, 2)."""
    if sweep:
        return sweep_configs(reduce=reduce, net=net)
    return [BASE, SamplerConfig("activation", layer, fct_name(fct), upsample, reduce, net)]
from turbonerf.eval.lpips import LpipsScorer
from turbonerf.eval.scores import image_scores, mean_scores
from turbonerf.io.files import atomic_write_text
from turbonerf.io.media import save_png
from turbonerf.rays import image_ray_bundle


def _mean(values: list) -> float | None:
    vals = [v for v in values if v is not None]
    return sum(vals) / len(vals) if vals and len(vals) == len(values) else None


@dataclass
class SweepOptions:
    """How the sampler configurations are compared (beyond which images: :class:`EvalOptions`)."""

    padding: float = 0.01
    """uniform padding of the normalised weights before inverse-CDF sampling"""
    save_images: bool = False
    diagnostics: bool = True
    drop_missing_layers: bool = False
    out_name: str = "eval"


def evaluate_sampler_configs(
    run_dir: Path, configs: Sequence[SamplerConfig], opts: EvalOptions | None = None, sweep: SweepOptions | None = None
) -> tuple[dict, dict]:
    """:func:`sweep_run` with the run folder locked (it writes RUN/eval/stats.json)."""
    with RunLock(Path(run_dir), "eval --sweep"):
        return sweep_run(run_dir, configs, opts, sweep)


def sweep_run(
    run_dir: Path, configs: Sequence[SamplerConfig], opts: EvalOptions | None = None, sweep: SweepOptions | None = None
) -> tuple[dict, dict]:
    """Render ``split`` of a coarse-to-fine run once per configuration, score it and time it; write
    ``RUN/<out_name>/stats.json`` and ``stats_meta.json`` and return their contents (stats, meta).

    ``drop_missing_layers``: leave out (and list under ``skipped``) configurations reading a
    layer the network does not have, instead of failing (for sweeps over small networks).

    Every image is rendered with all configurations in turn (so load on a shared machine hits
    them alike), after one untimed warm-up render of each configuration on a small chunk.
    With ``diagnostics``, each configuration's density estimate is also compared with the fine
    network along the rays of the first image (:func:`estimate_diagnostics`, untimed).

    stats.json (see the module docstring): {key: {t (mean seconds per image), metrics: {psnr,
    ssim, lpips (means), quantitative: {t_act, t_coarse, t_fine} (means)}, diagnostics: {the
    config's fields, lpips_vgg, t_other (mean), totals (sums over images of t and the stages),
    speedup_vs_base (base t / t), evals_per_ray, estimate_vs_fine (or None), per_image: [...]}}}.
    """
    opts, sweep = opts or EvalOptions(), sweep or SweepOptions()
    check_eval_options(opts)
    split, bf16, progress, padding, save_images = opts.split, opts.bf16, opts.progress, sweep.padding, sweep.save_images
    chunk = opts.chunk or 4096
    run_dir = Path(run_dir)
    dev = runtime.resolve_device(opts.device)
    runtime.configure(dev, bf16=bf16)
    renderer = renderer_for_run(run_dir, dev)
    model, spec, meta = renderer.model, renderer.spec, renderer.meta
    check_supported(model, spec.method)
    configs = list(dict.fromkeys(configs))  # drop duplicates, keep order
    skipped = []
    if sweep.drop_missing_layers:
        depth = {net: model.trunk_depth(net) for net in ("coarse", "fine")}
        skipped = [c.key for c in configs if c.sampler == "activation" and c.layer >= depth[c.net]]
        configs = [c for c in configs if c.key not in skipped]
    if not configs:
        raise TurboNerfError("no sampler configuration to evaluate")
    for cfg in configs:
        check_layer(model, cfg)
    scene, data, indices = eval_images(spec.scene.data, opts.downscale or spec.scene.downscale, opts)
    out_dir = run_dir / sweep.out_name
    out_dir.mkdir(parents=True, exist_ok=True)
    lpips = LpipsScorer()

    def render(cfg: SamplerConfig, i: int):
        with runtime.autocast(dev, bf16):
            return render_image_timed(
                model, cfg, data.cameras, i, scene.near, scene.far, scene.ndc, scene.background,
                chunk=chunk, device=dev, padding=padding,
            )

    # warm-up: one full chunk per configuration, untimed (lazy initialisation, and the allocator
    # growing to chunk-sized buffers: without it the first configuration measured pays ~2x)
    warm = image_ray_bundle(data.cameras, indices[0], scene.near, scene.far, scene.ndc)[:chunk]
    with torch.no_grad(), runtime.autocast(dev, bf16):
        for cfg in configs:
            fn = make_render_fn(model, SamplerConfig(**{**asdict(cfg), "upsample": False}), StageTimer(dev), padding)
            fn(warm.to(dev), scene.background.to(dev))

    diag = {}
    if sweep.diagnostics:
        with runtime.autocast(dev, bf16):
            for cfg in configs:
                diag[cfg.key] = estimate_diagnostics(
                    model, cfg, data.cameras, indices[0], scene.near, scene.far, scene.ndc, chunk=chunk, device=dev
                )

    per: dict[str, list[dict]] = {cfg.key: [] for cfg in configs}
    bar = tqdm(total=len(indices) * len(configs), desc=f"samplers {split}", disable=not progress, unit="render")
    for i in indices:
        target = data.images[i].float() / 255.0
        name = Path(data.paths[i]).stem
        for cfg in configs:
            out, times = render(cfg, i)
            if save_images:
                save_png(out_dir / "samplers" / cfg.key / f"{name}.png", out["rgb"])
            scores = image_scores(out["rgb"], target, lpips, vgg=opts.lpips_vgg)
            per[cfg.key].append({"name": name, **scores, **times})
            bar.update(1)
    bar.close()

    stats = {}
    timing = ("t", *STAGES, "t_other")
    for cfg in configs:
        rows = per[cfg.key]
        scores = mean_scores(rows)
        times = {k: _mean([r[k] for r in rows]) for k in timing}
        stats[cfg.key] = {
            "t": times["t"],
            "metrics": {
                "psnr": scores["psnr"],
                "ssim": scores["ssim"],
                "lpips": scores["lpips"],
                "quantitative": {k: times[k] for k in STAGES},
            },
            "diagnostics": {
                **asdict(cfg),
                **{k: v for k, v in scores.items() if k not in ("psnr", "ssim", "lpips")},
                "t_other": times["t_other"],
                "totals": {k: sum(r[k] for r in rows) for k in timing},
                "speedup_vs_base": None,
                "evals_per_ray": evaluations_per_ray(model, cfg),
                "estimate_vs_fine": diag.get(cfg.key),
                "per_image": rows,
            },
        }
    if "base" in stats:
        base_t = stats["base"]["t"]
        for e in stats.values():
            e["diagnostics"]["speedup_vs_base"] = base_t / e["t"] if e["t"] > 0 else math.nan
    meta = {
        "method": spec.method,
        "run": str(run_dir),
        "step": meta.get("step"),
        "split": split,
        "n_images": len(indices),
        "width": data.cameras.width,
        "height": data.cameras.height,
        "device": device_name(dev),
        "bf16": bf16,
        "chunk": chunk,
        "pdf_padding": padding,
        "lpips_reason": lpips.reason,
        "skipped": skipped,
        "configs": list(stats),
    }
    atomic_write_text(out_dir / "stats.json", json.dumps(stats, indent=2))
    atomic_write_text(out_dir / "stats_meta.json", json.dumps(meta, indent=2))
    return stats, meta


