"""The one training loop: every trainable thing (NeRF methods, the R2L student, the students and
pixelNeRF still to come) trains through :func:`run_loop`.

What the loop owns, written once: the learning-rate schedule (a factor of each param group's
base rate), bf16 autocast, backward + optimizer step, the time and step budget, the progress bar,
``train_log.jsonl``, periodic and final checkpoints (atomic, with ``previous`` kept), time
snapshots, and a checkpoint on Ctrl-C / SIGTERM (then :class:`TrainingInterrupted`).

What differs per model comes in through two small pieces:

- ``step_fn(step) -> StepOutput``: builds a batch, runs the forward pass and the loss (the loop
  calls it under autocast) and returns the loss, the forward outputs and the statistics to log;
- callbacks (:class:`Callback`): ``before_step(step)`` runs under autocast before the forward
  pass (occupancy-grid refreshes, proposal annealing), ``after_step(step, output)`` after the
  optimizer step (density-grid momentum updates from the forward outputs, hard-example pools,
  a live viewer, a distributed all-reduce).
"""

from __future__ import annotations

import json
import math
import signal
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from turbonerf.engine import runtime
from turbonerf.engine.checkpoint import load_checkpoint, load_optimizer_tensors, optimizer_tensors, save_checkpoint
from turbonerf.errors import TurboNerfError


class TrainingInterrupted(Exception):
    """Raised after Ctrl-C / SIGTERM once the checkpoint has been written."""


@dataclass
class StepOutput:
    """What one ``step_fn`` call returns.

    Attributes:
        loss: scalar tensor to back-propagate.
        outputs: the forward pass's outputs (handed to ``after_step`` callbacks).
        stats: floats for the log; ``mse`` (if present) gives the logged PSNR.
    """

    loss: Tensor
    outputs: dict = field(default_factory=dict)
    stats: dict[str, float] = field(default_factory=dict)


class Callback(Protocol):
    """A hook of the training loop (any object with these two methods)."""

    def before_step(self, step: int) -> None:
        """Called under autocast before the forward pass of ``step`` (0-based)."""

    def after_step(self, step: int, output: StepOutput) -> None:
        """Called after the optimizer step of ``step``."""


@dataclass
class LoopOptions:
    """Budget, checkpointing and display settings of :func:`run_loop`."""

    max_steps: int = 200_000
    max_seconds: float = math.inf
    """training seconds (counted over resumes) after which the loop stops"""
    checkpoint_every: int = 1000
    checkpoint_minutes: float = 5.0
    log_every: int = 10
    snapshot_minutes: list[float] = field(default_factory=list)
    """also keep ``snapshot_<M>min.safetensors`` next to the checkpoint when training time passes M minutes"""
    bf16: bool = True
    progress: bool = True
    desc: str = "train"


@dataclass
class LoopState:
    """Where training stands: steps done and training seconds (both carried over resumes)."""

    step: int = 0
    seconds: float = 0.0
    last_psnr: float = float("nan")


@dataclass
class Trainee:
    """What the loop trains: a model, its optimizer and learning-rate rule, and how to checkpoint it.

    Attributes:
        model: the module whose ``state_dict`` is saved under ``model.``.
        optimizer: its optimizer (state saved under ``optim.``).
        lr_factor: step -> factor applied to each param group's base learning rate.
        checkpoint: path of the latest checkpoint (``previous`` is kept beside it).
        meta: () -> JSON-able dict saved in every checkpoint's metadata (method name, ...).
    """

    model: nn.Module
    optimizer: torch.optim.Optimizer
    lr_factor: Callable[[int], float]
    checkpoint: Path
    meta: Callable[[], dict] = dict
    base_lrs: list[float] = field(init=False)
    """each param group's learning rate as the optimizer was built (before any checkpoint is restored)"""

    def __post_init__(self):
        self.base_lrs = [g["lr"] for g in self.optimizer.param_groups]


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


def save_trainee(trainee: Trainee, state: LoopState, path: Path | None = None) -> None:
    """Write model + optimizer tensors and the metadata (step, seconds, psnr, ``trainee.meta()``)."""
    model_state = {f"model.{k}": v for k, v in trainee.model.state_dict().items()}
    opt_state, groups = optimizer_tensors(trainee.optimizer)
    meta = {**trainee.meta(), "step": state.step, "seconds": state.seconds, "psnr": state.last_psnr, "optimizer_groups": groups}
    save_checkpoint(path or trainee.checkpoint, model_state | opt_state, meta)


