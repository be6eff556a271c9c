"""The one training loop: every trainable thing (NeRF methods, the R2L student, the students and
pixelNeRF still to come) trains through :func:`run_loop`.

What the loop owns, written once: the learning-rate schedule (a factor of each param group's
base rate, from the trainee's step schedule or from the fraction of the budget spent), bf16 autocast, backward + optimizer step, the time and step budget, the progress bar,
``train_log.jsonl``, periodic and final checkpoints (atomic, with ``previous`` kept), time
snapshots, and a checkpoint on Ctrl-C / SIGTERM (then :class:`TrainingInterrupted`).

What differs per model comes in through two small pieces:

- ``step_fn(step) -> StepOutput``: builds a batch, runs the forward pass and the loss (the loop
  calls it under autocast) and returns the loss, the forward outputs and the statistics to log;
- callbacks (:class:`Callback`): ``before_step(step)`` runs under autocast before the forward
  pass (occupancy-grid refreshes, proposal annealing), ``after_step(step, output)`` after the
  optimizer step (density-grid momentum updates from the forward outputs, hard-example pools,
  a live viewer).

Data-parallel training (``torchrun``) comes in through ``replicas``
(:class:`turbonerf.engine.distributed.Replicas`): gradients are averaged between backward and the
optimizer step, grids are broadcast from rank 0 every ``sync_every`` steps, the step's
non-finite flag and the elapsed seconds are agreed on, and rank 0 alone logs, checkpoints and
draws the bar. With one process each of these is a no-op.
"""

from __future__ import annotations

import json
import math
import os
import signal
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from turbonerf.engine import runtime
from turbonerf.engine.distributed import ReplicaLost, Replicas, state_fingerprint
from turbonerf.engine.schedule import budget_progress
from turbonerf.engine.checkpoint import (
    NonFiniteCheckpoint,
    load_checkpoint_or_previous,
    non_finite_tensors,
    load_optimizer_tensors,
    optimizer_tensors,
    save_checkpoint,
)
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
    bf16: bool = False
    progress: bool = True
    desc: str = "train"
    schedule: Callable[[float], float] | None = None
    """budget fraction spent -> learning-rate factor (:mod:`turbonerf.engine.schedule`); replaces
    the trainee's step schedule when given"""
    bad_steps_before_rollback: int = 3
    """consecutive steps with a non-finite loss or gradient (each skipped) before the run rolls back"""
    max_rollbacks: int = 3
    """rollbacks to the last good checkpoint (each halving the learning rate) before training stops"""
    sync_every: int = 16
    """data-parallel runs: broadcast the model's buffers (occupancy / density grids) from rank 0
    every this many steps (and before every checkpoint)"""


@dataclass
class LoopState:
    """Where training stands: steps done and training seconds (both carried over resumes), and
    the divergence guard's learning-rate scale and rollback count."""

    step: int = 0
    seconds: float = 0.0
    last_psnr: float = float("nan")
    lr_scale: float = 1.0
    rollbacks: int = 0


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
    generator: torch.Generator | None = None
    """the batch sampler's generator, saved and restored with the global torch RNG so that a
    resumed run draws exactly the batches an uninterrupted one would"""
    base_lrs: list[float] = field(init=False)
    """each param group's learning rate as the optimizer was built (before any checkpoint is restored)"""

    def __post_init__(self):
        self.base_lrs = [g["lr"] for g in self.optimizer.param_groups]


def checkpoint_due(step: int, last_step: int, seconds: float, last_seconds: float, every_steps: int, every_minutes: float) -> bool:
    """True when ``every_steps`` steps or ``every_minutes`` minutes of training have passed since
    the last checkpoint (training seconds, which every rank of a data-parallel run agrees on)."""
    return step - last_step >= every_steps or seconds - last_seconds > 60 * every_minutes


@contextmanager
def signal_handlers(handlers: dict):
    """Install ``{signal: handler}`` for the duration and restore the previous handlers after.
    Outside the main thread (where Python cannot set handlers) it does nothing."""
    try:
        previous = {sig: signal.signal(sig, h) for sig, h in handlers.items()}
    except ValueError:  # not in the main thread
        yield
        return
    try:
        yield
    finally:
        for sig, h in previous.items():
            signal.signal(sig, h)


