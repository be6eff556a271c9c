"""``turbonerf distill``: train a student from a trained teacher run.

Students: the ray student R2L (a neural light field, one ray at a time) and the image-space
students (:mod:`turbonerf.methods.image_student`): pose2image, hybrid, shared-backbone and
mobile-r2l, which map a camera to a whole image.

1. The student run folder is created like a training run (``run.json`` with method ``r2l`` and
   the teacher's scene, ``checkpoints/latest.safetensors`` in the trainer's format), so
   ``turbonerf eval`` / ``render`` work on it unchanged; ``distill.json`` records the options.
2. Pseudo data (:mod:`turbonerf.distill.pseudo_data`) is rendered by the teacher into
   ``OUT/pseudo`` (or a shared ``pseudo_dir``), resumably. Under a time budget, generation may use
   at most ``generation_fraction`` of it and stops early (saying so) when it would use more.
3. A ray student trains on batches of pseudo rays mixed with real training rays
   (``real_fraction`` of the fresh rays), plus the rays of the hard-example pool
   (:mod:`turbonerf.distill.hard_examples`): each step ``hard_ratio`` of the fresh rays with
   the highest loss join the pool, and once the pool is full as many are drawn back into the
   batch. Checkpoints are atomic; Ctrl-C / SIGTERM saves one; ``resume`` continues (the pool
   starts empty again). An image-space student trains on batches of ``batch_images`` whole
   images: pseudo images (:class:`turbonerf.distill.pseudo_data.PseudoImages`, the same store
   read as images, their cameras recomputed) and ``real_fraction`` of real training images; the
   hard-example pool is a ray student's and is not used.

The budget ``max_minutes`` covers this run's pseudo-data generation and its training together
(pseudo data found already made in a shared ``pseudo_dir`` costs the run nothing).
"""

from __future__ import annotations

import gc
import json
import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from torch import Tensor

from turbonerf.app.runs import (
    CHECKPOINT,
    RunLock,
    check_out_folder,
    RunRenderer,
    RunSpec,
    build_model,
    default_tree_path,
    prepare_run_dir,
    read_run_spec,
    renderer_for_run,
    write_run_spec,
)
from turbonerf.app.train import SCHEDULES, sample_pixels
from turbonerf.cameras import Cameras
from turbonerf.app.validate import require_at_least, require_positive
from turbonerf.data.formats import load_scene
from turbonerf.distill.hard_examples import HardExamplePool
from turbonerf.distill.pseudo_data import (
    PseudoDataResult,
    PseudoDataSpec,
    PseudoImages,
    PseudoRays,
    generate_pseudo_data,
    resolve_pose_mode,
)
from turbonerf.engine import runtime
from turbonerf.engine.checkpoint import read_checkpoint_meta
from turbonerf.engine.distributed import Replicas, device_for_rank, joined, rank_seed
from turbonerf.engine.schedule import BudgetSchedule
from turbonerf.engine.loop import (
    LoopOptions,
    LoopState,
    StepOutput,
    Trainee,
    TrainingInterrupted,
    restore_trainee,
    run_loop,
    sigterm_as_keyboard_interrupt,
)
from turbonerf.errors import TurboNerfError
from turbonerf.io.files import atomic_write_text
from turbonerf.methods.mobile_r2l import mobile_r2l_preset
from turbonerf.methods.r2l import r2l_preset
from turbonerf.methods.registry import STUDENT_METHODS, apply_overrides, get_method
from turbonerf.rays import RayBundle, make_rays

STUDENTS = STUDENT_METHODS
PRESETS = {"r2l": r2l_preset, "mobile-r2l": mobile_r2l_preset}
"""students with named sizes (``--preset``); the others have one default configuration"""
TEACHER_RENDERERS = ("auto", "model", "nerftree")
MODEL_TEACHER_CHUNK = 8192
"""rays per call of a model teacher"""
DISTILL_FILE = "distill.json"


