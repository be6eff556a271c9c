"""Process-level settings that make torch fast on a small CPU: allocator, matmul precision, threads."""

from __future__ import annotations

import ctypes
import ctypes.util
import os

import torch

from turbonerf.errors import TurboNerfError

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


def tune_allocator() -> bool:
    """Raise glibc's mmap and trim thresholds so large temporary tensors reuse heap memory
    instead of being mmapped and page-faulted afresh each time (about 2x faster training steps
    on the development CPU). Same effect as ``MALLOC_MMAP_THRESHOLD_`` set before start-up.
    Returns False where there is no glibc (macOS, Windows, musl).
    """
    name = ctypes.util.find_library("c")
    if name is None or os.name != "posix":
        return False
    try:
        libc = ctypes.CDLL(name)
        ok = libc.mallopt(_M_MMAP_THRESHOLD, 1 << 30) == 1
        ok &= libc.mallopt(_M_TRIM_THRESHOLD, 1 << 30) == 1
        return bool(ok)
    except (OSError, AttributeError):
        return False


def resolve_device(name: str) -> torch.device:
    """'auto' -> cuda when available, else cpu; otherwise the named device, checked: an unknown
    name or a CUDA device this machine does not have is a one-line error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise TurboNerfError(f"unknown --device '{name}' (use auto, cpu or cuda[:N])") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise TurboNerfError(f"--device {name}: no CUDA device on this machine (use --device cpu or auto)")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise TurboNerfError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif device.type != "cpu":
        raise TurboNerfError(f"--device {name}: only cpu and cuda devices are supported")
    return device


def configure(device: torch.device, threads: int | None = None) -> None:
    """Allocator, matmul precision and thread count for a run on ``device``."""
    tune_allocator()
    torch.set_float32_matmul_precision("medium" if device.type == "cpu" else "high")
    if threads:
        torch.set_num_threads(threads)


def autocast(device: torch.device, enabled: bool = True):
    """bf16 autocast context (on CPU it is ~2x faster for the MLPs than fp32)."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled)
