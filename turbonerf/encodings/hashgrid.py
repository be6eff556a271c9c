"""Multiresolution hash encoding (Müller et al., "Instant Neural Graphics Primitives", 2022).

Level l has resolution N_l = floor(N_min * b^l) with b = exp((ln N_max - ln N_min) / (L - 1)).
A point x in [0, 1]^3 falls in the cell floor(x * N_l); the features stored at the 8 corners of
that cell (vertices 0..N_l per axis) are interpolated trilinearly. Levels whose dense vertex grid
(N_l + 1)^3 fits in the table (2^log2_table_size entries) index it densely; finer levels use the
paper's spatial hash  (x * 1) xor (y * 2654435761) xor (z * 805459861)  mod T  (T a power of two,
so this equals the CUDA implementation's uint32 arithmetic).

All levels live in one flat table [E, F] (per-level offsets), so a lookup over all levels is a
single gather. Two implementations:

* ``hash_encode_torch``: plain torch, vectorised over points, levels and corners; gradients flow
  to the table (and to the points). The reference, and the path used on GPUs.
* ``hash_encode_numba``: numba kernels for F = 2 (forward parallel over level x point-chunk
  jobs, backward parallel over levels, whose table slices are disjoint, so no atomics are
  needed) behind a ``torch.autograd.Function``; gradients flow to the table only. Parity with
  the reference is tested. On the 2-core development CPU (100 k points along rays, paper
  defaults) it ran 0.8-1.8 M points/s forward and 0.4-0.6 M points/s forward+backward (the
  spread is other load on the shared cores), against ~0.15 / ~0.11 for the reference.
  Level-major loops keep one level's 4 MB slice of the table hot; that and keeping the two
  features in registers each gave ~2x over the point-major loop. Since then (BENCHMARKS.md,
  "Instant-NGP reaches 24 / 28 / 30 dB"): the hash's modulo is a mask, hashed levels prefetch
  the rows of the point ``PREFETCH_AHEAD`` ahead (the kernels wait on memory, not arithmetic),
  and the backward deals the levels out evenly over the threads: on a lego training batch
  1.7x forward, 2.2x backward, 1.34x per Instant-NGP training step, bit-identical.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numba
import numpy as np
import torch
from torch import Tensor, nn

from turbonerf.prefetch import prefetch

PRIMES = (1, 2654435761, 805459861)
"""the spatial-hash primes of the paper, one per axis"""
PREFETCH_AHEAD = 8
"""numba kernels: request the table rows of the point this many points ahead (memory latency
dominates: about 1.35x forward and 1.5x backward on the development CPU, on its own)"""


@dataclass(frozen=True)
class HashGridLayout:
    """Static description of the levels of a hash grid.

    Attributes:
        resolutions: [L] N_l, cells per axis of each level.
        sizes: [L] table entries of each level (min(T, (N_l + 1)^3)).
        offsets: [L + 1] first entry of each level in the flat table; offsets[-1] = E.
        hashed: [L] whether the level uses the spatial hash (else dense indexing).
    """

    resolutions: tuple[int, ...]
    sizes: tuple[int, ...]
    offsets: tuple[int, ...]
    hashed: tuple[bool, ...]

    @property
    def n_levels(self) -> int:
        return len(self.resolutions)

    @property
    def n_entries(self) -> int:
        return self.offsets[-1]


def hashgrid_layout(n_levels: int, log2_table_size: int, base_resolution: int, max_resolution: int) -> HashGridLayout:
    """Resolutions, per-level table sizes and offsets of a hash grid (see module docstring)."""
    if n_levels < 1:
        raise ValueError("n_levels must be >= 1")
    table = 1 << log2_table_size
    growth = math.exp((math.log(max_resolution) - math.log(base_resolution)) / (n_levels - 1)) if n_levels > 1 else 1.0
    resolutions, sizes, hashed, offsets = [], [], [], [0]
    for level in range(n_levels):
        res = int(math.floor(base_resolution * growth**level + 1e-6))
        dense = (res + 1) ** 3
        size = min(table, dense)
        resolutions.append(res)
        sizes.append(size)
        hashed.append(dense > table)
        offsets.append(offsets[-1] + size)
    return HashGridLayout(tuple(resolutions), tuple(sizes), tuple(offsets), tuple(hashed))


def _level_tensors(layout: HashGridLayout, device) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Per-level resolution [L] (float), index multipliers [L, 3], hashed flag [L], offset [L] (long)."""
    res = torch.tensor(layout.resolutions, dtype=torch.float32, device=device)
    mult = []
    for r, h in zip(layout.resolutions, layout.hashed):
        mult.append(PRIMES if h else (1, r + 1, (r + 1) ** 2))
    mult_t = torch.tensor(mult, dtype=torch.long, device=device)
    hashed = torch.tensor(layout.hashed, dtype=torch.bool, device=device)
    offsets = torch.tensor(layout.offsets[:-1], dtype=torch.long, device=device)
    return res, mult_t, hashed, offsets