@dataclass
class DistillOptions:
    """Options of ``turbonerf distill``."""

    teacher: Path
    """the teacher's run folder"""
    out: Path
    """the student's run folder (created; refused if it exists and is not empty, unless overwrite/resume)"""
    student: str = "r2l"
    """r2l (rays), or an image-space student: pose2image, hybrid, shared-backbone, mobile-r2l"""
    preset: str = "cpu"
    """student size for r2l (cpu: W128 D16, paper: W256 D88) and mobile-r2l (cpu, paper); the
    other students have only their defaults (cpu)"""
    overrides: list[str] = field(default_factory=list)
    """student config KEY=VALUE strings applied over the preset"""
    max_steps: int = 100_000
    max_minutes: float | None = None
    """budget for pseudo-data generation + training"""
    schedule: str = "method"
    """student learning-rate schedule: "method" (the student's step schedule) or "budget" (the full
    rate until 60% of what the budget leaves for training, then an exponential fall to
    ``lr_final``: :class:`turbonerf.engine.schedule.BudgetSchedule` without its warm-up, which on
    lego left MobileR2L at the background colour, 9.6 dB after 5 minutes against 21.2 without)"""
    lr_final: float = 0.1
    """budget schedule: factor of the learning rate when the budget is spent"""
    num_pseudo_images: int = 100
    """pseudo images (of the training resolution) the teacher renders"""
    real_fraction: float = 0.2
    """fraction of each batch's fresh rays taken from the real training images"""
    hard_ratio: float = 0.2
    """fraction of each batch's fresh rays that join the hard-example pool (0: no pool)"""
    hard_pool_batches: float = 20.0
    """pool capacity in batches (R2L's hard_mul)"""
    batch_rays: int = 4096
    """fresh rays per step (hard rays come on top) of a ray student"""
    batch_images: int = 4
    """whole images per step of an image-space student"""
    pseudo_dir: Path | None = None
    """where pseudo data lives (default OUT/pseudo); share it between students of one teacher"""
    pose_mode: str = "auto"
    """pseudo cameras: auto | box | sphere (see turbonerf.distill.pseudo_data)"""
    images_per_chunk: int = 1
    generation_fraction: float = 0.5
    """with a time budget, pseudo-data generation stops once it used this fraction of it"""
    teacher_renderer: str = "auto"
    """model (the teacher's render), nerftree (TEACHER/baked/nerftree.safetensors), auto (the tree when present)"""
    render_chunk: int | None = None
    """rays per teacher render call (None: 8192 for a model teacher; the renderer's own chunk,
    a whole image or more, for a tree, whose per-call cost was 15% of a 200x200 image at 8192)"""
    seed: int = 0
    device: str = "auto"
    threads: int | None = None
    """CPU threads for torch (None: torch's default); with other jobs on the machine, fewer can be faster"""
    bf16: bool = False
    compile: bool = False
    """torch.compile the student's networks (:func:`turbonerf.engine.runtime.compile_networks`)"""
    checkpoint_every: int = 1000
    checkpoint_minutes: float = 5.0
    resume: bool = False
    overwrite: bool = False
    progress: bool = True
    log_every: int = 10


@dataclass
class DistillResult:
    run_dir: Path
    step: int
    train_seconds: float
    generation_seconds: float
    """teacher time this run spent on pseudo data (this call and, when resuming, earlier ones)"""
    pseudo: PseudoDataResult
    last_psnr: float
    messages: list[str]
    """notes for the user (early stop of generation, fallbacks)"""
    main: bool = True
    """False in the processes other than rank 0 of a multi-process run (which print nothing)"""


def teacher_renderer(run_dir: Path, device: torch.device, choice: str) -> RunRenderer:
    """What renders the teacher (:func:`renderer_for_run`): its model, or its baked NerfTree when
    ``choice`` is nerftree, or auto and ``RUN/baked/nerftree.safetensors`` exists."""
    if choice not in TEACHER_RENDERERS:
        raise TurboNerfError(f"unknown teacher renderer '{choice}' (choose from {', '.join(TEACHER_RENDERERS)})")
    tree_path = default_tree_path(run_dir)
    if choice == "nerftree" and not tree_path.is_file():
        raise TurboNerfError("no baked NerfTree for this teacher", tree_path)
    return renderer_for_run(run_dir, device, baked=choice == "nerftree" or (choice == "auto" and tree_path.is_file()))