def _raise_keyboard_interrupt(signum, frame):
    raise KeyboardInterrupt


def sigterm_as_keyboard_interrupt():
    """Turn SIGTERM into KeyboardInterrupt for the duration, so both save a checkpoint."""
    return signal_handlers({signal.SIGTERM: _raise_keyboard_interrupt})


def signals_held():
    """Ignore SIGINT and SIGTERM for the duration (a closing checkpoint is being written; the
    process ends right after it)."""
    return signal_handlers({signal.SIGINT: signal.SIG_IGN, signal.SIGTERM: signal.SIG_IGN})


def rng_tensors(generator: torch.Generator | None) -> dict[str, Tensor]:
    """The random-number states a resumed run needs to continue bit for bit."""
    out = {"rng.torch": torch.get_rng_state()}
    if generator is not None:
        out["rng.generator"] = generator.get_state()
    return out


def save_trainee(trainee: Trainee, state: LoopState, path: Path | None = None, rotate: bool = True) -> None:
    """Write model + optimizer tensors, RNG states and the metadata (step, seconds, psnr,
    lr_scale, rollbacks, ``trainee.meta()``). Non-finite tensors are refused
    (:class:`turbonerf.engine.checkpoint.NonFiniteCheckpoint`)."""
    model_state = {f"model.{k}": v for k, v in trainee.model.state_dict().items()}
    opt_state, groups = optimizer_tensors(trainee.optimizer)
    meta = {**trainee.meta(), "step": state.step, "seconds": state.seconds, "psnr": _finite_or_none(state.last_psnr),
            "lr_scale": state.lr_scale, "rollbacks": state.rollbacks, "optimizer_groups": groups}
    save_checkpoint(path or trainee.checkpoint, model_state | opt_state | rng_tensors(trainee.generator), meta, rotate=rotate)


def check_trainee_finite(trainee: Trainee, path: Path) -> None:
    """What :func:`save_trainee` refuses, without writing: ranks other than 0 of a data-parallel
    run take the same roll-back decision as rank 0 this way."""
    opt_state, _ = optimizer_tensors(trainee.optimizer)
    bad = non_finite_tensors(trainee.model.state_dict() | opt_state)
    if bad:
        raise NonFiniteCheckpoint(f"not saved: {len(bad)} tensor(s) hold NaN or inf (first: {bad[0]})", path)


def optional_state_keys(model: nn.Module) -> set[str]:
    """state_dict keys that a checkpoint may lack (its value then stays as the model built it):
    the buffers each submodule names in its ``OPTIONAL_STATE`` class attribute."""
    keys = set()
    for prefix, module in model.named_modules():
        for name in getattr(type(module), "OPTIONAL_STATE", ()):
            keys.add(f"{prefix}.{name}" if prefix else name)
    return keys


def load_model_tensors(model: nn.Module, tensors: dict[str, Tensor], path: Path) -> None:
    """Load the ``model.``-prefixed entries of a checkpoint into ``model``; a mismatch names the file
    and the tensors concerned."""
    state = {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}
    expected = model.state_dict()
    for key in optional_state_keys(model) - set(state):  # added after older checkpoints were written
        state[key] = expected[key]
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        what = (f"{len(missing)} tensor(s) missing, e.g. {missing[0]}" if missing else "") + (
            ("; " if missing else "") + f"{len(unexpected)} unexpected, e.g. {unexpected[0]}" if unexpected else ""
        )
        raise TurboNerfError(f"checkpoint does not fit this model ({what})", path)
    for k, v in state.items():
        if tuple(v.shape) != tuple(expected[k].shape):
            raise TurboNerfError(f"checkpoint does not fit this model ({k}: shape {tuple(v.shape)}, expected {tuple(expected[k].shape)})", path)
    model.load_state_dict(state)