def hash_encode_torch(x: Tensor, table: Tensor, layout: HashGridLayout) -> Tensor:
    """Plain-torch hash encoding (the reference).

    Args:
        x: [N, 3] points in [0, 1]^3 (clamped; NaN -> 0).
        table: [E, F] feature table, E = layout.n_entries.
        layout: the levels.
    Returns:
        [N, L * F] features, level-major (level 0's F features first), in the table's dtype.
    """
    n = x.shape[0]
    f = table.shape[1]
    res, mult, hashed, offsets = _level_tensors(layout, x.device)
    x = x.to(table.dtype).nan_to_num(0.0).clamp(0.0, 1.0)
    pos = x[:, None, :] * res[None, :, None]  # [N, L, 3]
    cell = torch.minimum(pos.detach().floor(), (res - 1)[None, :, None])
    frac = pos - cell  # [N, L, 3], in [0, 1]
    cell = cell.long()
    bits = torch.tensor([[(c >> k) & 1 for k in range(3)] for c in range(8)], dtype=torch.long, device=x.device)
    corners = cell[:, :, None, :] + bits[None, None]  # [N, L, 8, 3]
    scaled = corners * mult[None, :, None, :]
    dense_idx = scaled.sum(-1)
    hash_idx = scaled[..., 0] ^ scaled[..., 1] ^ scaled[..., 2]
    sizes = torch.tensor(layout.sizes, dtype=torch.long, device=x.device)
    hash_idx = hash_idx % sizes[None, :, None]
    idx = torch.where(hashed[None, :, None], hash_idx, dense_idx) + offsets[None, :, None]  # [N, L, 8]
    bitsf = bits.to(frac.dtype)
    w = (frac[:, :, None, :] * bitsf + (1.0 - frac[:, :, None, :]) * (1.0 - bitsf)).prod(-1)  # [N, L, 8]
    feats = table.index_select(0, idx.reshape(-1)).reshape(n, layout.n_levels, 8, f)
    out = (w[..., None] * feats).sum(2)  # [N, L, F]
    return out.reshape(n, layout.n_levels * f)


# ---------------------------------------------------------------------------------------------
# numba fast path


@numba.njit(cache=True, inline="always")
def _corner_index(cx, cy, cz, res, size, hashed, offset):
    if hashed:
        h = (cx * np.int64(PRIMES[0])) ^ (cy * np.int64(PRIMES[1])) ^ (cz * np.int64(PRIMES[2]))
        return offset + (h & (size - 1))  # size is a power of two for hashed levels; h >= 0
    return offset + cx + cy * (res + 1) + cz * (res + 1) * (res + 1)


@numba.njit(cache=True, inline="always")
def _unit_clamp(v):
    """Clamp to [0, 1], NaN -> 0 (a NaN must never become an index)."""
    if not v > np.float32(0.0):
        return np.float32(0.0)
    return min(v, np.float32(1.0))


@numba.njit(cache=True, inline="always")
def _cell_and_frac(x, i, res):
    fres = np.float32(res)
    px = _unit_clamp(x[i, 0]) * fres
    py = _unit_clamp(x[i, 1]) * fres
    pz = _unit_clamp(x[i, 2]) * fres
    cx = min(np.int64(math.floor(px)), res - 1)
    cy = min(np.int64(math.floor(py)), res - 1)
    cz = min(np.int64(math.floor(pz)), res - 1)
    return cx, cy, cz, px - np.float32(cx), py - np.float32(cy), pz - np.float32(cz)


@numba.njit(cache=True, inline="always")
def _corner_weight(c, fx, fy, fz):
    wx = fx if c & 1 else np.float32(1.0) - fx
    wy = fy if (c >> 1) & 1 else np.float32(1.0) - fy
    wz = fz if (c >> 2) & 1 else np.float32(1.0) - fz
    return wx * wy * wz