def teacher_chunk(opts: DistillOptions, teacher: RunRenderer) -> int:
    """Rays per teacher call while generating pseudo data (``opts.render_chunk`` when given)."""
    if opts.render_chunk is not None:
        return opts.render_chunk
    return MODEL_TEACHER_CHUNK if teacher.tree is None else teacher.chunk


def rays_from_rows(rows: Tensor, near: float, far: float) -> RayBundle:
    """[N, 9+] rows (origin | direction | ...) -> a RayBundle with the scene's near / far
    (viewdirs: the normalised directions; the R2L student does not read them)."""
    o, d = rows[:, 0:3], rows[:, 3:6]
    n = rows.shape[0]
    vd = d / d.norm(dim=-1, keepdim=True).clamp_min(1e-8)
    return RayBundle(o, d, vd, torch.full((n,), float(near), device=rows.device), torch.full((n,), float(far), device=rows.device))


def real_rows(images: Tensor, cameras, n: int, near: float, far: float, ndc: bool, generator: torch.Generator) -> Tensor:
    """[n, 9] random real training rays (origin | direction | rgb) from ``images`` [N, H, W, 3] uint8."""
    idx, u, v = sample_pixels(images.shape[0], images.shape[1], images.shape[2], n, 1.0, generator)
    rays = make_rays(cameras, idx, u, v, near, far, ndc)
    dev = images.device
    rgb = images[idx.to(dev), v.to(dev), u.to(dev)].float() / 255.0
    return torch.cat([rays.origins.to(dev), rays.directions.to(dev), rgb], dim=-1)


def split_batch(batch_rays: int, real_fraction: float, have_pseudo: bool) -> tuple[int, int]:
    """(pseudo, real) fresh rays per step."""
    if not have_pseudo:
        return 0, batch_rays
    n_real = int(round(min(max(real_fraction, 0.0), 1.0) * batch_rays))
    return batch_rays - n_real, n_real


def _student_config(opts: DistillOptions, scene=None):
    """The student's config: its preset, the scene's image size and depth range (image-space
    students; when ``scene`` is given), then ``--set`` overrides."""
    if opts.student not in STUDENTS:
        raise TurboNerfError(f"unknown student '{opts.student}' (available: {', '.join(STUDENTS)})")
    if opts.student in PRESETS:
        config = PRESETS[opts.student](opts.preset)
    elif opts.preset != "cpu":
        raise TurboNerfError(f"student '{opts.student}' has no presets (only r2l and mobile-r2l do); drop --preset")
    else:
        config = get_method(opts.student)[0]()
    if scene is not None:
        h, w = scene.split("train").images.shape[1:3]
        found = {"height": int(h), "width": int(w), "near": float(scene.near), "far": float(scene.far), "ndc": bool(scene.ndc)}
        config = replace(config, **{k: v for k, v in found.items() if hasattr(config, k)})
    return apply_overrides(config, opts.overrides)


def _student_spec(opts: DistillOptions, teacher_spec: RunSpec, scene) -> RunSpec:
    return RunSpec(method=opts.student, config=asdict(_student_config(opts, scene)), scene=teacher_spec.scene, seed=opts.seed)