def restore_trainee(trainee: Trainee, method: str, device: torch.device) -> LoopState:
    """Load ``trainee.checkpoint`` (or ``previous`` when it is missing or unreadable, saying so)
    into the model, the optimizer and the RNGs; returns the saved state. A checkpoint of another
    method is refused, naming the file."""
    tensors, meta, note = load_checkpoint_or_previous(trainee.checkpoint, device)
    if note:
        print(f"warning: {note}", file=sys.stderr)
    path = trainee.checkpoint
    if meta.get("method") != method:
        raise TurboNerfError(f"checkpoint is from method '{meta.get('method')}', not '{method}'", path)
    groups = meta.get("optimizer_groups")
    if not isinstance(groups, list) or not all(isinstance(g, dict) for g in groups):
        raise TurboNerfError("checkpoint metadata lacks valid 'optimizer_groups'", path)
    load_model_tensors(trainee.model, tensors, path)
    try:
        load_optimizer_tensors(trainee.optimizer, {k: v for k, v in tensors.items() if k.startswith("optim.")}, groups)
    except (ValueError, KeyError, RuntimeError) as e:
        raise TurboNerfError(f"optimizer state does not fit this model ({e})", path) from None
    if "rng.torch" in tensors:
        torch.set_rng_state(tensors["rng.torch"].cpu())
    if trainee.generator is not None and "rng.generator" in tensors:
        trainee.generator.set_state(tensors["rng.generator"].cpu())
    return LoopState(
        step=int(meta["step"]), seconds=float(meta.get("seconds", 0.0)), last_psnr=_nan_if_none(meta.get("psnr")),
        lr_scale=float(meta.get("lr_scale", 1.0)), rollbacks=int(meta.get("rollbacks", 0)),
    )


def _finite_or_none(x: float) -> float | None:
    return x if isinstance(x, (int, float)) and math.isfinite(x) else None


def _nan_if_none(x) -> float:
    return float("nan") if x is None else float(x)


def json_line(record: dict) -> str:
    """One JSON line in which NaN and infinities are written as null (strict JSON)."""
    return json.dumps({k: (_finite_or_none(v) if isinstance(v, float) else v) for k, v in record.items()}, allow_nan=False)