@numba.njit(cache=True, inline="always")
def _prefetch_corners(x, j, res, size, offset, flat):
    """Ask for the table rows of point j's cell at a hashed level: the four (y, z) corners at
    x = cx (the x + 1 corner is the next row, since x's prime is 1, so it is in the same cache
    line almost always). ``flat``: the table as a 1-D array [E * 2]."""
    cx, cy, cz, _, _, _ = _cell_and_frac(x, j, res)
    for c in range(4):
        idx = _corner_index(cx, cy + (c & 1), cz + (c >> 1), res, size, True, offset)
        prefetch(flat, 2 * idx)


@numba.njit(cache=True, parallel=True, nogil=True)
def _hash_forward_f2(x, table, res_arr, size_arr, hashed_arr, offset_arr, out):
    """out[i, 2l:2l+2] = trilinear interpolation of level l's table at x[i] (F = 2).

    Level-major jobs (level x chunk of points): each job touches one level's slice of the
    table, which keeps the working set in cache (about 2x faster than point-major here); the
    two features are accumulated in registers. At hashed levels the rows of the point
    ``PREFETCH_AHEAD`` ahead are requested before the current point is read.
    """
    n = x.shape[0]
    n_levels = res_arr.shape[0]
    flat = table.reshape(-1)
    n_chunks = 64
    chunk = (n + n_chunks - 1) // n_chunks
    for job in numba.prange(n_levels * n_chunks):
        lv = job // n_chunks
        res = res_arr[lv]
        size = size_arr[lv]
        hashed = hashed_arr[lv]
        offset = offset_arr[lv]
        hi = min(n, (job % n_chunks + 1) * chunk)
        for i in range((job % n_chunks) * chunk, hi):
            if hashed and i + PREFETCH_AHEAD < hi:
                _prefetch_corners(x, i + PREFETCH_AHEAD, res, size, offset, flat)
            cx, cy, cz, fx, fy, fz = _cell_and_frac(x, i, res)
            a0 = np.float32(0.0)
            a1 = np.float32(0.0)
            for c in range(8):
                w = _corner_weight(c, fx, fy, fz)
                idx = _corner_index(cx + (c & 1), cy + ((c >> 1) & 1), cz + ((c >> 2) & 1), res, size, hashed, offset)
                a0 += w * table[idx, 0]
                a1 += w * table[idx, 1]
            out[i, 2 * lv] = a0
            out[i, 2 * lv + 1] = a1


@numba.njit(cache=True, parallel=True, nogil=True)
def _hash_backward_f2(x, grad_out, res_arr, size_arr, hashed_arr, offset_arr, level_order, grad_table):
    """grad_table += d(sum(out * grad_out)) / d(table) (F = 2).

    Parallel over levels: each level owns a disjoint slice of the table, so the scatter-adds
    need no atomics and the result is deterministic. ``level_order`` [L]: the order the levels
    are handed out in (see :func:`_balanced_level_order`). Rows are prefetched as in the forward.
    """
    n = x.shape[0]
    flat = grad_table.reshape(-1)
    for k in numba.prange(level_order.shape[0]):
        lv = level_order[k]
        res = res_arr[lv]
        size = size_arr[lv]
        hashed = hashed_arr[lv]
        offset = offset_arr[lv]
        for i in range(n):
            if hashed and i + PREFETCH_AHEAD < n:
                _prefetch_corners(x, i + PREFETCH_AHEAD, res, size, offset, flat)
            cx, cy, cz, fx, fy, fz = _cell_and_frac(x, i, res)
            g0 = grad_out[i, 2 * lv]
            g1 = grad_out[i, 2 * lv + 1]
            for c in range(8):
                w = _corner_weight(c, fx, fy, fz)
                idx = _corner_index(cx + (c & 1), cy + ((c >> 1) & 1), cz + ((c >> 2) & 1), res, size, hashed, offset)
                grad_table[idx, 0] += w * g0
                grad_table[idx, 1] += w * g1


def _balanced_level_order(layout: HashGridLayout, threads: int) -> np.ndarray:
    """[L] int64: the levels in the order that splits them evenly over ``threads`` threads.

    numba hands each thread one contiguous run of a ``prange``; in level order the first run
    would get the small dense levels (cached, fast) and the last the hashed ones (a cache miss
    per corner), so one thread would do most of the work. Levels are dealt by size, largest
    first, to the threads in turn, and each thread's levels are laid out as one run.
    """
    by_size = sorted(range(layout.n_levels), key=lambda lv: -layout.sizes[lv])
    return np.asarray([lv for t in range(threads) for lv in by_size[t::threads]], dtype=np.int64)