def make_pseudo_data(
    opts: DistillOptions, out: Path, pseudo_root: Path, seed: int, teacher: RunRenderer, scene, device: torch.device,
    replicas: Replicas = Replicas(),
) -> tuple[PseudoDataResult, float, list[str]]:
    """Stage 1 of :func:`distill`: (what was generated, this run's generation seconds so far, notes).
    Several processes share the chunks (:func:`generate_pseudo_data`'s rounds)."""
    messages = []
    budget_s = math.inf if opts.max_minutes is None else 60.0 * opts.max_minutes
    teacher_name = teacher.spec.method if teacher.tree is None else teacher.name
    cams = scene.split("train").cameras
    pspec = PseudoDataSpec(
        seed=seed,
        pose_mode=resolve_pose_mode(opts.pose_mode, cams.c2w, scene.ndc),
        height=cams.height,
        width=cams.width,
        images_per_chunk=opts.images_per_chunk,
        near=scene.near,
        far=scene.far,
        ndc=scene.ndc,
        teacher=f"{teacher_name} {Path(opts.teacher).resolve()}",
    )
    ckpt_path = out / CHECKPOINT
    gen_before = float(read_checkpoint_meta(ckpt_path).get("generation_seconds", 0.0)) if opts.resume and ckpt_path.is_file() else 0.0
    gen_budget = None if math.isinf(budget_s) else max(opts.generation_fraction * budget_s - gen_before, 0.0)
    try:
        with sigterm_as_keyboard_interrupt():
            pseudo = generate_pseudo_data(
                pseudo_root, teacher.render, cams, pspec, opts.num_pseudo_images, scene.background, device=device,
                chunk_rays=teacher_chunk(opts, teacher), bf16=runtime.bf16_used(device, opts.bf16), max_seconds=gen_budget, progress=opts.progress,
                rank=replicas.rank, world_size=replicas.world_size, gather=replicas.gather,
            )
    except KeyboardInterrupt:
        raise TrainingInterrupted(
            f"interrupted during pseudo-data generation; the finished chunks are kept in {pseudo_root} (continue with --resume)"
        ) from None
    if pseudo.new_images:
        messages.append(f"teacher ({teacher_name}) rendered {pseudo.new_images} pseudo images at {pseudo.rays_per_s:,.0f} rays/s")
    if pseudo.stopped_early:
        messages.append(
            f"pseudo-data generation stopped early at {pseudo.images} of {opts.num_pseudo_images} images: "
            f"it had used {opts.generation_fraction:.0%} of the {opts.max_minutes:g}-minute budget"
        )
    return pseudo, gen_before + pseudo.seconds, messages


class HardExampleFeed:
    """Training-loop callback that feeds the hard-example pool: after each step the
    ``hard_ratio`` fresh rays with the highest loss join the pool (rows and per-ray errors come
    in the step's outputs)."""

    def __init__(self, pool: HardExamplePool, ratio: float):
        self.pool = pool
        self.ratio = ratio

    def before_step(self, step: int) -> None:
        pass

    def after_step(self, step: int, output: StepOutput) -> None:
        self.pool.add_hardest(output.outputs["fresh_rows"], output.outputs["fresh_error"], self.ratio)


def distill(opts: DistillOptions, replicas: Replicas | None = None) -> DistillResult:
    """Distil the teacher run ``opts.teacher`` into a student run ``opts.out`` (locked while it runs).

    With several processes (``--nproc`` / torchrun) they share the pseudo-data chunks, then train
    the student data-parallel (``batch_rays`` fresh rays per process); rank 0 writes the run.
    ``replicas``: those processes (default: those torchrun or ``--nproc`` started)."""
    require_positive("--max-steps", opts.max_steps)
    if opts.max_minutes is not None:
        require_positive("--max-minutes", opts.max_minutes)
    require_positive("--batch-rays", opts.batch_rays)
    require_positive("--batch-images", opts.batch_images)
    require_at_least("--num-pseudo-images", opts.num_pseudo_images, 0)
    student_schedule(opts)  # refuse an unknown schedule before anything is written
    device = runtime.resolve_device(opts.device)
    with joined(device, replicas) as replicas:
        device = device_for_rank(device, replicas)
        runtime.configure(device, opts.threads, bf16=opts.bf16)
        out = Path(opts.out)
        if not opts.resume:  # fail on a bad student option or output folder before loading anything
            _student_config(opts)
            check_out_folder(out, opts.overwrite, protected=(Path(opts.teacher),))
        replicas.barrier()
        if not replicas.is_main:
            return _distill_locked(opts, device, out, replicas)
        with RunLock(out, "distill"):
            return _distill_locked(opts, device, out, replicas)


