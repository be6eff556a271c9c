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


def save_checkpoint(path: Path, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    """Atomically write tensors + JSON metadata; the old file at ``path`` becomes ``previous``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    contiguous = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    save_file(contiguous, str(tmp), metadata={"turbonerf": json.dumps({"format_version": FORMAT_VERSION, **meta})})
    if path.exists():
        os.replace(path, path.with_name("previous" + path.suffix))
    os.replace(tmp, path)


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
    meta = json.loads(raw)
    if meta.get("format_version", 0) > FORMAT_VERSION:
        raise TurboNerfError(f"checkpoint format {meta['format_version']} is newer than this turbonerf ({FORMAT_VERSION})", path)
    return meta


def load_checkpoint(path: Path, device: str | torch.device = "cpu") -> tuple[dict[str, torch.Tensor], dict]:
    """Load (tensors, metadata); a corrupt or truncated file raises TurboNerfError naming it."""
    meta = read_checkpoint_meta(path)
    try:
        tensors = load_file(str(path), device=str(device))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise TurboNerfError(f"corrupt checkpoint ({e})", path) from None
    return tensors, meta