def _layout_arrays(layout: HashGridLayout) -> tuple[np.ndarray, ...]:
    return (
        np.asarray(layout.resolutions, dtype=np.int64),
        np.asarray(layout.sizes, dtype=np.int64),
        np.asarray(layout.hashed, dtype=np.bool_),
        np.asarray(layout.offsets[:-1], dtype=np.int64),
    )


def _match_torch_threads() -> None:
    """Run the numba kernels on as many threads as torch uses (a setting, not a constant: on a
    shared 2-core machine one thread can be several times faster than two)."""
    numba.set_num_threads(max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS)))


class _HashEncodeNumba(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, table: Tensor, layout: HashGridLayout) -> Tensor:
        _match_torch_threads()
        xs = x.detach().to(torch.float32).contiguous()
        tab = table.detach().contiguous()
        out = torch.empty((xs.shape[0], layout.n_levels * tab.shape[1]), dtype=torch.float32)
        if xs.shape[0]:
            _hash_forward_f2(xs.numpy(), tab.numpy(), *_layout_arrays(layout), out.numpy())
        ctx.save_for_backward(xs)
        ctx.layout = layout
        ctx.table_shape = tab.shape
        return out

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        _match_torch_threads()
        (xs,) = ctx.saved_tensors
        grad_table = torch.zeros(ctx.table_shape, dtype=torch.float32)
        if xs.shape[0]:
            g = grad_out.to(torch.float32).contiguous()
            order = _balanced_level_order(ctx.layout, numba.get_num_threads())
            _hash_backward_f2(xs.numpy(), g.numpy(), *_layout_arrays(ctx.layout), order, grad_table.numpy())
        return None, grad_table, None


def hash_encode_numba(x: Tensor, table: Tensor, layout: HashGridLayout) -> Tensor:
    """Numba hash encoding (CPU, float32 table [E, 2]): same contract as ``hash_encode_torch`` except
    that no gradient flows to ``x``.

    Args:
        x: [N, 3] points in [0, 1]^3 (clamped).
        table: [E, 2] float32 CPU table.
    Returns:
        [N, L * 2] float32.
    """
    return _HashEncodeNumba.apply(x, table, layout)


class HashEncoding(nn.Module):
    """Multiresolution hash encoding with a learnable table.

    Args:
        n_levels: L (paper: 16).
        features_per_level: F (paper: 2).
        log2_table_size: log2 T, entries per hashed level (paper: 14-24; 19 is the default).
        base_resolution: N_min (paper: 16).
        max_resolution: N_max (2048 for synthetic scenes).
        backend: "auto" (numba on CPU for F = 2 when ``x`` needs no gradient, torch otherwise),
            "numba" or "torch".
        init_scale: table init uniform(-init_scale, init_scale) (paper: 1e-4).
    """

    def __init__(
        self,
        n_levels: int = 16,
        features_per_level: int = 2,
        log2_table_size: int = 19,
        base_resolution: int = 16,
        max_resolution: int = 2048,
        backend: str = "auto",
        init_scale: float = 1e-4,
    ):
        super().__init__()
        if backend not in ("auto", "numba", "torch"):
            raise ValueError(f"backend must be auto, numba or torch, not {backend!r}")
        self.layout = hashgrid_layout(n_levels, log2_table_size, base_resolution, max_resolution)
        self.backend = backend
        self.features_per_level = features_per_level
        self.table = nn.Parameter(torch.empty(self.layout.n_entries, features_per_level).uniform_(-init_scale, init_scale))

    @property
    def out_dim(self) -> int:
        return self.layout.n_levels * self.features_per_level

    def uses_numba(self, x: Tensor) -> bool:
        if self.backend == "torch":
            return False
        cpu_fp32 = self.table.device.type == "cpu" and self.table.dtype == torch.float32 and self.features_per_level == 2
        if self.backend == "numba":
            if not cpu_fp32:
                raise ValueError("the numba hash encoding needs a float32 table on the CPU with features_per_level=2")
            return True
        return cpu_fp32 and not x.requires_grad

    def forward(self, x: Tensor) -> Tensor:
        """x: [N, 3] in [0, 1]^3 -> [N, L * F] float32 features."""
        if self.uses_numba(x):
            return hash_encode_numba(x, self.table, self.layout)
        return hash_encode_torch(x, self.table, self.layout)