def grads_finite(params: list[Tensor]) -> bool:
    """True when every gradient is finite (one fused norm per tensor, no per-element Python work)."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return True
    return bool(torch.isfinite(torch.stack(torch._foreach_norm(grads))).all())


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
    replicas: Replicas = Replicas(),
) -> LoopState:
    """Train until ``opts.max_steps`` or ``opts.max_seconds``; returns the final state.

    A checkpoint is written before the first step of a fresh run (so a run folder always holds
    one), every ``checkpoint_every`` steps or ``checkpoint_minutes`` minutes, at
    ``snapshot_minutes`` marks, at the end (unless the last one already holds this step), and on
    Ctrl-C / SIGTERM (which then raises :class:`TrainingInterrupted`). Every ``log_every`` steps
    one JSON line (step, seconds, loss, psnr, lr and the step's stats) goes to ``log_path``.

    Divergence never reaches disk: a step whose loss or gradient is not finite is skipped (no
    optimizer step, no callbacks); after ``bad_steps_before_rollback`` such steps in a row the
    model and optimizer go back to the last checkpoint (which is finite: non-finite tensors are
    never saved) and the learning rate is halved; after ``max_rollbacks`` rollbacks training
    stops with a TurboNerfError that says so.

    With ``replicas`` of several processes (data-parallel), every rank runs this loop on its own
    batches: see :mod:`turbonerf.engine.distributed` for what keeps the replicas identical. The
    last log line then records each rank's :func:`state_fingerprint`, and training ends with an
    error if they differ.
    """
    optimizer = trainee.optimizer
    params = [p for g in optimizer.param_groups for p in g["params"]]
    base_lrs = trainee.base_lrs
    snapshots = sorted(m for m in opts.snapshot_minutes if 60.0 * m > state.seconds)
    bad_in_row = 0
    method = trainee.meta().get("method", "")
    main = replicas.is_main
    replicas.broadcast_parameters(trainee.model)
    replicas.broadcast_buffers(trainee.model)
    state.seconds = replicas.agree([state.seconds])[0]
    if main and not trainee.checkpoint.is_file():
        save_trainee(trainee, state)
    last_ckpt_step, last_ckpt_seconds = state.step, state.seconds
    by_time = math.isfinite(opts.max_seconds)  # the bar shows the budget the user gave: time, else steps
    bar = tqdm(
        total=round(opts.max_seconds) if by_time else opts.max_steps, initial=round(state.seconds) if by_time else state.step,
        disable=not (opts.progress and main), desc=opts.desc, unit="s" if by_time else "step", dynamic_ncols=True,
        bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} s [{elapsed}<{remaining}{postfix}]" if by_time else None,
    )
    comm = {"seconds": 0.0, "bytes": 0}  # data-parallel traffic since the last log line

    def advance_bar() -> None:
        target = min(round(state.seconds), bar.total) if by_time else state.step
        bar.update(target - bar.n)  # negative after a rollback; tqdm redraws at most ~10 times a second

    def checkpoint(path: Path | None = None, rotate: bool = True) -> None:
        nonlocal last_ckpt_step, last_ckpt_seconds
        if main:
            save_trainee(trainee, state, path, rotate)
        else:
            check_trainee_finite(trainee, path or trainee.checkpoint)
        if path is None:
            last_ckpt_step, last_ckpt_seconds = state.step, state.seconds

    def synced_checkpoint(path: Path | None = None, rotate: bool = True) -> None:
        t = time.perf_counter()
        comm["bytes"] += replicas.broadcast_buffers(trainee.model)
        comm["seconds"] += time.perf_counter() - t
        checkpoint(path, rotate)

    def roll_back(reason: str) -> None:
        nonlocal bad_in_row
        if state.rollbacks >= opts.max_rollbacks:
            raise TurboNerfError(
                f"training diverged ({reason}) and still did after {state.rollbacks} rollbacks with the learning rate "
                f"halved each time; the last good checkpoint (step {last_ckpt_step}) is kept: lower the learning rate "
                "(--set lr=...) or check the scene",
                trainee.checkpoint,
            )
        seconds, rollbacks, scale = state.seconds, state.rollbacks + 1, state.lr_scale * 0.5
        generator_state = trainee.generator.get_state() if trainee.generator is not None and not main else None
        restored = restore_trainee(trainee, method, device)
        if generator_state is not None:  # the checkpoint holds rank 0's batch generator
            trainee.generator.set_state(generator_state)
        state.step, state.last_psnr = restored.step, restored.last_psnr
        state.seconds, state.rollbacks, state.lr_scale = seconds, rollbacks, scale
        bad_in_row = 0
        advance_bar()
        msg = f"{reason}: rolled back to step {state.step} with the learning rate x{scale:g}"
        if main:
            bar.write(f"warning: {msg}") if opts.progress else print(f"warning: {msg}", file=sys.stderr)

    try:
        with sigterm_as_keyboard_interrupt(), open(log_path if main else os.devnull, "a") as log:
            while state.step < opts.max_steps and state.seconds < opts.max_seconds:
                t0 = time.perf_counter()
                step = state.step
                if opts.schedule is None:
                    factor = trainee.lr_factor(step)
                else:
                    factor = opts.schedule(budget_progress(step, state.seconds, opts.max_steps, opts.max_seconds))
                for g, base in zip(optimizer.param_groups, base_lrs):
                    g["lr"] = base * factor * state.lr_scale
                with runtime.autocast(device, opts.bf16):
                    for cb in callbacks:
                        cb.before_step(step)
                    out = step_fn(step)
                optimizer.zero_grad(set_to_none=True)
                loss = float(out.loss.detach())
                finite = math.isfinite(loss)
                if finite:
                    out.loss.backward()
                    finite = grads_finite(params)
                if replicas.distributed:
                    tc = time.perf_counter()
                    finite = replicas.agree([0.0 if finite else 1.0])[0] == 0.0  # one rank's NaN skips the step everywhere
                    if finite:
                        comm["bytes"] += replicas.average_gradients(params)
                    comm["seconds"] += time.perf_counter() - tc
                state.seconds += time.perf_counter() - t0
                if not finite:
                    optimizer.zero_grad(set_to_none=True)
                    bad_in_row += 1
                    log.write(json_line({"step": step + 1, "skipped": "non-finite loss or gradient", "loss": loss}) + "\n")
                    if bad_in_row >= opts.bad_steps_before_rollback:
                        roll_back(f"{bad_in_row} steps in a row had a non-finite loss or gradient")
                    continue
                bad_in_row = 0
                t1 = time.perf_counter()
                optimizer.step()
                for cb in callbacks:
                    cb.after_step(step, out)
                state.step += 1
                if replicas.distributed:
                    if state.step % opts.sync_every == 0:
                        comm["bytes"] += replicas.broadcast_buffers(trainee.model)
                    state.seconds = replicas.agree([state.seconds + time.perf_counter() - t1])[0]
                else:
                    state.seconds += time.perf_counter() - t1
                state.last_psnr = mse_to_psnr(out.stats.get("mse", loss))
                advance_bar()
                if state.step % opts.log_every == 0 or state.step == 1:
                    left = min((opts.max_steps - state.step) * state.seconds / state.step, opts.max_seconds - state.seconds)
                    bar.set_postfix(step=state.step, loss=f"{loss:.4f}", psnr=f"{state.last_psnr:.2f}", eta=f"{left / 60:.1f}min", refresh=False)
                    rec = {"step": state.step, "seconds": round(state.seconds, 3), "loss": loss, "psnr": state.last_psnr,
                           "lr": optimizer.param_groups[0]["lr"], **out.stats}
                    if replicas.distributed:
                        rec |= {"comm_seconds": round(comm["seconds"], 4), "comm_mb": round(comm["bytes"] / 2**20, 2)}
                        comm["seconds"], comm["bytes"] = 0.0, 0
                    log.write(json_line(rec) + "\n")
                    log.flush()
                try:
                    if snapshots and state.seconds >= 60.0 * snapshots[0]:
                        synced_checkpoint(trainee.checkpoint.with_name(f"snapshot_{snapshots[0]:g}min.safetensors"), rotate=False)
                        snapshots.pop(0)
                    if checkpoint_due(state.step, last_ckpt_step, state.seconds, last_ckpt_seconds, opts.checkpoint_every, opts.checkpoint_minutes):
                        synced_checkpoint()
                except NonFiniteCheckpoint as err:
                    roll_back(f"the model holds non-finite values ({err.problem})")
            if replicas.distributed:
                replicas.broadcast_buffers(trainee.model)
                prints = replicas.gather(state_fingerprint(trainee.model))
                log.write(json_line({"step": state.step, "replicas": replicas.world_size, "fingerprints": prints}) + "\n")
                if len(set(prints)) != 1:
                    raise TurboNerfError(
                        f"the {replicas.world_size} replicas of the model differ at the end of training (fingerprints "
                        f"{', '.join(p[:12] for p in prints)}); rank 0's state is saved", trainee.checkpoint
                    )
    except (KeyboardInterrupt, ReplicaLost) as stop:
        # A lost replica and the launcher's SIGTERM often arrive together: whichever comes first,
        # the closing checkpoint is written with both signals held off, so the second cannot cut it.
        with signals_held():
            bar.close()
            if isinstance(stop, KeyboardInterrupt) or main:  # a lost replica: rank 0 keeps what it trained
                _final_save(checkpoint, state, last_ckpt_step)
        if isinstance(stop, ReplicaLost):
            raise
        raise TrainingInterrupted(
            f"interrupted at step {state.step}; checkpoint saved to {trainee.checkpoint} (continue with --resume)"
        ) from None
    bar.close()
    _final_save(checkpoint, state, last_ckpt_step)
    replicas.barrier()  # nobody leaves before rank 0's checkpoint is on disk
    return state


def _final_save(checkpoint: Callable, state: LoopState, last_step: int) -> None:
    """The closing checkpoint, unless the latest one already holds this step (rotating a copy of
    it into ``previous`` would push out the last distinct checkpoint)."""
    if state.step != last_step:
        try:
            checkpoint()
        except NonFiniteCheckpoint:
            pass  # the last good checkpoint stays; the next run resumes from it
