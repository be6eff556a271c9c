"""``turbonerf train``: a method on a scene folder into a run folder, through the one training
loop (:mod:`turbonerf.engine.loop`) with random rays from the training images as batches."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from turbonerf.data.formats import load_scene
from turbonerf.data.scene import Scene
from turbonerf.engine import runtime
from turbonerf.app.runs import CHECKPOINT, RunSpec, SceneMeta, build_model, prepare_run_dir, read_run_spec, write_run_spec
from turbonerf.engine.loop import LoopOptions, LoopState, StepOutput, Trainee, TrainingInterrupted, restore_trainee, run_loop
from turbonerf.errors import TurboNerfError
from turbonerf.methods.registry import apply_overrides, config_from_dict, get_method, method_names
from turbonerf.rays import make_rays


@dataclass
class TrainOptions:
    """Options of ``turbonerf train`` (method hyper-parameters live in the method's config)."""

    method: str
    data: Path
    out: Path
    max_steps: int = 200_000
    max_minutes: float | None = None
    downscale: int = 1
    seed: int = 0
    device: str = "auto"
    batch_rays: int = 1024
    checkpoint_every: int = 1000
    checkpoint_minutes: float = 5.0
    resume: bool = False
    overwrite: bool = False
    overrides: list[str] = field(default_factory=list)
    bf16: bool = True
    precrop_steps: int = 100
    precrop_fraction: float = 0.5
    progress: bool = True
    log_every: int = 10
    snapshot_minutes: list[float] = field(default_factory=list)
    """also keep ``checkpoints/snapshot_<M>min.safetensors`` when training time passes M minutes"""


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    seconds: float
    last_psnr: float


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


def _setup_spec(opts: TrainOptions, scene: Scene) -> RunSpec:
    cfg_cls, _ = get_method(opts.method)
    config = apply_overrides(cfg_cls(), opts.overrides)
    return RunSpec(method=opts.method, config=asdict(config), scene=SceneMeta.from_scene(scene, opts.downscale), seed=opts.seed)


def train(opts: TrainOptions) -> TrainResult:
    """Train ``opts.method`` on ``opts.data`` into the run folder ``opts.out``."""
    device = runtime.resolve_device(opts.device)
    runtime.configure(device)
    out = Path(opts.out)
    if opts.resume:
        spec = read_run_spec(out)
        if opts.method and opts.method != spec.method:
            raise TurboNerfError(f"run was trained with method '{spec.method}', not '{opts.method}'", out / "run.json")
        config_from_dict(spec.method, spec.config)  # validates
        data, downscale = Path(spec.scene.data), spec.scene.downscale
    else:
        cfg_cls, _ = get_method(opts.method)
        apply_overrides(cfg_cls(), opts.overrides)  # fail on a bad option before loading data
        data, downscale = Path(opts.data), opts.downscale
    scene = load_scene(data, downscale=downscale, splits=("train",))
    train_split = scene.split("train")
    if len(train_split) == 0:
        raise TurboNerfError("the train split is empty", data)
    if not opts.resume:
        spec = _setup_spec(opts, scene)
        prepare_run_dir(out, opts.overwrite)
        write_run_spec(out, spec)

    torch.manual_seed(spec.seed)
    gen = torch.Generator().manual_seed(spec.seed)
    model = build_model(spec, device)
    model.train()
    optimizer, lr_factor = model.make_optimizer()
    trainee = Trainee(model, optimizer, lr_factor, out / CHECKPOINT, meta=lambda: {"method": spec.method})
    state = LoopState()
    if opts.resume:
        if not trainee.checkpoint.is_file():
            raise TurboNerfError("no checkpoint to resume from", trainee.checkpoint)
        state = restore_trainee(trainee, spec.method, device)
        gen.manual_seed(spec.seed + state.step)

    images = train_split.images.to(device)
    cameras = train_split.cameras.to(device)
    background = scene.background.to(device)
    n_img, h, w = images.shape[0], images.shape[1], images.shape[2]

    def step_fn(step: int) -> StepOutput:
        crop = opts.precrop_fraction if (step < opts.precrop_steps and not scene.ndc) else 1.0
        idx, u, v = sample_pixels(n_img, h, w, opts.batch_rays, crop, gen)
        rays = make_rays(cameras, idx, u, v, scene.near, scene.far, scene.ndc)
        idx, u, v = idx.to(device), u.to(device), v.to(device)
        target = images[idx, v, u].float() / 255.0
        outputs = model(rays, background, train=True)
        loss, stats = model.loss(outputs, target)
        return StepOutput(loss, outputs, {**outputs.get("stats", {}), **stats})

    loop_opts = LoopOptions(
        max_steps=opts.max_steps,
        max_seconds=math.inf if opts.max_minutes is None else 60.0 * opts.max_minutes,
        checkpoint_every=opts.checkpoint_every,
        checkpoint_minutes=opts.checkpoint_minutes,
        log_every=opts.log_every,
        snapshot_minutes=list(opts.snapshot_minutes),
        bf16=opts.bf16,
        progress=opts.progress,
        desc=f"train {spec.method}",
    )
    state = run_loop(trainee, step_fn, state, loop_opts, device, out / "train_log.jsonl", model.callbacks())
    return TrainResult(out, state.step, state.seconds, state.last_psnr)
