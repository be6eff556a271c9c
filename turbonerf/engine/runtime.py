"""Process-level settings that make torch fast on a small CPU: allocator, matmul precision, threads."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import shutil
from functools import lru_cache

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


def configure(device: torch.device, threads: int | None = None, bf16: bool = False) -> None:
    """Allocator, matmul precision and thread count for a run on ``device``.

    With ``bf16`` (the run's ``--bf16``), float32 matmuls may use reduced precision: "medium" on a
    CPU, which on hosts with native bf16 (AMX / AVX512-BF16) makes oneDNN compute *every* float32
    matmul in bf16 (measured: max error 0.1 on a 4096x64 @ 64x64 product against 1e-5), "high"
    (TF32) on CUDA. Without it, "highest": true float32, so that ``--no-bf16`` means fp32 throughout.
    """
    tune_allocator()
    if not bf16:
        torch.set_float32_matmul_precision("highest")
    else:
        torch.set_float32_matmul_precision("medium" if device.type == "cpu" else "high")
    if threads:
        torch.set_num_threads(threads)


@lru_cache(maxsize=None)
def native_bf16(device_type: str) -> bool:
    """Whether this machine computes bf16 matmuls natively on ``device_type`` ("cpu" / "cuda").

    CPUs: only with AVX512-BF16 or AMX-BF16 (e.g. AMD Zen 4, Intel Sapphire Rapids). Elsewhere
    torch emulates bf16, and autocast made the MLPs ~20x *slower* than fp32 (measured: a
    65536x64 @ 64x64 matmul, 1 thread, AMD EPYC Zen 3 (AVX2 only): 12.5 ms fp32, 261 ms bf16),
    which made Instant-NGP train ~10x slower on such hosts. CUDA: ``torch.cuda.is_bf16_supported``.
    The answer is a fact of the hardware, so it is cached.
    """
    if device_type == "cuda":
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    if device_type != "cpu":
        return False
    try:
        caps = torch.cpu.get_capabilities()
    except (AttributeError, RuntimeError):  # older torch: no capability query, be safe
        return False
    return bool(caps.get("avx512_bf16") or caps.get("amx_bf16"))


def bf16_used(device: torch.device, requested: bool = False) -> bool:
    """Whether ``--bf16`` (``requested``) takes effect on ``device``: only where bf16 is native
    (:func:`native_bf16`); elsewhere runs fall back to fp32, which is faster there."""
    return bool(requested) and native_bf16(device.type)


def autocast(device: torch.device, enabled: bool = False):
    """bf16 autocast context where this hardware has native bf16 (on such CPUs it is ~2x faster
    for the MLPs than fp32); fp32 elsewhere, where emulated bf16 is ~20x slower (:func:`native_bf16`)."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16_used(device, enabled))


def compile_networks(model: torch.nn.Module, device: torch.device) -> list[str]:
    """``torch.compile`` each direct child of ``model`` that holds parameters, in place
    (``nn.Module.compile``: the parameters and the checkpoint's keys are unchanged). Returns the
    names of the compiled children.

    Compilation happens on the first call (about 30 s for MobileR2L on 2 cores, inside the
    training budget). It paid 1.15x per step for the MobileR2L ``cpu`` preset in bf16, and nothing
    with a 50x50 ray grid (stride 4), where the 1x1-convolution body dominates (BENCHMARKS.md).
    On the CPU inductor writes C++, so a compiler must be on the PATH: refused here with one line
    when none is, rather than failing with a long trace at the first step.
    """
    if device.type == "cpu" and not any(shutil.which(c) for c in (os.environ.get("CXX", "g++"), "g++", "clang++", "c++")):
        raise TurboNerfError("--compile needs a C++ compiler on the PATH (g++ or clang++) for torch.compile on the CPU")
    names = []
    for name, child in model.named_children():
        if any(True for _ in child.parameters()):
            child.compile()
            names.append(name)
    return names