def load_model_tensors(model: nn.Module, tensors: dict[str, Tensor], path: Path) -> None:
    """Load the ``model.``-prefixed entries of a checkpoint into ``model``; a mismatch names the file."""
    state = {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0]
        raise TurboNerfError(f"checkpoint does not fit this model ({first})", path) from None


def restore_trainee(trainee: Trainee, method: str, device: torch.device) -> LoopState:
    """Load ``trainee.checkpoint`` into the model and optimizer; returns the saved step and seconds.
    A checkpoint of another method is refused, naming the file."""
    path = trainee.checkpoint
    tensors, meta = load_checkpoint(path, device)
    if meta.get("method") != method:
        raise TurboNerfError(f"checkpoint is from method '{meta.get('method')}', not '{method}'", path)
    load_model_tensors(trainee.model, tensors, path)
    load_optimizer_tensors(trainee.optimizer, {k: v for k, v in tensors.items() if k.startswith("optim.")}, meta["optimizer_groups"])
    return LoopState(step=int(meta["step"]), seconds=float(meta["seconds"]), last_psnr=float(meta.get("psnr", float("nan"))))


def mse_to_psnr(mse: float) -> float:
    return -10.0 * math.log10(max(mse, 1e-10))


def run_loop(
    trainee: Trainee,
    step_fn: Callable[[int], StepOutput],
    state: LoopState,
    opts: LoopOptions,
    device: torch.device,
    log_path: Path,
    callbacks: list[Callback] = (),
) -> LoopState:
    """Train until ``opts.max_steps`` or ``opts.max_seconds``; returns the final state.

    A checkpoint is written every ``checkpoint_every`` steps or ``checkpoint_minutes`` minutes,
    at ``snapshot_minutes`` marks, at the end, and on Ctrl-C / SIGTERM (which then raises
    :class:`TrainingInterrupted`). Every ``log_every`` steps one JSON line (step, seconds, loss,
    psnr, lr and the step's stats) goes to ``log_path``.
    """
    optimizer = trainee.optimizer
    base_lrs = trainee.base_lrs
    snapshots = sorted(m for m in opts.snapshot_minutes if 60.0 * m > state.seconds)
    last_ckpt_step, last_ckpt_time = state.step, time.monotonic()
    bar = tqdm(total=opts.max_steps, initial=state.step, disable=not opts.progress, desc=opts.desc, unit="step", dynamic_ncols=True)
    try:
        with sigterm_as_keyboard_interrupt(), open(log_path, "a") as log:
            while state.step < opts.max_steps and state.seconds < opts.max_seconds:
                t0 = time.perf_counter()
                step = state.step
                for g, base in zip(optimizer.param_groups, base_lrs):
                    g["lr"] = base * trainee.lr_factor(step)
                with runtime.autocast(device, opts.bf16):
                    for cb in callbacks:
                        cb.before_step(step)
                    out = step_fn(step)
                optimizer.zero_grad(set_to_none=True)
                out.loss.backward()
                optimizer.step()
                for cb in callbacks:
                    cb.after_step(step, out)
                state.step += 1
                state.seconds += time.perf_counter() - t0
                loss = float(out.loss.detach())
                state.last_psnr = mse_to_psnr(out.stats.get("mse", loss))
                bar.update(1)
                if state.step % opts.log_every == 0 or state.step == 1:
                    left = min((opts.max_steps - state.step) * state.seconds / state.step, opts.max_seconds - state.seconds)
                    bar.set_postfix(loss=f"{loss:.4f}", psnr=f"{state.last_psnr:.2f}", eta=f"{left / 60:.1f}min")
                    rec = {"step": state.step, "seconds": round(state.seconds, 3), "loss": loss, "psnr": state.last_psnr,
                           "lr": optimizer.param_groups[0]["lr"], **out.stats}
                    log.write(json.dumps(rec) + "\n")
                    log.flush()
                if snapshots and state.seconds >= 60.0 * snapshots[0]:
                    save_trainee(trainee, state, trainee.checkpoint.with_name(f"snapshot_{snapshots.pop(0):g}min.safetensors"))
                if checkpoint_due(state.step, last_ckpt_step, last_ckpt_time, opts.checkpoint_every, opts.checkpoint_minutes):
                    save_trainee(trainee, state)
                    last_ckpt_step, last_ckpt_time = state.step, time.monotonic()
    except KeyboardInterrupt:
        bar.close()
        save_trainee(trainee, state)
        raise TrainingInterrupted(
            f"interrupted at step {state.step}; checkpoint saved to {trainee.checkpoint} (continue with --resume)"
        ) from None
    bar.close()
    save_trainee(trainee, state)
    return state
