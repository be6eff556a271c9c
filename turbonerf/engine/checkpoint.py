"""Checkpoints: tensors in safetensors (never pickle), metadata as JSON, written atomically.

A run folder holds ``run.json`` (method, config, data, options) and
``checkpoints/latest.safetensors``; the previous checkpoint is kept as ``previous.safetensors``
so that a crash while writing never leaves the run without a loadable checkpoint.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from turbonerf.errors import TurboNerfError
from turbonerf.io.files import temp_path

FORMAT_VERSION = 1


def optimizer_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], list[dict]]:
    """Flatten an optimizer's state into named tensors plus its JSON-able param-group settings."""
    sd = opt.state_dict()
    tensors = {}
    for pid, state in sd["state"].items():
        for key, value in state.items():
            tensors[f"optim.{pid}.{key}"] = torch.as_tensor(value).clone()
    groups = [{k: v for k, v in g.items()} for g in sd["param_groups"]]
    return tensors, groups


def load_optimizer_tensors(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], groups: list[dict]) -> None:
    """Inverse of :func:`optimizer_tensors`."""
    state: dict[int, dict] = {}
    for name, value in tensors.items():
        _, pid, key = name.split(".", 2)
        state.setdefault(int(pid), {})[key] = value
    opt.load_state_dict({"state": state, "param_groups": groups})


class NonFiniteCheckpoint(TurboNerfError):
    """Raised instead of writing a checkpoint whose tensors hold NaN or inf."""


def non_finite_tensors(tensors: dict[str, torch.Tensor]) -> list[str]:
    """Names of the floating-point tensors that hold a NaN or an infinity."""
    return [k for k, v in tensors.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # not supported on this platform / file system
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_checkpoint(path: Path, tensors: dict[str, torch.Tensor], meta: dict, rotate: bool = True) -> None:
    """Atomically and durably write tensors + JSON metadata.

    The file is written under a temporary name, fsynced, and renamed over ``path``; with ``rotate``
    the file that was at ``path`` first becomes ``previous``. Tensors holding NaN or inf are
    never written (:class:`NonFiniteCheckpoint`), so a diverged model cannot push out a good
    checkpoint. A full disk or another write error raises TurboNerfError naming the file, and
    the old checkpoints stay as they were.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    contiguous = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    bad = non_finite_tensors(contiguous)
    if bad:
        raise NonFiniteCheckpoint(f"not saved: {len(bad)} tensor(s) hold NaN or inf (first: {bad[0]})", path)
    tmp = temp_path(path)
    try:
        save_file(contiguous, str(tmp), metadata={"turbonerf": json.dumps({"format_version": FORMAT_VERSION, **meta})})
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
    except (OSError, SafetensorError) as e:
        tmp.unlink(missing_ok=True)
        raise TurboNerfError(f"cannot write checkpoint ({_one_line(e)}); the previous checkpoints are unchanged", path) from None
    if rotate and path.exists():
        os.replace(path, path.with_name("previous" + path.suffix))
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _one_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return lines[0] if lines else type(err).__name__


def clean_orphans(folder: Path) -> list[Path]:
    """Remove temporary files a killed writer left in ``folder`` (ours: ``.NAME.tmpPID``;
    safetensors' own: ``.tmp`` and six random letters); returns what was removed."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for p in folder.iterdir():
        if p.is_file() and p.name.startswith(".") and ".tmp" in p.name:
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed


def read_checkpoint_meta(path: Path) -> dict:
    """The JSON metadata of a checkpoint, without loading its tensors."""
    path = Path(path)
    if not path.is_file():
        raise TurboNerfError("checkpoint not found", path)
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = (f.metadata() or {}).get("turbonerf")
    except (SafetensorError, OSError, ValueError) as e:
        raise TurboNerfError(f"not a readable safetensors checkpoint ({e})", path) from None
    if raw is None:
        raise TurboNerfError("not a turbonerf checkpoint (no turbonerf metadata)", path)
    try:
        meta = json.loads(raw)
    except json.JSONDecodeError as e:
        raise TurboNerfError(f"checkpoint metadata is not valid JSON ({e})", path) from None
    if not isinstance(meta, dict):
        raise TurboNerfError("checkpoint metadata is not a JSON object", path)
    for key, typ in (("step", int), ("method", str)):
        if not isinstance(meta.get(key), typ):
            raise TurboNerfError(f"checkpoint metadata lacks a valid '{key}'", path)
    if not isinstance(meta.get("format_version", 0), int):
        raise TurboNerfError("checkpoint metadata has a non-integer format_version", path)
    if meta.get("format_version", 0) > FORMAT_VERSION:
        raise TurboNerfError(f"checkpoint format {meta['format_version']} is newer than this turbonerf ({FORMAT_VERSION})", path)
    return meta


def load_checkpoint(path: Path, device: str | torch.device = "cpu") -> tuple[dict[str, torch.Tensor], dict]:
    """Load (tensors, metadata); a corrupt or truncated file raises TurboNerfError naming it."""
    meta = read_checkpoint_meta(path)
    try:
        tensors = load_file(str(path), device=str(device))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise TurboNerfError(f"corrupt checkpoint ({_one_line(e)})", path) from None
    return tensors, meta


def previous_of(path: Path) -> Path:
    """The ``previous`` checkpoint kept beside ``path``."""
    return Path(path).with_name("previous" + Path(path).suffix)


def load_checkpoint_or_previous(path: Path, device: str | torch.device = "cpu") -> tuple[dict[str, torch.Tensor], dict, str | None]:
    """:func:`load_checkpoint` of ``path``, or of ``previous`` beside it when ``path`` is missing
    or unreadable (a crash between the two renames of a save, a truncated file). Returns
    (tensors, metadata, a note saying the fallback happened, or None); when neither loads, the
    error about ``path`` is raised."""
    try:
        tensors, meta = load_checkpoint(path, device)
        return tensors, meta, None
    except TurboNerfError as err:
        prev = previous_of(path)
        if Path(path).name == prev.name or not prev.is_file():
            raise
        try:
            tensors, meta = load_checkpoint(prev, device)
        except TurboNerfError:
            raise err from None
        return tensors, meta, f"{err.problem} in {path}; using {prev.name} (step {meta.get('step')})"