def student_schedule(opts: DistillOptions) -> BudgetSchedule | None:
    """The budget schedule the student trains with, or None for its own step schedule. The
    budget is the training part of ``max_minutes`` (what pseudo-data generation left), or
    ``max_steps`` when that comes first."""
    if opts.schedule not in SCHEDULES:
        raise TurboNerfError(f"unknown --schedule '{opts.schedule}' (choose from {', '.join(SCHEDULES)})")
    if opts.schedule == "method":
        return None
    try:  # no warm-up: from a small rate the image students settle on the background colour and stay there
        return BudgetSchedule(warmup=0.0, start=1.0, final=opts.lr_final)
    except ValueError:
        raise TurboNerfError(f"--lr-final must be in (0, 1], got {opts.lr_final}") from None


def _distill_locked(opts: DistillOptions, device: torch.device, out: Path, replicas: Replicas) -> DistillResult:
    messages: list[str] = []
    teacher = teacher_renderer(Path(opts.teacher), device, opts.teacher_renderer)
    tspec = teacher.spec
    if opts.resume:
        spec = read_run_spec(out)
        if spec.method not in STUDENTS:
            raise TurboNerfError(f"run was trained with method '{spec.method}', not a distilled student", out / "run.json")
    scene = load_scene(tspec.scene.data, downscale=tspec.scene.downscale, splits=("train",))
    train_split = scene.split("train")
    if not opts.resume:
        spec = _student_spec(opts, tspec, scene)
    if not opts.resume and replicas.is_main:
        prepare_run_dir(out, opts.overwrite, protected=(Path(opts.teacher), Path(tspec.scene.data)))
        write_run_spec(out, spec)
    pseudo_root = Path(opts.pseudo_dir) if opts.pseudo_dir else out / "pseudo"
    if opts.resume and not opts.pseudo_dir and (out / DISTILL_FILE).is_file():
        pseudo_root = Path(json.loads((out / DISTILL_FILE).read_text()).get("pseudo_dir", pseudo_root))
    info = {"teacher": str(Path(opts.teacher).resolve()), "teacher_method": tspec.method, "pseudo_dir": str(pseudo_root.resolve()),
            **{k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(opts).items() if k not in ("teacher", "out", "pseudo_dir")}}
    if replicas.is_main:
        atomic_write_text(out / DISTILL_FILE, json.dumps(info, indent=2))
    replicas.barrier()  # the run folder exists before any rank writes pseudo data into it

    # --- pseudo data
    pseudo, gen_seconds, notes = make_pseudo_data(opts, out, pseudo_root, spec.seed, teacher, scene, device, replicas)
    # The ranks finish generating at different moments; they must agree on what is left of the
    # budget, or a time-based learning rate (and the loop's end) would differ between replicas.
    gen_seconds = replicas.agree([gen_seconds])[0]
    messages += notes
    replicas.barrier()  # rank 0's manifest lists every chunk before anyone reads it
    del teacher
    gc.collect()

    # --- student, through the one training loop
    torch.manual_seed(spec.seed)
    gen = torch.Generator().manual_seed(rank_seed(spec.seed, replicas.rank))
    model = build_model(spec, device)
    model.train()
    if opts.compile:
        compiled = runtime.compile_networks(model, device)
        messages.append(f"compiled with torch.compile: {', '.join(compiled)} (on the first step)")
    optimizer, lr_factor = model.make_optimizer()
    teacher_path = str(Path(opts.teacher).resolve())
    trainee = Trainee(
        model, optimizer, lr_factor, out / CHECKPOINT,
        meta=lambda: {"method": spec.method, "generation_seconds": gen_seconds, "pseudo_images": pseudo.images, "teacher": teacher_path},
        generator=gen,
    )
    state = LoopState()
    if opts.resume and trainee.checkpoint.is_file():
        state = restore_trainee(trainee, spec.method, device)
        if not replicas.is_main:  # the checkpoint holds rank 0's generator
            gen.manual_seed(rank_seed(spec.seed, replicas.rank) + state.step)

    if model.image_space:
        step_fn, callbacks, notes = image_step(model, opts, pseudo_root, train_split, device, gen)
    else:
        step_fn, callbacks, notes = ray_step(model, opts, pseudo_root, scene, train_split, device, gen)
    messages += notes

    loop_opts = LoopOptions(
        max_steps=opts.max_steps,
        max_seconds=math.inf if opts.max_minutes is None else 60.0 * opts.max_minutes - gen_seconds,
        schedule=student_schedule(opts),
        checkpoint_every=opts.checkpoint_every,
        checkpoint_minutes=opts.checkpoint_minutes,
        log_every=opts.log_every,
        bf16=opts.bf16,
        progress=opts.progress,
        desc=f"distill {spec.method}" + (f" x{replicas.world_size} processes" if replicas.distributed else ""),
    )
    state = run_loop(trainee, step_fn, state, loop_opts, device, out / "train_log.jsonl", callbacks, replicas)
    return DistillResult(out, state.step, state.seconds, gen_seconds, pseudo, state.last_psnr, messages, replicas.is_main)


