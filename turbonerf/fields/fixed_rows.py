"""Evaluate a small MLP on a bounded set of row counts, whatever the number of points.

Why: an occupancy-grid method hands its MLPs a different number of samples at every training
step, grid refresh and render round. On CPUs with native bf16 (AVX512-BF16 / AMX: AMD Zen 4,
Intel Sapphire Rapids) torch runs bf16 matmuls (autocast) and fp32 ones under
``set_float32_matmul_precision("medium")`` through oneDNN, which builds (JIT-compiles) a
primitive for every new matrix shape and keeps it: resident memory then grows with the number
of distinct shapes seen, i.e. with the steps. Instant-NGP on the fern capture grew to 4.7 GB
after 100 steps and 6.7 GB after 250 that way (BENCHMARKS.md). The same oneDNN linear called on
600 distinct row counts grew by ~1.6 GB on a Zen 3 host, and stayed flat on 600 calls drawn from
a few bucketed counts.

:func:`apply_in_fixed_rows` cuts the rows into chunks of ``chunk`` rows and pads the last one
with zero rows to the next of a few sizes, so a module only ever sees
:func:`row_counts` (13 shapes for the default chunk). The padding is at most ``chunk / 8 - 1``
rows per call (a few percent of a training step's samples). Outputs and gradients equal those
of one call on all rows (zero rows are sliced away and add nothing to a weight gradient).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

CHUNK_ROWS = 1 << 16
"""rows per chunk of :func:`apply_in_fixed_rows`"""
MIN_ROWS = 256
"""the smallest padded row count"""


def padded_rows(m: int, chunk: int = CHUNK_ROWS) -> int:
    """The row count a final chunk of ``m`` rows (0 < m <= chunk) is padded to: ``chunk`` itself,
    else the next multiple of chunk / 8 when m >= chunk / 8, else the next power of two (at
    least :data:`MIN_ROWS`)."""
    granule = max(chunk // 8, 1)
    if m >= granule:
        return min(chunk, -(-m // granule) * granule)
    return min(granule, max(MIN_ROWS, 1 << (m - 1).bit_length()))


def row_counts(chunk: int = CHUNK_ROWS) -> set[int]:
    """Every row count :func:`apply_in_fixed_rows` may hand the module."""
    return {padded_rows(m, chunk) for m in range(1, chunk + 1)}


def apply_in_fixed_rows(fn: Callable[[Tensor], Tensor], x: Tensor, chunk: int = CHUNK_ROWS) -> Tensor:
    """``fn(x)`` for a row-wise ``fn`` (an MLP: [M, C] -> [M, D], rows independent, zero rows
    harmless), computed on chunks whose row counts come from :func:`row_counts` only.

    CPU tensors only; elsewhere (CUDA: no per-shape state) ``fn(x)`` is returned directly.

    Args:
        fn: row-wise function.
        x: [N, C].
    Returns:
        [N, D], as ``fn(x)`` (autograd flows through).
    """
    n = x.shape[0]
    if x.device.type != "cpu" or n == 0:
        return fn(x)
    outs = []
    for start in range(0, n, chunk):
        part = x[start : start + chunk]
        m = part.shape[0]
        rows = padded_rows(m, chunk)
        if rows != m:
            part = torch.cat([part, part.new_zeros(rows - m, *part.shape[1:])])
        y = fn(part)
        outs.append(y[:m] if rows != m else y)
    return outs[0] if len(outs) == 1 else torch.cat(outs)
