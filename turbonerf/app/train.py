"""``turbonerf train``: a method on a scene folder into a run folder, through the one training
loop (:mod:`turbonerf.engine.loop`) with random rays from the training images as batches."""

from __future__ import annotations

import math
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from turbonerf.data.formats import load_scene
from turbonerf.data.multiscene import MultiSceneSet, load_scenes, object_boxes
from turbonerf.data.scene import Scene
from turbonerf.engine import runtime
from turbonerf.app.runs import (
    CHECKPOINT,
    RUN_FILE,
    RunLock,
    RunSpec,
    SceneMeta,
    build_model,
    check_out_folder,
    prepare_run_dir,
    read_run_spec,
    write_run_spec,
)
from turbonerf.app.validate import require_positive
from turbonerf.app.view import ViewOptions, check_view_options, start_live_viewer
from turbonerf.engine.checkpoint import clean_orphans
from turbonerf.engine.distributed import Replicas, device_for_rank, joined, rank_seed
from turbonerf.engine.schedule import BudgetSchedule
from turbonerf.engine.loop import LoopOptions, LoopState, StepOutput, Trainee, TrainingInterrupted, restore_trainee, run_loop
from turbonerf.errors import TurboNerfError
from turbonerf.methods.registry import apply_overrides, config_from_dict, get_method, method_names
from turbonerf.rays import make_rays


@dataclass
class TrainOptions:
    """Options of ``turbonerf train`` (method hyper-parameters live in the method's config)."""

    method: str | None
    """None: the run's method with ``resume``, else DEFAULT_METHOD"""
    data: Path | None
    out: Path
    max_steps: int | None = None
    """None: DEFAULT_MAX_STEPS, and no step budget for the schedule"""
    max_minutes: float | None = None
    schedule: str = "method"
    """learning-rate schedule: "method" (the paper's step schedule) or "budget" (warm-up and decay
    as fractions of --max-minutes / --max-steps). Not the default: on lego it did not beat the
    step schedules at 1.5-5 minute budgets (BENCHMARKS.md, "Quality per minute")"""
    lr_final: float = BudgetSchedule.final
    """budget schedule: factor of the learning rate when the budget is spent"""
    downscale: int = 1
    seed: int = 0
    device: str = "auto"
    batch_rays: int | None = None
    """rays per step; None: the run's own on --resume (run.json), else DEFAULT_BATCH_RAYS"""
    checkpoint_every: int = 1000
    checkpoint_minutes: float = 5.0
    resume: bool = False
    overwrite: bool = False
    overrides: list[str] = field(default_factory=list)
    bf16: bool = False
    precrop_steps: int | None = None
    """steps that draw rays from the central ``precrop_fraction`` of each image; None: the method's
    own (:meth:`turbonerf.methods.base.Method.precrop_steps`)"""
    precrop_fraction: float = 0.5
    progress: bool = True
    log_every: int = 10
    snapshot_minutes: list[float] = field(default_factory=list)
    """also keep ``checkpoints/snapshot_<M>min.safetensors`` when training time passes M minutes"""
    viewer: ViewOptions | None = None
    """serve the live web viewer while training (``--viewer``); None: no viewer"""


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    seconds: float
    last_psnr: float
    main: bool = True
    """False in the processes other than rank 0 of a data-parallel run (which print nothing)"""


DEFAULT_METHOD = "vanilla-nerf"
DEFAULT_MAX_STEPS = 200_000
SCHEDULES = ("method", "budget")

__all__ = ["TrainOptions", "TrainResult", "TrainingInterrupted", "available_methods", "sample_pixels", "train"]


def available_methods() -> list[str]:
    """The registered method names (``turbonerf methods``)."""
    return method_names()


