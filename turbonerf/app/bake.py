"""``turbonerf bake``: bake a trained run into a NerfTree file (rendering it is
:func:`turbonerf.app.runs.renderer_for_run` with ``baked=True``).

With several processes (``--nproc N`` or torchrun) the stages of :func:`turbonerf.bake.nerftree.bake`
are shared out (:func:`bake_share`): the coarse occupancy test by x-slices (dealt out in groups,
so every process gets some of the scene's middle) and combined with a MAX all-reduce; the fine
pass by consecutive runs of the tile-ordered cells, split at the fine pass's batch boundaries, so
every batch is the one a single process evaluates; rank 0 receives the other parts, joins them in
order (the same tree as one process bakes), prunes, fine-tunes and writes the file.

A bounded tree is then fine-tuned on the training pixels (:mod:`turbonerf.bake.finetune`, for
``--finetune-seconds``), on rank 0 alone.

A method whose baking field lives in contracted space (``Method.baking_inner_box()``: an
unbounded Instant-NGP) is baked over [-2, 2]^3 (the visibility test maps its cells
back to the world; Instant-NGP's candidates also come from its occupancy grid, which the
training frusta carved when training started), at :data:`CONTRACTED_COARSE_RES` and a lower density threshold
(:data:`CONTRACTED_THRESHOLD_DIVISOR`) unless told otherwise; the tree records the inner box
(:mod:`turbonerf.bake.nerftree`)."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from turbonerf.bake.fields import baking_fields, fibonacci_directions, viewing_directions
from turbonerf.app.runs import RunLock, default_tree_path, load_trained
from turbonerf.bake.nerftree import (
    CONTRACTED_BOX, BakedBlocks, BakeShare, NerfTree, bake, density_threshold_for, inner_voxel_size, save_tree,
)
from turbonerf.bake.finetune import FinetuneConfig, finetune_tree, training_rays
from turbonerf.bake.prune import block_max_weights, blocks_to_keep, prune_blocks
from turbonerf.bake.render import default_step
from turbonerf.data.formats import load_scene
from turbonerf.engine import runtime
from turbonerf.engine.distributed import WORK_TIMEOUT_S, Replicas, device_for_rank, joined
from turbonerf.errors import TurboNerfError

BOUNDED_COARSE_RES = 128
"""default D_c of a bounded scene's tree. Fine-tuned (:data:`FINETUNE_SECONDS`), a lego Instant-NGP
tree at D_c = 128 scores 0.13 dB below its model, is 220 MB, bakes in under a minute and renders
1.4x faster than at 192 (fewer, larger voxels per ray); at 192 it matches the model at 3x the
size (BENCHMARKS.md, "fine-tuned trees")"""
CONTRACTED_COARSE_RES = 128
"""default D_c of a contracted tree: over [-2, 2]^3, so the inner box gets 64 cells (256 fine voxels)
per axis. On the fern capture (5-minute Instant-NGP) it scored 0.36 dB below D_c = 192 at a third
of the storage (0.52 against 1.66 GB) and bake memory (2.3 against 4.4 GB); BENCHMARKS.md"""
CONTRACTED_THRESHOLD_DIVISOR = 2.0
"""a contracted tree's default density threshold is the bounded one (opacity 0.01 per fine voxel,
here of the inner box) divided by this. A few-minute model of a real capture is a thin medium
spread over depth: on the fern capture the bounded rule at D_c = 192 dropped 48% of the model's
compositing weight (15.2 dB against the model's 21.9); thresholds 2-10x lower lost none
(BENCHMARKS.md, "a baked real capture")"""
DIRECTIONS = ("views", "sphere")
"""choices of BakeOptions.directions"""
SLICE_GROUP = 4
"""x-slices of the coarse grid dealt to one process at a time in a shared occupancy test"""
FINETUNE_SECONDS = 30.0
"""default time cap of a bounded tree's fine-tuning (the search for the training rays comes on top;
8 passes over the rays usually end it first: 20-29 s for a lego tree at D_c = 128 on 2 cores)"""


@dataclass
class BakeOptions:
    """Options of ``turbonerf bake`` (see its ``--help``)."""

    out: Path | None = None
    """tree file (default RUN/baked/nerftree.safetensors)"""
    coarse_res: int | None = None
    """D_c (default: 192; :data:`CONTRACTED_COARSE_RES` for a field of contracted space)"""
    fine_res: int = 4
    sh_degree: int = 3
    overwrite: bool = False
    device: str = "auto"
    threshold: float | None = None
    visibility: bool = True
    n_dirs: int = 16
    directions: str = "views"
    """where colours are fitted: "views" (the training views' cone when narrower than a
    hemisphere, else the sphere) or "sphere" """
    batch: int = 1 << 16
    bf16: bool = False
    dtype: str = "float16"
    prune_weight: float = 0.0
    prune_stride: int = 2
    prune_dilate: int = 2
    finetune_seconds: float = FINETUNE_SECONDS
    """fine-tune the tree on the training pixels for at most this long (0: off; :mod:`turbonerf.bake.finetune`)"""
    finetune_epochs: float = 8.0
    """... and at most this many passes over the training rays"""
    progress: bool = True


def bake_run(run_dir: Path, opts: BakeOptions | None = None, replicas: Replicas | None = None) -> tuple[Path, NerfTree | None, dict]:
    """Bake the latest checkpoint of ``run_dir`` into a NerfTree file.

    Visibility culling uses the run's training cameras (not for NDC scenes, whose box already is
    the reference frustum). With ``prune_weight`` > 0 the tree is then pruned to the blocks in
    which some sample of the training rays (every ``prune_stride``-th pixel) gets a compositing
    weight of at least ``prune_weight`` (:mod:`turbonerf.bake.prune`). Returns (path, tree, info)
    where info holds the bake time and settings (also stored in the file's header); on ranks
    other than 0 of a shared bake, (path, None, {}).

    ``replicas``: the processes sharing the bake (default: those torchrun or ``--nproc`` started,
    or this one alone).
    """
    o = opts or BakeOptions()
    out = Path(o.out) if o.out else default_tree_path(run_dir)
    if out.exists() and not o.overwrite:  # every rank checks, before any waits for another
        raise TurboNerfError("NerfTree file exists (use --overwrite to replace it)", out)
    dev = runtime.resolve_device(o.device)
    with joined(dev, replicas, WORK_TIMEOUT_S) as replicas:
        dev = device_for_rank(dev, replicas)
        if not replicas.is_main:  # rank 0 holds the run's lock for all
            replicas.barrier()
            return _bake_locked(run_dir, out, o, dev, replicas)
        with RunLock(Path(run_dir), "bake"):
            replicas.barrier()
            return _bake_locked(run_dir, out, o, dev, replicas)


def _bake_locked(run_dir: Path, out: Path, o: BakeOptions, dev: torch.device, replicas: Replicas) -> tuple[Path, NerfTree | None, dict]:
    bf16, progress = o.bf16, o.progress and replicas.is_main
    visibility, prune_weight = o.visibility, o.prune_weight
    runtime.configure(dev, bf16=bf16)
    if o.directions not in DIRECTIONS:
        raise TurboNerfError(f"unknown --directions '{o.directions}' (choose from {', '.join(DIRECTIONS)})")
    model, spec, meta = load_trained(Path(run_dir), dev)
    scene = None
    if (visibility and not spec.scene.ndc) or prune_weight > 0 or o.directions == "views":
        scene = load_scene(spec.scene.data, downscale=spec.scene.downscale, splits=("train",))
    if o.directions == "views":
        dirs, cap = viewing_directions(scene.split("train").cameras, o.n_dirs)
    else:
        dirs, cap = fibonacci_directions(o.n_dirs), math.pi
    fields = baking_fields(model, o.sh_degree, o.n_dirs, directions=dirs)
    cameras = scene.split("train").cameras if (visibility and not spec.scene.ndc) else None
    inner_box = model.baking_inner_box()
    aabb, threshold, coarse_res = spec.scene.aabb, o.threshold, o.coarse_res or BOUNDED_COARSE_RES
    if inner_box is not None:  # a field of contracted space: bake [-2, 2]^3 (module docstring)
        if prune_weight > 0:
            raise TurboNerfError("--prune-weight is not supported for unbounded (contracted) scenes yet")
        aabb, coarse_res = CONTRACTED_BOX, o.coarse_res or CONTRACTED_COARSE_RES
        inner_box = inner_box.cpu().numpy()
        if threshold is None:  # from the fine voxel's size inside the inner box, in world units
            voxel = inner_voxel_size(inner_box, coarse_res, o.fine_res)
            threshold = density_threshold_for(0.01, voxel) / CONTRACTED_THRESHOLD_DIVISOR
    t0 = time.perf_counter()
    with torch.no_grad(), runtime.autocast(dev, bf16):
        tree = bake(
            fields, aabb, coarse_res, o.fine_res, cameras=cameras, threshold=threshold, batch=o.batch,
            device=dev, dtype=o.dtype, progress=progress, share=bake_share(replicas), inner_box=inner_box,
        )
    if tree is None:
        return out, None, {}
    blocks_before_pruning = tree.n_blocks
    if prune_weight > 0:
        tree = prune_with_training_rays(tree, scene, prune_weight, o.prune_stride, o.prune_dilate, progress)
    tuned = {}
    if o.finetune_seconds > 0 and inner_box is None:  # contracted trees march with cone steps the fine-tuner does not take
        if scene is None:
            scene = load_scene(spec.scene.data, downscale=spec.scene.downscale, splits=("train",))
        step = default_step(tree, scene.ndc)
        rays = training_rays(tree, scene, step, progress)
        cfg = FinetuneConfig(seconds=o.finetune_seconds, max_epochs=o.finetune_epochs)
        tree, tuned = finetune_tree(tree, rays, scene.background, step, cfg, progress, in_place=True)  # the tree is this bake's own
    seconds = time.perf_counter() - t0
    info = {
        "run": str(run_dir),
        "method": spec.method,
        "step": meta.get("step"),
        "bake_seconds": seconds,
        "device": str(dev),
        "processes": replicas.world_size,
        "colour": fields.description,
        "colour_directions": o.directions,
        "colour_cap_degrees": math.degrees(cap),
        "visibility_culling": cameras is not None,
        "contracted": inner_box is not None,
        "bf16": bf16,
        "ndc": spec.scene.ndc,
        "prune_weight": prune_weight,
        "prune_dilate": o.prune_dilate,
        "blocks_before_pruning": blocks_before_pruning,
        **tuned,
    }
    save_tree(out, tree, info)
    info["storage_mb"] = out.stat().st_size / 2**20
    info["n_blocks"] = tree.n_blocks
    info["occupied_fraction"] = tree.occupied_fraction()
    return out, tree, info


def bake_share(replicas: Replicas) -> BakeShare:
    """The :class:`BakeShare` of ``replicas``: x-slices in groups of ``SLICE_GROUP`` dealt in turn,
    occupancy combined with a MAX all-reduce, consecutive runs of cells, the parts sent to rank 0."""

    def slices(coarse_res: int) -> np.ndarray:
        return (np.arange(coarse_res) // SLICE_GROUP) % replicas.world_size == replicas.rank

    def combine(occ: np.ndarray) -> np.ndarray:
        return replicas.maximum(torch.from_numpy(occ)).numpy()

    def join(part: BakedBlocks) -> list[BakedBlocks] | None:
        gathered = [replicas.gather_to_main(torch.from_numpy(a)) for a in (part.cells, part.density, part.sh)]
        return [BakedBlocks(*(t.numpy() for t in ts)) for ts in zip(*gathered)] if replicas.is_main else None

    return BakeShare(slices=slices, combine=combine, span=replicas.span, join=join)


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
