"""Baking a trained run and evaluating / rendering its tree: what ``turbonerf bake``,
``turbonerf eval --baked`` and ``turbonerf render --baked`` call."""

from __future__ import annotations

import time
from pathlib import Path

import torch

from turbonerf.bake.fields import baking_fields
from turbonerf.bake.nerftree import NerfTree, bake, load_tree, read_tree_header, save_tree
from turbonerf.bake.prune import block_max_weights, blocks_to_keep, prune_blocks
from turbonerf.bake.render import TreeRenderer, default_step
from turbonerf.engine import runtime
from turbonerf.engine.run import load_trained, read_run_spec
from turbonerf.errors import TurboNerfError

DEFAULT_TREE = Path("baked") / "nerftree.safetensors"
"""where ``turbonerf bake`` puts the tree of a run, relative to the run folder"""


def default_tree_path(run_dir: Path) -> Path:
    return Path(run_dir) / DEFAULT_TREE


def bake_run(
    run_dir: Path,
    out: Path | None = None,
    coarse_res: int = 384,
    fine_res: int = 4,
    sh_degree: int = 3,
    overwrite: bool = False,
    device: str = "auto",
    threshold: float | None = None,
    visibility: bool = True,
    n_dirs: int = 32,
    batch: int = 1 << 16,
    bf16: bool = True,
    dtype: str = "float16",
    prune_weight: float = 0.0,
    prune_stride: int = 2,
    prune_dilate: int = 2,
    progress: bool = True,
) -> tuple[Path, NerfTree, dict]:
    """Bake the latest checkpoint of ``run_dir`` into a NerfTree file.

    Visibility culling uses the run's training cameras (not for NDC scenes, whose box already is
    the reference frustum). With ``prune_weight`` > 0 the tree is then pruned to the blocks in
    which some sample of the training rays (every ``prune_stride``-th pixel) gets a compositing
    weight of at least ``prune_weight`` (:mod:`turbonerf.bake.prune`). Returns (path, tree, info)
    where info holds the bake time and settings (also stored in the file's header).
    """
    out = Path(out) if out else default_tree_path(run_dir)
    if out.exists() and not overwrite:
        raise TurboNerfError("NerfTree file exists (use --overwrite to replace it)", out)
    dev = runtime.resolve_device(device)
    runtime.configure(dev)
    model, spec, meta = load_trained(Path(run_dir), dev)
    fields = baking_fields(model, sh_degree, n_dirs)
    scene = None
    if (visibility and not spec.scene.ndc) or prune_weight > 0:
        from turbonerf.data.scene import load_scene

        scene = load_scene(spec.scene.data, downscale=spec.scene.downscale, splits=("train",))
    cameras = scene.split("train").cameras if (visibility and not spec.scene.ndc) else None
    t0 = time.perf_counter()
    with torch.no_grad(), runtime.autocast(dev, bf16):
        tree = bake(
            fields, spec.scene.aabb, coarse_res, fine_res, cameras, threshold, batch, dev, dtype, progress=progress
        )
    blocks_before_pruning = tree.n_blocks
    if prune_weight > 0:
        tree = prune_with_training_rays(tree, scene, prune_weight, prune_stride, prune_dilate, progress)
    seconds = time.perf_counter() - t0
    info = {
        "run": str(run_dir),
        "method": spec.method,
        "step": meta.get("step"),
        "bake_seconds": seconds,
        "device": str(dev),
        "colour": fields.description,
        "visibility_culling": cameras is not None,
        "bf16": bf16,
        "ndc": spec.scene.ndc,
        "prune_weight": prune_weight,
        "prune_dilate": prune_dilate,
        "blocks_before_pruning": blocks_before_pruning,
    }
    save_tree(out, tree, info)
    info["storage_mb"] = out.stat().st_size / 2**20
    info["n_blocks"] = tree.n_blocks
    info["occupied_fraction"] = tree.occupied_fraction()
    return out, tree, info


def prune_with_training_rays(
    tree: NerfTree, scene, prune_weight: float, stride: int = 2, dilate: int = 2, progress: bool = True
) -> NerfTree:
    """``tree`` without the blocks in which no sample of the training rays of ``scene`` (every
    ``stride``-th pixel) gets a compositing weight of at least ``prune_weight``, except those
    within ``dilate`` coarse cells of a kept block (:func:`turbonerf.bake.prune.blocks_to_keep`)."""
    weights = training_ray_weights(tree, scene, stride, progress)
    return prune_blocks(tree, blocks_to_keep(tree, weights, prune_weight, dilate))


def training_ray_weights(tree: NerfTree, scene, stride: int = 2, progress: bool = True):
    """float32 [M]: each block's largest compositing weight over the training rays of ``scene``
    (every ``stride``-th pixel), marched with the renderer's default step."""
    cams = scene.split("train").cameras
    return block_max_weights(tree, cams, scene.near, scene.far, default_step(tree, scene.ndc), scene.ndc, stride, progress=progress)


def tree_renderer_for_run(
    run_dir: Path,
    tree_path: Path | None = None,
    device: str = "auto",
    backend: str = "auto",
    lookup: str = "nearest",
    step_scale: float = 1.0,
    threads: int | None = None,
) -> tuple[TreeRenderer, Path]:
    """A renderer for the run's baked tree (default ``RUN/baked/nerftree.safetensors``) that
    marches ``step_scale`` times the default step (:func:`default_step`, one fine voxel)."""
    path = Path(tree_path) if tree_path else default_tree_path(run_dir)
    if not step_scale > 0:
        raise TurboNerfError(f"step scale must be positive, got {step_scale}")
    spec = read_run_spec(Path(run_dir))
    tree = load_tree(path)
    step = default_step(tree, spec.scene.ndc) * step_scale
    return TreeRenderer(tree, backend, runtime.resolve_device(device), lookup, step, threads=threads), path


def evaluate_baked(
    run_dir: Path,
    tree_path: Path | None = None,
    backend: str = "auto",
    lookup: str = "nearest",
    step_scale: float = 1.0,
    device: str = "auto",
    chunk: int = 1 << 20,
    out_name: str = "eval_baked",
    split: str = "test",
    limit: int | None = None,
    every: int = 1,
    downscale: int | None = None,
    progress: bool = True,
) -> dict:
    """``evaluate_run`` with the baked tree as the renderer: writes ``RUN/<out_name>/results.json``
    with ``renderer`` (e.g. "nerftree-numba"), ``storage_mb`` (the tree file, MiB) and the tree's
    mean samples per ray."""
    from turbonerf.eval.evaluate import evaluate_run

    renderer, path = tree_renderer_for_run(run_dir, tree_path, device, backend, lookup, step_scale)
    header = read_tree_header(path)

    def extra() -> dict:
        return {
            "renderer": renderer.name,
            "storage_mb": path.stat().st_size / 2**20,
            "samples_per_ray": renderer.samples_per_ray(),
            "params": None,
            "flops_per_ray": None,
            "tree": str(path),
            "tree_coarse_res": header["coarse_res"],
            "tree_fine_res": header["fine_res"],
            "tree_sh_degree": header["sh_degree"],
            "tree_blocks": header["n_blocks"],
            "march_step": renderer.step,
            "march_step_scale": step_scale,
            "lookup": lookup,
            "bake_seconds": header.get("info", {}).get("bake_seconds"),
        }

    return evaluate_run(
        run_dir, split, limit, every, downscale, device, chunk, progress=progress,
        out_name=out_name, render_fn=renderer, extra_results=extra,
    )