def ray_step(model, opts: DistillOptions, pseudo_root: Path, scene, train_split, device: torch.device, gen: torch.Generator):
    """(step function, loop callbacks, notes) of a ray student: batches of ``batch_rays`` pseudo
    and real rays, plus hard examples drawn back from the pool once it is full."""
    data = PseudoRays(pseudo_root)
    n_pseudo, n_real = split_batch(opts.batch_rays, opts.real_fraction, len(data) > 0)
    notes = [] if len(data) else ["no pseudo data: the student trains on real rays only"]
    images = train_split.images.to(device)
    cameras = train_split.cameras.to(device)
    near, far, ndc = scene.near, scene.far, scene.ndc
    background = scene.background.to(device)
    pool = HardExamplePool(max(1, int(opts.hard_pool_batches * opts.batch_rays)), 9, device) if opts.hard_ratio > 0 else None
    n_hard = int(opts.hard_ratio * opts.batch_rays)

    def step_fn(step: int) -> StepOutput:
        parts = []
        if n_pseudo:
            prays, prgb = data.sample(n_pseudo, gen)
            parts.append(torch.cat([prays, prgb], dim=-1).to(device))
        if n_real:
            parts.append(real_rows(images, cameras, n_real, near, far, ndc, gen))
        fresh = torch.cat(parts)
        n_fresh = fresh.shape[0]
        rows = torch.cat([fresh, pool.draw(n_hard, gen)]) if (pool is not None and pool.full) else fresh
        outputs = model(rays_from_rows(rows, near, far), background, train=True)
        loss, _ = model.loss(outputs, rows[:, 6:9])
        per_ray = torch.mean((outputs["rgb"].detach() - rows[:, 6:9]) ** 2, dim=-1)
        mse_fresh = float(per_ray[:n_fresh].mean())
        outputs.update(fresh_rows=fresh, fresh_error=per_ray[:n_fresh])
        return StepOutput(loss, outputs, {"mse": mse_fresh, "hard_rays": rows.shape[0] - n_fresh})

    return step_fn, ([HardExampleFeed(pool, opts.hard_ratio)] if pool is not None else []), notes


def image_step(model, opts: DistillOptions, pseudo_root: Path, train_split, device: torch.device, gen: torch.Generator):
    """(step function, loop callbacks, notes) of an image-space student: batches of
    ``batch_images`` whole images, pseudo images and ``real_fraction`` of real training images
    (at least one of each when both exist and the batch holds two)."""
    data = PseudoImages(pseudo_root, train_split.cameras)
    n_images = opts.batch_images
    if len(data) == 0:
        n_real, notes = n_images, ["no pseudo data: the student trains on the real images only"]
    else:
        n_real = min(max(int(round(opts.real_fraction * n_images)), int(opts.real_fraction > 0 and n_images > 1)), n_images)
        notes = []
    n_pseudo = n_images - n_real
    images = train_split.images
    cameras = train_split.cameras

    def step_fn(step: int) -> StepOutput:
        cams, rgbs = [], []
        if n_pseudo:
            c, rgb = data.sample(n_pseudo, gen)
            cams.append(c)
            rgbs.append(rgb)
        if n_real:
            idx = torch.randint(len(images), (n_real,), generator=gen)
            cams.append(cameras[idx])
            rgbs.append(images[idx].float() / 255.0)
        loss, stats = model.image_loss(Cameras.cat(cams).to(device), torch.cat(rgbs).to(device))
        return StepOutput(loss, {}, {**stats, "images": n_images})

    return step_fn, [], notes