def sample_pixels(
    n_images: int, height: int, width: int, n: int, crop: float, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """n random (image, column, row) triples; ``crop`` < 1 keeps to the central fraction."""
    img = torch.randint(0, n_images, (n,), generator=generator)
    if crop < 1.0:
        dh, dw = int(height * crop / 2), int(width * crop / 2)
        v = torch.randint(height // 2 - dh, height // 2 + dh, (n,), generator=generator)
        u = torch.randint(width // 2 - dw, width // 2 + dw, (n,), generator=generator)
    else:
        v = torch.randint(0, height, (n,), generator=generator)
        u = torch.randint(0, width, (n,), generator=generator)
    return img, u, v


def setup_spec(opts: TrainOptions, scene: Scene) -> RunSpec:
    cfg_cls, model_cls = get_method(opts.method)
    if model_cls.image_space:
        raise TurboNerfError(f"{opts.method} is an image-space student: distil it from a trained run "
                             f"(turbonerf distill --teacher RUN --student {opts.method} --out RUN2)")
    config = model_cls.config_for_scene(apply_overrides(cfg_cls(), opts.overrides), scene)
    return RunSpec(method=opts.method, config=asdict(config), scene=SceneMeta.from_scene(scene, opts.downscale), seed=opts.seed)


def check_train_options(opts: TrainOptions) -> None:
    """A one-line error for any option that cannot work, before anything is read or written."""
    if opts.max_steps is not None:
        require_positive("--max-steps", opts.max_steps)
    if opts.schedule not in SCHEDULES:
        raise TurboNerfError(f"unknown --schedule '{opts.schedule}' (choose from {', '.join(SCHEDULES)})")
    if not 0.0 < opts.lr_final <= 1.0:
        raise TurboNerfError(f"--lr-final must be in (0, 1], got {opts.lr_final}")
    if opts.max_minutes is not None:
        require_positive("--max-minutes", opts.max_minutes)
    if opts.batch_rays is not None:
        require_positive("--batch-rays", opts.batch_rays)
    require_positive("--downscale", opts.downscale)
    require_positive("--checkpoint-every", opts.checkpoint_every)
    require_positive("log_every", opts.log_every)
    if not opts.resume and opts.data is None:
        raise TurboNerfError("--data is required (unless --resume)")
    if opts.viewer is not None:
        check_view_options(opts.viewer)


MIN_IMAGE_SIDE = 8
DEFAULT_BATCH_RAYS = 1024


def batch_rays_for(opts: TrainOptions, resumed: RunSpec | None) -> int:
    """Rays per step: ``--batch-rays`` when given; on --resume the run's own (what its last
    session used, from run.json), so a resumed run goes on as it was trained; else 1024."""
    if opts.batch_rays is not None:
        return opts.batch_rays
    if resumed is not None:
        recorded = resumed.training.get("batch_rays")
        if isinstance(recorded, int) and recorded > 0:
            return recorded
    return DEFAULT_BATCH_RAYS


def train(opts: TrainOptions, replicas: Replicas | None = None) -> TrainResult:
    """Train ``opts.method`` on ``opts.data`` into the run folder ``opts.out``.

    Nothing is written until every option, the scene and the method's config have been checked;
    the run folder is locked while training (:class:`RunLock`).

    Started by ``torchrun`` with several processes, every rank trains its own batches of
    ``batch_rays`` rays and the gradients are averaged (:mod:`turbonerf.engine.distributed`);
    rank 0 alone writes the run folder. ``replicas``: the processes that train this model together
    (default: those torchrun or ``--nproc`` started; ``Replicas()`` trains alone even inside a
    sharded command, as a bench cell does)."""
    check_train_options(opts)
    device = runtime.resolve_device(opts.device)
    with joined(device, replicas) as replicas:
        return _train(opts, device_for_rank(device, replicas), replicas)


def _train(opts: TrainOptions, device: torch.device, replicas: Replicas) -> TrainResult:
    runtime.configure(device, bf16=opts.bf16)
    out = Path(opts.out)
    fresh = not (opts.resume and (out / RUN_FILE).is_file() and any(out.joinpath("checkpoints").glob("*.safetensors")))
    if opts.resume and not (out / RUN_FILE).is_file():
        raise TurboNerfError("nothing to resume: not a turbonerf run folder (run.json missing); start it without --resume", out)
    if opts.resume:
        spec = read_run_spec(out)
        if opts.method and opts.method != spec.method:
            raise TurboNerfError(f"run was trained with method '{spec.method}', not '{opts.method}'", out / "run.json")
        config_from_dict(spec.method, spec.config)  # validates
        data, downscale = Path(spec.scene.data), spec.scene.downscale
    else:
        method = opts.method or DEFAULT_METHOD
        cfg_cls, _ = get_method(method)
        apply_overrides(cfg_cls(), opts.overrides)  # fail on a bad option before loading data
        data, downscale = Path(opts.data), opts.downscale
        check_out_folder(out, opts.overwrite, protected=(data,))
    opts = replace(opts, batch_rays=batch_rays_for(opts, spec if opts.resume else None))
    if getattr(get_method(spec.method if opts.resume else method)[1], "multi_scene", False):
        if replicas.distributed:
            raise TurboNerfError("a multi-scene method (pixelNeRF) trains in one process: drop --nproc")
        return _train_multi_scene(opts, spec if opts.resume else None, method if not opts.resume else spec.method,
                                  data, downscale, device, out, fresh)
    scene = load_scene(data, downscale=downscale, splits=("train",))
    train_split = scene.split("train")
    if len(train_split) == 0:
        raise TurboNerfError("the train split is empty", data)
    h, w = train_split.images.shape[1:3]
    if min(h, w) < MIN_IMAGE_SIDE:
        raise TurboNerfError(f"images are only {w}x{h} at --downscale {downscale} (need at least {MIN_IMAGE_SIDE} pixels a side)", data)
    budget_schedule(opts)  # refuse an impossible schedule before anything is written
    if not opts.resume:
        spec = setup_spec(replace(opts, method=method), scene)
        try:
            build_model(spec, torch.device("cpu"))
        except (ValueError, RuntimeError, ZeroDivisionError) as e:
            raise TurboNerfError(f"the options of {method} do not make a valid model ({e})") from None
    spec = replace(spec, training=training_record(opts, replicas, device))
    replicas.barrier()  # every rank has checked the options and the folder before rank 0 writes
    if not replicas.is_main:
        replicas.barrier()  # rank 0 has prepared the run folder
        return train_locked(opts, spec, scene, train_split, device, out, opts.resume and not fresh, replicas)
    with RunLock(out, "train"):
        if not opts.resume:
            prepare_run_dir(out, opts.overwrite, protected=(data,))
        write_run_spec(out, spec)
        if opts.resume and fresh:
            print(f"note: {out} holds no checkpoint yet; training starts at step 0", file=sys.stderr)
        for orphan in clean_orphans(out / CHECKPOINT.parent):
            print(f"note: removed {orphan.name}, left by an interrupted checkpoint write", file=sys.stderr)
        replicas.barrier()
        return train_locked(opts, spec, scene, train_split, device, out, opts.resume and not fresh, replicas)


def budget_schedule(opts: TrainOptions) -> BudgetSchedule | None:
    """The budget schedule this run trains with, or None for the method's own step schedule."""
    budget_given = opts.max_minutes is not None or opts.max_steps is not None
    if opts.schedule == "method":
        return None
    if not budget_given:
        raise TurboNerfError("--schedule budget needs a budget: give --max-minutes and/or --max-steps")
    return BudgetSchedule(final=opts.lr_final)


def loop_options(opts: TrainOptions, desc: str) -> LoopOptions:
    """The training loop's budget, schedule, checkpoint and display settings of ``opts``."""
    return LoopOptions(
        max_steps=DEFAULT_MAX_STEPS if opts.max_steps is None else opts.max_steps,
        max_seconds=math.inf if opts.max_minutes is None else 60.0 * opts.max_minutes,
        schedule=budget_schedule(opts),
        checkpoint_every=opts.checkpoint_every,
        checkpoint_minutes=opts.checkpoint_minutes,
        log_every=opts.log_every,
        snapshot_minutes=list(opts.snapshot_minutes),
        bf16=opts.bf16,
        progress=opts.progress,
        desc=desc,
    )


def training_record(opts: TrainOptions, replicas: Replicas = Replicas(), device: torch.device = torch.device("cpu")) -> dict:
    """What run.json says about how the latest training session ran (``batch_rays`` per process;
    ``global_batch_rays`` over all ``processes``; ``bf16``: whether bf16 autocast was used, which
    ``--bf16`` asks for but only hardware with native bf16 gets, :func:`runtime.native_bf16`)."""
    schedule = budget_schedule(opts)
    return {
        "max_steps": opts.max_steps,
        "max_minutes": opts.max_minutes,
        "schedule": {"kind": "method"} if schedule is None else schedule.describe(),
        "batch_rays": opts.batch_rays,
        "processes": replicas.world_size,
        "global_batch_rays": opts.batch_rays * replicas.world_size,
        "bf16": runtime.bf16_used(device, opts.bf16),
    }


def train_locked(
    opts: TrainOptions, spec: RunSpec, scene, train_split, device, out: Path, resume: bool, replicas: Replicas = Replicas()
) -> TrainResult:
    """Train in ``out`` (checked, locked and holding run.json): the one training loop over random
    pixels of ``train_split``, on this process or as one rank of ``replicas``."""
    torch.manual_seed(spec.seed)  # the same on every rank: shared randomness (grid probes) stays in step
    gen = torch.Generator().manual_seed(rank_seed(spec.seed, replicas.rank))  # each rank its own rays
    model = build_model(spec, device)
    model.train()
    optimizer, lr_factor = model.make_optimizer()
    trainee = Trainee(model, optimizer, lr_factor, out / CHECKPOINT, meta=lambda: {"method": spec.method}, generator=gen)
    state = LoopState()
    if resume:
        state = restore_trainee(trainee, spec.method, device)
        if not replicas.is_main:  # the checkpoint holds rank 0's generator; any number of ranks may resume
            gen.manual_seed(rank_seed(spec.seed, replicas.rank) + state.step)
    elif not scene.ndc:
        t0 = time.perf_counter()
        prior = model.prepare_from_views(train_split.cameras, train_split.alphas)
        state.seconds = time.perf_counter() - t0  # part of the training time (and of its budget)
        if prior and opts.progress and replicas.is_main:
            print("from the training views: " + ", ".join(f"{k} {v:.3g}" for k, v in prior.items()), file=sys.stderr)

    images = train_split.images.to(device)
    cameras = train_split.cameras.to(device)
    background = scene.background.to(device)
    n_img, h, w = images.shape[0], images.shape[1], images.shape[2]

    precrop_steps = model.precrop_steps() if opts.precrop_steps is None else opts.precrop_steps

    def step_fn(step: int) -> StepOutput:
        crop = opts.precrop_fraction if (step < precrop_steps and not scene.ndc) else 1.0
        idx, u, v = sample_pixels(n_img, h, w, opts.batch_rays, crop, gen)
        rays = make_rays(cameras, idx, u, v, scene.near, scene.far, scene.ndc)
        idx, u, v = idx.to(device), u.to(device), v.to(device)
        target = images[idx, v, u].float() / 255.0
        outputs = model(rays, background, train=True)
        loss, stats = model.loss(outputs, target)
        return StepOutput(loss, outputs, {**outputs.get("stats", {}), **stats})

    loop_opts = loop_options(opts, f"train {spec.method}" + (f" x{replicas.world_size} processes" if replicas.distributed else ""))
    callbacks = list(model.callbacks())
    live = None if (opts.viewer is None or not replicas.is_main) else start_live_viewer(model, scene, spec, opts.viewer, device)
    try:
        state = run_loop(trainee, step_fn, state, loop_opts, device, out / "train_log.jsonl", callbacks + ([live] if live else []), replicas)
    finally:
        if live is not None:
            print(f"viewer: rendering took {100 * live.render_share():.1f}% of the training wall time", file=sys.stderr)
            live.viewer.stop()
    return TrainResult(out, state.step, state.seconds, state.last_psnr, replicas.is_main)


# --------------------------------------------------------------------------------------------
# multi-scene methods (pixelNeRF): batches of scenes, source views and target rays per scene
# --------------------------------------------------------------------------------------------


def sample_box_pixels(
    boxes: torch.Tensor, n: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """n random (image, column, row) triples, each inside its image's box.

    Args:
        boxes: [V, 4] int64 (row0, row1, col0, col1), half-open, non-empty (:func:`object_boxes`).
    """
    img = torch.randint(0, boxes.shape[0], (n,), generator=generator)
    b = boxes[img]
    v = b[:, 0] + (torch.rand(n, generator=generator) * (b[:, 1] - b[:, 0])).long().clamp_max(b[:, 1] - b[:, 0] - 1)
    u = b[:, 2] + (torch.rand(n, generator=generator) * (b[:, 3] - b[:, 2])).long().clamp_max(b[:, 3] - b[:, 2] - 1)
    return img, u, v


def sample_scene_batch(
    scenes: MultiSceneSet, n_scenes: int, n_sources: int, rays_per_scene: int, generator: torch.Generator,
    boxes: list[torch.Tensor] | None = None, box_share: float = 0.0,
) -> tuple[torch.Tensor, list, object, torch.Tensor]:
    """A training batch: ``n_scenes`` random scenes, ``n_sources`` random source views of each and
    ``rays_per_scene`` random target pixels from any of its views, of which a ``box_share`` inside
    the object's 2D box in that view (``boxes[k]``: [V, 4] per scene, :func:`object_boxes`) and
    the rest anywhere. Returns (source images [B, S, H, W, 3] uint8, B source camera sets, the
    B * Rb target rays scene-major, target colours [B * Rb, 3] in [0, 1])."""
    picks = torch.randint(0, len(scenes), (n_scenes,), generator=generator).tolist()
    n_box = int(round(rays_per_scene * box_share)) if boxes is not None else 0
    images, cams, rays, targets = [], [], [], []
    for k in picks:
        obj = scenes.scenes[k]
        views = torch.randperm(len(obj), generator=generator)[:n_sources]
        images.append(obj.images[views])
        cams.append(obj.cameras[views])
        h, w = obj.images.shape[1:3]
        idx, u, v = sample_pixels(len(obj), h, w, rays_per_scene - n_box, 1.0, generator)
        if n_box:
            bi, bu, bv = sample_box_pixels(boxes[k], n_box, generator)
            idx, u, v = torch.cat([idx, bi]), torch.cat([u, bu]), torch.cat([v, bv])
        rays.append(make_rays(obj.cameras, idx, u, v, scenes.near, scenes.far))
        targets.append(obj.images[idx, v, u].float() / 255.0)
    bundle = type(rays[0])(*(None if parts[0] is None else torch.cat(parts) for parts in zip(*(r._fields() for r in rays))))
    return torch.stack(images), cams, bundle, torch.cat(targets)


def _train_multi_scene(opts: TrainOptions, spec: RunSpec | None, method: str, data: Path, downscale: int, device, out: Path,
                       fresh: bool) -> TrainResult:
    """``train`` for a multi-scene method: ``data`` is a multi-scene set (SRN / NMR) or a single
    scene (trained as a set of one)."""
    scenes = load_scenes(data, "train", downscale)
    if min(len(s) for s in scenes.scenes) < 2:
        raise TurboNerfError("every training object needs at least 2 views", data)
    budget_schedule(opts)
    if spec is None:
        cfg_cls, model_cls = get_method(method)
        config = apply_overrides(cfg_cls(), opts.overrides)
        spec = RunSpec(method=method, config=asdict(config), scene=SceneMeta.from_set(scenes, downscale), seed=opts.seed)
        try:
            build_model(spec, torch.device("cpu"))
        except (ValueError, RuntimeError, ZeroDivisionError) as e:
            raise TurboNerfError(f"the options of {method} do not make a valid model ({e})") from None
    with RunLock(out, "train"):
        spec = replace(spec, training=training_record(opts))
        if not opts.resume:
            prepare_run_dir(out, opts.overwrite, protected=(data,))
        write_run_spec(out, spec)
        for orphan in clean_orphans(out / CHECKPOINT.parent):
            print(f"note: removed {orphan.name}, left by an interrupted checkpoint write", file=sys.stderr)
        torch.manual_seed(spec.seed)
        gen = torch.Generator().manual_seed(spec.seed)
        model = build_model(spec, device)
        model.train()
        optimizer, lr_factor = model.make_optimizer()
        trainee = Trainee(model, optimizer, lr_factor, out / CHECKPOINT, meta=lambda: {"method": spec.method}, generator=gen)
        state = restore_trainee(trainee, spec.method, device) if (opts.resume and not fresh) else LoopState()
        n_batch = min(model.config.scenes_per_batch, len(scenes))
        rays_per_scene = max(1, opts.batch_rays // n_batch)
        max_sources = min(model.config.max_source_views, min(len(s) for s in scenes.scenes) - 1)
        background = scenes.background.to(device)
        box_share = model.config.box_share
        boxes = [object_boxes(s.images, scenes.background) for s in scenes.scenes] if box_share > 0 else None

        def step_fn(step: int) -> StepOutput:
            n_sources = int(torch.randint(1, max_sources + 1, (1,), generator=gen))
            images, cams, rays, target = sample_scene_batch(scenes, n_batch, n_sources, rays_per_scene, gen, boxes, box_share)
            sources = model.encode(images.to(device), [c.to(device) for c in cams])
            outputs = model.render_scenes(rays.to(device), sources, background, train=True)
            loss, stats = model.loss(outputs, target.to(device))
            return StepOutput(loss, outputs, {**stats, "source_views": float(n_sources)})

        loop_opts = loop_options(opts, f"train {spec.method} ({len(scenes)} scenes)")
        state = run_loop(trainee, step_fn, state, loop_opts, device, out / "train_log.jsonl", model.callbacks())
    return TrainResult(out, state.step, state.seconds, state.last_psnr)
