"""The training loop shared by every method: random rays from the training images, periodic
atomic checkpoints, resume, and a checkpoint on Ctrl-C / SIGTERM."""

from __future__ import annotations

import json
import math
import signal
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from turbonerf.data.scene import Scene, load_scene
from turbonerf.engine import runtime
from turbonerf.engine.checkpoint import load_checkpoint, load_optimizer_tensors, optimizer_tensors, save_checkpoint
from turbonerf.engine.run import (
    CHECKPOINT,
    RunSpec,
    SceneMeta,
    build_model,
    load_model_state,
    prepare_run_dir,
    read_run_spec,
    write_run_spec,
)
from turbonerf.errors import TurboNerfError
from turbonerf.methods.registry import apply_overrides, config_from_dict, get_method
from turbonerf.rays import make_rays


class TrainingInterrupted(Exception):
    """Raised after Ctrl-C / SIGTERM once the checkpoint has been written."""


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


def checkpoint_due(step: int, last_step: int, last_time: float, every_steps: int, every_minutes: float) -> bool:
    """True when ``every_steps`` steps or ``every_minutes`` minutes have passed since the last checkpoint."""
    return step - last_step >= every_steps or time.monotonic() - last_time > 60 * every_minutes


@contextmanager
def sigterm_as_keyboard_interrupt():
    """Turn SIGTERM into KeyboardInterrupt for the duration, so both save a checkpoint."""

    def handler(signum, frame):
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not in the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


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
    base_lrs = [g["lr"] for g in optimizer.param_groups]
    step, elapsed = 0, 0.0
    ckpt_path = out / CHECKPOINT
    if opts.resume:
        if not ckpt_path.is_file():
            raise TurboNerfError("no checkpoint to resume from", ckpt_path)
        tensors, meta = load_checkpoint(ckpt_path, device)
        if meta.get("method") != spec.method:
            raise TurboNerfError(f"checkpoint is from method '{meta.get('method')}', not '{spec.method}'", ckpt_path)
        load_model_state(model, tensors, ckpt_path)
        opt_tensors = {k: v for k, v in tensors.items() if k.startswith("optim.")}
        load_optimizer_tensors(optimizer, opt_tensors, meta["optimizer_groups"])
        step, elapsed = int(meta["step"]), float(meta["seconds"])
        gen.manual_seed(spec.seed + step)

    images = train_split.images.to(device)
    cameras = train_split.cameras.to(device)
    background = scene.background.to(device)
    n_img, h, w = images.shape[0], images.shape[1], images.shape[2]

    def checkpoint(psnr_value: float, path=ckpt_path) -> None:
        model_state = {f"model.{k}": v for k, v in model.state_dict().items()}
        opt_state, groups = optimizer_tensors(optimizer)
        meta = {"method": spec.method, "step": step, "seconds": elapsed, "psnr": psnr_value, "optimizer_groups": groups}
        save_checkpoint(path, model_state | opt_state, meta)

    snapshots = sorted(m for m in opts.snapshot_minutes if 60.0 * m > elapsed)

    budget_s = math.inf if opts.max_minutes is None else 60.0 * opts.max_minutes
    log_path = out / "train_log.jsonl"
    last_psnr, last_ckpt_step, last_ckpt_time = float("nan"), step, time.monotonic()
    bar = tqdm(total=opts.max_steps, initial=step, disable=not opts.progress, desc=f"train {spec.method}", unit="step", dynamic_ncols=True)
    try:
        with sigterm_as_keyboard_interrupt(), open(log_path, "a") as log:
            while step < opts.max_steps and elapsed < budget_s:
                t0 = time.perf_counter()
                crop = opts.precrop_fraction if (step < opts.precrop_steps and not scene.ndc) else 1.0
                idx, u, v = sample_pixels(n_img, h, w, opts.batch_rays, crop, gen)
                rays = make_rays(cameras, idx, u, v, scene.near, scene.far, scene.ndc)
                idx, u, v = idx.to(device), u.to(device), v.to(device)
                target = images[idx, v, u].float() / 255.0
                for g, base in zip(optimizer.param_groups, base_lrs):
                    g["lr"] = base * lr_factor(step)
                with runtime.autocast(device, opts.bf16):
                    loss, stats = model.training_loss(rays, target, background, step)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                step += 1
                elapsed += time.perf_counter() - t0
                mse = stats.get("mse", loss.item())
                last_psnr = -10.0 * math.log10(max(mse, 1e-10))
                bar.update(1)
                if step % opts.log_every == 0 or step == 1:
                    left = min((opts.max_steps - step) * elapsed / step, budget_s - elapsed)
                    bar.set_postfix(loss=f"{loss.item():.4f}", psnr=f"{last_psnr:.2f}", eta=f"{left / 60:.1f}min")
                    log.write(json.dumps({"step": step, "seconds": round(elapsed, 3), "loss": loss.item(), "psnr": last_psnr, **stats}) + "\n")
                    log.flush()
                if snapshots and elapsed >= 60.0 * snapshots[0]:
                    checkpoint(last_psnr, ckpt_path.with_name(f"snapshot_{snapshots.pop(0):g}min.safetensors"))
                if checkpoint_due(step, last_ckpt_step, last_ckpt_time, opts.checkpoint_every, opts.checkpoint_minutes):
                    checkpoint(last_psnr)
                    last_ckpt_step, last_ckpt_time = step, time.monotonic()
    except KeyboardInterrupt:
        bar.close()
        checkpoint(last_psnr)
        raise TrainingInterrupted(f"interrupted at step {step}; checkpoint saved to {ckpt_path} (continue with --resume)") from None
    bar.close()
    checkpoint(last_psnr)
    return TrainResult(out, step, elapsed, last_psnr)

