"""NerfTree marcher on the CPU in numba: parallel over rays, 3D-DDA empty-space skipping.

Each ray is clipped to the box of the occupied macro blocks (rays that miss it cost a few
divisions) and walked with a two-level 3D-DDA (Amanatides & Woo):

- over macro blocks of 8^3 coarse cells. Each macro block knows its Chebyshev distance D to the
  nearest occupied block (a distance transform computed when the tree is prepared), so in empty
  space the ray jumps D - 1 blocks at once instead of stepping block by block;
- inside an occupied macro block, over its coarse cells.

Inside an occupied coarse cell the ray takes the lattice samples t_k = near + (k + 1/2) step that
fall in the cell's t-interval, widened by one sample on each side so that rounding can never
skip a sample; every sample is classified by its own position exactly as the numpy reference
does (:mod:`turbonerf.bake.march_numpy` documents the rule), so the image is the same (a sample
inside the cell being walked finds its voxel from that cell's block without another index
lookup). The SH basis is evaluated once per ray and the ray stops once its transmittance falls
below ``t_min``.

Memory is what costs: a sample in an occupied cell is about one cache miss at 800x800, where fine
voxels and pixels have similar footprints. So:

- the coarse index is re-laid out in 8^3 tiles, kept only for occupied macro blocks (2 KB each,
  neighbouring cells in every direction share cache lines; the dense int32 grid would be 226 MB
  at D_c = 384, the tiles of a surface-like scene are a few tens of MB);
- densities and SH stay in separate arrays, so the many near-empty samples of a surface cell
  touch only the 128 bytes of densities of their block; :func:`bake` stores blocks tile by tile;
  SH rows exist only for voxels with density;
- each pool block of at most 64 voxels (D_f <= 4) has a 64-bit occupancy mask and the SH row of
  its first voxel with density (:func:`voxel_masks`): a voxel's SH row is that base plus a
  popcount, instead of a read of the 256-byte ``sh_row`` entries of its block (with the next
  point, 1.10-1.13x a lego frame, the image unchanged; BENCHMARKS.md). Whether a sample's voxel
  has density is as good as random along a ray, so the kernel does not branch on the bit: an
  empty voxel's density is 0 (transmittance 1, weight 0) and its entry in the colour queue is
  overwritten by the next one (1.01-1.05x a lego frame; BENCHMARKS.md);
- a float16 density's transmittance exp(-sigma * step) is read from a 256 KB table of all 65536
  bit patterns, made once per step (:func:`transmittance_table`), instead of decoded and
  exponentiated;
- nearest lookup (the default) colours in two passes: the density march composites weights and
  records (weight, SH row) of each sample with density in a small buffer, prefetching that SH
  record; the buffer is coloured when it is full (``COLOUR_BATCH``) and when the ray ends. The
  SH records of a ray are thus fetched in parallel instead of one cache miss after another
  (1.25-1.6x faster per frame on lego than prefetching a few samples ahead; BENCHMARKS.md); the
  colours are summed in the order the samples were met, so the result is unchanged;
- trilinear lookup keeps one pass and prefetches ahead: the density and SH row number of the
  voxel ``2 * PREFETCH_AHEAD`` samples ahead, and the SH record of the voxel ``PREFETCH_AHEAD``
  samples ahead (whose row number the first prefetch brought in).

Nearest and trilinear lookups are separate inlined functions behind one runtime branch (a single
lookup function with a runtime flag was 5x slower). The ray kernel is compiled with LLVM's
reassociation and contraction allowed (``fastmath`` without the no-NaN / no-inf flags: 1.06x,
images within 6e-8). float16 pools are decoded by the CPU's
half-to-float conversion, emitted as LLVM IR (numba has no float16 type; a 65536-entry lookup
table, the earlier way, costs an L2 read per value). Kernels are compiled on first use and
cached on disk (``cache=True``; no literal or function-typed arguments, which defeat the cache or
cost milliseconds per call).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numba
import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic, overload

from turbonerf.bake.march_numpy import MAX_STEPS
from turbonerf.bake.nerftree import T_MIN, TILE, NerfTree, dilate_mask
from turbonerf.prefetch import prefetch as _prefetch

RAYS_PER_TASK = 64
"""rays a thread takes at a time (neighbouring pixels: coherent memory access)"""
PREFETCH_AHEAD = 3
"""trilinear lookup: prefetch the voxel of the sample this many steps ahead (1.8x faster here)"""
COLOUR_BATCH = 32
"""nearest lookup: samples whose colour is computed together, their SH records fetched meanwhile"""
_INF = 1e30
_TS = 3  # log2(TILE)
_TM = 7  # TILE - 1

@dataclass(frozen=True)
class CpuTree:
    """A tree laid out for the numba kernel.

    Attributes:
        macro_tile: int32 [Dm, Dm, Dm] (Dm = ceil(Dc / 8)): tile of each macro block, -1 when the
            block holds no occupied cell.
        tiles: int32 [T, 8, 8, 8] pool block of each coarse cell of the occupied macro blocks
            (-1 empty; cells beyond Dc are empty).
        macro_dist: uint8 [Dm, Dm, Dm] Chebyshev distance (in blocks) of each macro block to the
            nearest occupied one (0: occupied), capped at 255.
        density: [M * Df^3] flat pool densities, uint16 (float16 bits) or float32 (views of the tree's arrays).
        sh_row: int32 [M * Df^3] row of the SH pool of each voxel, -1 where its density is zero.
        sh: [V * 3K] flat SH coefficients of the voxels with density, same dtype as density.
        lo, scale: float64 [3] box minimum and coarse cells per unit.
        box: float64 [2, 3] the box of the occupied macro blocks in coarse-cell units (rays are
            clipped to it: everything outside is empty).
    """

    macro_tile: np.ndarray
    tiles: np.ndarray
    macro_dist: np.ndarray
    density: np.ndarray
    sh_row: np.ndarray
    sh: np.ndarray
    lo: np.ndarray
    scale: np.ndarray
    box: np.ndarray
    coarse_res: int
    fine_res: int
    sh_degree: int
    cell_dist: np.ndarray | None = None
    """contracted trees: uint8 [Dc, Dc, Dc] Chebyshev distance (in coarse cells) of each cell to
    the nearest occupied one, capped at :data:`CELL_DIST_CAP` (the marcher's finer skip)"""
    vox_mask: np.ndarray | None = None
    """uint64 [M] occupancy bits of each pool block (:func:`voxel_masks`; empty when D_f > 4)"""
    row_base: np.ndarray | None = None
    """int64 [M] SH row of each block's first voxel with density (:func:`voxel_masks`)"""
    tables: dict[float, np.ndarray] = field(default_factory=dict, compare=False, repr=False)
    """:func:`transmittance_table` of each step marched so far (float16 pools; 256 KB each)"""

    def transmittance(self, step: float) -> np.ndarray:
        """float32 [65536] :func:`transmittance_table` of ``step`` for a float16 pool (made on
        first use, kept for later frames); a 1-entry placeholder for a float32 pool."""
        if self.density.dtype != np.uint16:
            return np.ones(1, np.float32)
        key = float(step)
        if key not in self.tables:
            if len(self.tables) >= 8:  # a viewer that tries many steps: keep the newest few
                self.tables.pop(next(iter(self.tables)))
            self.tables[key] = transmittance_table(key)
        return self.tables[key]


CELL_DIST_CAP = 16
"""largest coarse-cell distance a contracted tree's ``cell_dist`` records (farther: the macro blocks' distances)"""


def tile_index(index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Dense int32 [Dc]^3 index -> (macro_tile int32 [Dm]^3, tiles int32 [T, 8, 8, 8])."""
    d = index.shape[0]
    dm = -(-d // TILE)
    padded = np.full((dm * TILE,) * 3, -1, dtype=np.int32)
    padded[:d, :d, :d] = index
    blocks = padded.reshape(dm, TILE, dm, TILE, dm, TILE).transpose(0, 2, 4, 1, 3, 5)  # [Dm]^3 x [8]^3 view
    occupied = (blocks >= 0).any(axis=(3, 4, 5))
    macro_tile = np.full((dm,) * 3, -1, dtype=np.int32)
    macro_tile[occupied] = np.arange(int(occupied.sum()), dtype=np.int32)
    tiles = np.ascontiguousarray(blocks[occupied])
    return macro_tile, tiles


def chebyshev_distance(occ: np.ndarray, cap: int = 255) -> np.ndarray:
    """uint8 grid of the L-infinity distance (in cells) from each cell to the nearest True cell
    of ``occ`` (0 on True cells; ``cap`` where none is closer than cap)."""
    dist = np.full(occ.shape, cap, dtype=np.uint8)
    dist[occ] = 0
    cur = occ.copy()
    for k in range(1, cap):
        if cur.all() or not cur.any():
            break
        nxt = dilate_mask(cur, 1)
        dist[nxt & ~cur] = k
        cur = nxt
    return dist


MASK_VOXELS = 64
"""pool blocks of at most this many voxels (D_f <= 4) get an occupancy mask (:func:`voxel_masks`)"""


def voxel_masks(density: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Occupancy of each pool block as bits: density [M, Df, Df, Df] (Df^3 <= 64) ->
    (mask uint64 [M], bit l set where voxel l of the block has density; base int64 [M], the
    SH row of the block's first voxel with density).

    The SH rows are numbered in voxel order (:func:`turbonerf.bake.nerftree.sh_rows`), so the row
    of voxel l of block m is base[m] + popcount(mask[m] & (2^l - 1)): 12 bytes a block instead of
    the 256 of its ``sh_row`` entries, one cache line for many blocks."""
    m = density.shape[0]
    has = np.asarray(density).reshape(m, int(np.prod(density.shape[1:]))) > 0
    if has.shape[1] > MASK_VOXELS:
        raise ValueError(f"blocks of {has.shape[1]} voxels do not fit a 64-bit mask")
    bits = np.uint64(1) << np.arange(has.shape[1], dtype=np.uint64)
    mask = np.bitwise_or.reduce(np.where(has, bits, np.uint64(0)), axis=1) if m else np.zeros(0, np.uint64)
    base = np.concatenate([[0], np.cumsum(has.sum(1))[:-1]]).astype(np.int64) if m else np.zeros(0, np.int64)
    return np.ascontiguousarray(mask, dtype=np.uint64), base


def prepare_cpu(tree: NerfTree) -> CpuTree:
    """Lay ``tree`` out for :func:`march_cpu`: tiled index and macro distances (the pool is not
    copied; prepare once, reuse across frames)."""
    if tree.density.dtype == np.float16:
        dens, sh = tree.density.reshape(-1).view(np.uint16), tree.sh.reshape(-1).view(np.uint16)
    else:
        dens, sh = tree.density.reshape(-1), tree.sh.reshape(-1)
    lo = tree.aabb[0].astype(np.float64)
    scale = tree.coarse_res / (tree.aabb[1].astype(np.float64) - lo)
    macro_tile, tiles = tile_index(tree.index)
    if tree.fine_res**3 <= MASK_VOXELS:
        masks = voxel_masks(tree.density)
    else:  # the kernel reads sh_row and the density instead
        masks = (np.zeros(0, np.uint64), np.zeros(0, np.int64))
    blocks = np.argwhere(macro_tile >= 0)
    if len(blocks):
        box = np.stack([blocks.min(0) * TILE, np.minimum((blocks.max(0) + 1) * TILE, tree.coarse_res)]).astype(np.float64)
    else:
        box = np.zeros((2, 3))
    return CpuTree(
        macro_tile=macro_tile,
        tiles=tiles,
        macro_dist=chebyshev_distance(macro_tile >= 0),
        density=np.ascontiguousarray(dens),
        sh_row=np.ascontiguousarray(tree.sh_row.reshape(-1)),
        vox_mask=masks[0],
        row_base=masks[1],
        sh=np.ascontiguousarray(sh),
        lo=lo,
        scale=scale,
        box=box,
        coarse_res=tree.coarse_res,
        fine_res=tree.fine_res,
        sh_degree=tree.sh_degree,
        cell_dist=chebyshev_distance(tree.index >= 0, CELL_DIST_CAP) if tree.contracted else None,
    )


# Real SH constants (PlenOctrees / turbonerf.encodings.sh; a test checks they agree).
_C0 = 0.28209479177387814
_C1 = 0.4886025119029199
_C2_0, _C2_1, _C2_2, _C2_3, _C2_4 = 1.0925484305920792, -1.0925484305920792, 0.31539156525252005, -1.0925484305920792, 0.5462742152960396
_C3_0, _C3_1, _C3_2, _C3_3 = -0.5900435899266435, 2.890611442640554, -0.4570457994644658, 0.3731763325901154
_C3_4, _C3_5, _C3_6 = -0.4570457994644658, 1.445305721320277, -0.5900435899266435
_C4_0, _C4_1, _C4_2, _C4_3, _C4_4 = 2.5033429417967046, -1.7701307697799304, 0.9461746957575601, -0.6690465435572892, 0.10578554691520431
_C4_5, _C4_6, _C4_7, _C4_8 = -0.6690465435572892, 0.47308734787878004, -1.7701307697799304, 0.6258357354491761


@intrinsic
def _half_bits_to_f64(typingctx, bits):
    """float16 bit pattern (uint16) -> float64, one hardware conversion (F16C where the CPU has it)
    instead of a read from the 256 KB lookup table."""

    def codegen(context, builder, signature, args):
        h = builder.bitcast(builder.trunc(args[0], ir.IntType(16)), ir.HalfType())
        return builder.fpext(h, ir.DoubleType())

    return types.float64(bits), codegen


@intrinsic
def _popcount(typingctx, x):
    """Set bits of a uint64 (one instruction where the CPU has POPCNT)."""

    def codegen(context, builder, signature, args):
        return builder.ctpop(args[0])

    return types.uint64(x), codegen


@njit(cache=True)
def half_bits_to_f64(bits):
    """[N] uint16 float16 bit patterns -> [N] float64 through :func:`_half_bits_to_f64` (tested
    against numpy's conversion for all 65536 patterns)."""
    out = np.empty(bits.shape[0])
    for i in range(bits.shape[0]):
        out[i] = _half_bits_to_f64(bits[i])
    return out


def _decode(v):  # pragma: no cover - replaced by the overload inside numba
    return float(v)


@overload(_decode, inline="always")
def _decode_impl(v):
    if isinstance(v, types.Integer):
        return lambda v: _half_bits_to_f64(v)
    return lambda v: np.float64(v)


@njit(cache=True, inline="always")
def _sh_basis(x, y, z, degree, out):
    """Real SH basis (``degree`` bands) at unit (x, y, z) into out[:degree**2]."""
    out[0] = _C0
    if degree > 1:
        out[1] = -_C1 * y
        out[2] = _C1 * z
        out[3] = -_C1 * x
    if degree > 2:
        xx, yy, zz = x * x, y * y, z * z
        xy, yz, xz = x * y, y * z, x * z
        out[4] = _C2_0 * xy
        out[5] = _C2_1 * yz
        out[6] = _C2_2 * (2.0 * zz - xx - yy)
        out[7] = _C2_3 * xz
        out[8] = _C2_4 * (xx - yy)
        if degree > 3:
            out[9] = _C3_0 * y * (3.0 * xx - yy)
            out[10] = _C3_1 * xy * z
            out[11] = _C3_2 * y * (4.0 * zz - xx - yy)
            out[12] = _C3_3 * z * (2.0 * zz - 3.0 * xx - 3.0 * yy)
            out[13] = _C3_4 * x * (4.0 * zz - xx - yy)
            out[14] = _C3_5 * z * (xx - yy)
            out[15] = _C3_6 * x * (xx - 3.0 * yy)
        if degree > 4:
            out[16] = _C4_0 * xy * (xx - yy)
            out[17] = _C4_1 * yz * (3.0 * xx - yy)
            out[18] = _C4_2 * xy * (7.0 * zz - 1.0)
            out[19] = _C4_3 * yz * (7.0 * zz - 3.0)
            out[20] = _C4_4 * (zz * (35.0 * zz - 30.0) + 3.0)
            out[21] = _C4_5 * xz * (7.0 * zz - 3.0)
            out[22] = _C4_6 * (xx - yy) * (7.0 * zz - 1.0)
            out[23] = _C4_7 * xz * (xx - 3.0 * yy)
            out[24] = _C4_8 * (xx * (xx - 3.0 * yy) - yy * (3.0 * xx - yy))


@njit(cache=True)
def sh_basis_numba(dirs, degree):
    """[N, 3] unit directions -> [N, degree**2] float64 (for the parity test with turbonerf.encodings.sh)."""
    out = np.zeros((dirs.shape[0], 25))
    for i in range(dirs.shape[0]):
        _sh_basis(dirs[i, 0], dirs[i, 1], dirs[i, 2], degree, out[i])
    return out[:, : degree * degree]


@njit(cache=True)
def _dda_init(o, d, t, cell_size, lo_cell, hi_cell):
    """Cell (in units of ``cell_size``) containing the ray at t, clamped to [lo_cell, hi_cell],
    its step, the t of its next boundary and the t between boundaries."""
    c = int(math.floor((o + t * d) / cell_size))
    c = min(max(c, lo_cell), hi_cell)
    if d > 0.0:
        return c, 1, ((c + 1) * cell_size - o) / d, cell_size / d
    if d < 0.0:
        return c, -1, (c * cell_size - o) / d, -cell_size / d
    return c, 0, _INF, _INF


@njit(cache=True)
def _split(f, df, shift):
    """Fine coordinate -> (coarse cell, voxel within the cell); shifts when Df is a power of 2."""
    if shift >= 0:
        return f >> shift, f & (df - 1)
    c = f // df
    return c, f - c * df


@njit(cache=True, inline="always")
def _block_of(macro_tile, tiles, cx, cy, cz):
    """Pool block of coarse cell (cx, cy, cz) (inside the grid), -1 when empty."""
    t = macro_tile[cx >> _TS, cy >> _TS, cz >> _TS]
    if t < 0:
        return -1
    return tiles[t, cx & _TM, cy & _TM, cz & _TM]


@njit(cache=True, inline="always")
def _exp32(x):
    """exp(x) computed in float32 (libm's expf, cheaper than exp; its relative error of about
    1e-7 is far below the float16 pools' 5e-4 and the parity tests' 1e-5): 5% of a lego frame."""
    return np.float64(math.exp(np.float32(x)))


def _transmittance(d, table, step):  # pragma: no cover - replaced by the overload inside numba
    return math.exp(-float(d) * step)


@overload(_transmittance, inline="always")
def _transmittance_impl(d, table, step):
    """exp(-sigma * step) of a pool density: a read of the per-step table for float16 bits
    (:func:`transmittance_table`), the float32 exponential for float32 pools."""
    if isinstance(d, types.Integer):
        return lambda d, table, step: np.float64(table[d])
    return lambda d, table, step: _exp32(-np.float64(d) * step) if d > 0.0 else 1.0


@njit(cache=True)
def _fill_transmittance(step, out):
    for b in range(65536):
        sigma = _half_bits_to_f64(np.uint16(b))
        out[b] = _exp32(-sigma * step) if sigma > 0.0 else 1.0  # NaN and negative bits: 1 (no density), as the reference's sigma <= 0


def transmittance_table(step: float) -> np.ndarray:
    """float32 [65536]: exp(-sigma * step), in float32 as :func:`_exp32`, for every float16 bit
    pattern sigma (1 where sigma <= 0). A nearest lookup of a float16 pool reads a sample's
    transmittance here instead of decoding its density and taking an exponential."""
    out = np.empty(65536, np.float32)
    _fill_transmittance(float(step), out)
    return out


@njit(cache=True, inline="always")
def _sh_dot(sh, base, basis, k):
    """The three channels' SH logits of the record at sh[base:base + 3k] for the ray's basis."""
    xr, xg, xb = 0.0, 0.0, 0.0
    for j in range(k):
        b = basis[j]
        xr += _decode(sh[base + j]) * b
        xg += _decode(sh[base + k + j]) * b
        xb += _decode(sh[base + 2 * k + j]) * b
    return xr, xg, xb


@njit(cache=True, inline="always")
def _flush_colour(sh, wbuf, rbuf, nb, basis, k, cr, cg, cb):
    """Add the colours of the nb buffered samples (weight wbuf[i], SH row rbuf[i]) to (cr, cg, cb),
    in buffer order (the order the samples were met, so sums match the reference)."""
    nc = 3 * k
    for i in range(nb):
        base = rbuf[i] * nc
        w = wbuf[i]
        if k == 9:  # the default degree, as a constant the compiler unrolls the dot products for
            xr, xg, xb = _sh_dot(sh, base, basis, 9)
        elif k == 4:  # sh_degree 2, likewise
            xr, xg, xb = _sh_dot(sh, base, basis, 4)
        else:
            xr, xg, xb = _sh_dot(sh, base, basis, k)
        cr += w / (1.0 + _exp32(-xr))
        cg += w / (1.0 + _exp32(-xg))
        cb += w / (1.0 + _exp32(-xb))
    return cr, cg, cb


@njit(cache=True, inline="always")
def _add_interpolated_colour(shacc, basis, k, w, cr, cg, cb):
    """(cr, cg, cb) plus w times the colour of the SH that a trilinear lookup left in ``shacc``."""
    xr, xg, xb = 0.0, 0.0, 0.0
    for j in range(k):
        xr += shacc[j] * basis[j]
        xg += shacc[k + j] * basis[j]
        xb += shacc[2 * k + j] * basis[j]
    return cr + w / (1.0 + _exp32(-xr)), cg + w / (1.0 + _exp32(-xg)), cb + w / (1.0 + _exp32(-xb))


@njit(cache=True, inline="always")
def _queue_colour(sh, sh_row, v, w, wbuf, rbuf, nb, basis, k, cr, cg, cb):
    """Nearest lookup: queue voxel v's colour with weight w, fetching its SH record meanwhile; the
    queue is coloured when full. Returns (queued samples, cr, cg, cb)."""
    nc = 3 * k
    row = sh_row[v]
    _prefetch(sh, row * nc)
    _prefetch(sh, row * nc + nc - 1)
    wbuf[nb] = w
    rbuf[nb] = row
    nb += 1
    if nb == COLOUR_BATCH:
        cr, cg, cb = _flush_colour(sh, wbuf, rbuf, nb, basis, k, cr, cg, cb)
        nb = 0
    return nb, cr, cg, cb


@njit(cache=True, inline="always")
def _voxel_at(macro_tile, tiles, gx, gy, gz, df, shift, n):
    """Flat pool voxel at grid position g, -1 outside the grid or in an empty cell."""
    fx = int(math.floor(gx * df))
    fy = int(math.floor(gy * df))
    fz = int(math.floor(gz * df))
    if fx < 0 or fy < 0 or fz < 0 or fx >= n or fy >= n or fz >= n:
        return -1
    cx, lx = _split(fx, df, shift)
    cy, ly = _split(fy, df, shift)
    cz, lz = _split(fz, df, shift)
    m = _block_of(macro_tile, tiles, cx, cy, cz)
    if m < 0:
        return -1
    return m * (df * df * df) + (lx * df + ly) * df + lz


@njit(cache=True, inline="always")
def _prefetch_ahead(macro_tile, tiles, density, sh_row, sh, ox, oy, oz, dx, dy, dz, t1, t2, df, shift, n, nc):
    """Prefetch the density and SH row number of the voxel at t2, and the SH record of the voxel
    at t1 (its row number was prefetched PREFETCH_AHEAD samples ago)."""
    v2 = _voxel_at(macro_tile, tiles, ox + t2 * dx, oy + t2 * dy, oz + t2 * dz, df, shift, n)
    if v2 >= 0:
        _prefetch(density, v2)
        _prefetch(sh_row, v2)
    v1 = _voxel_at(macro_tile, tiles, ox + t1 * dx, oy + t1 * dy, oz + t1 * dz, df, shift, n)
    if v1 >= 0:
        row = sh_row[v1]
        if row >= 0:
            _prefetch(sh, row * nc)
            _prefetch(sh, row * nc + nc - 1)


@njit(cache=True, inline="always")
def _lookup_trilinear(macro_tile, tiles, density, sh_row, sh, gx, gy, gz, df, shift, n, nc, shacc):
    """Like :func:`_lookup_nearest`, interpolating between the 8 surrounding voxel centres
    (density: voxels of empty cells count as 0; SH: normalised over the voxels with density).
    ``shacc`` needs nc + 16 entries: the 8 corner weights and voxels are kept after the SH."""
    fx = int(math.floor(gx * df))
    fy = int(math.floor(gy * df))
    fz = int(math.floor(gz * df))
    if fx < 0 or fy < 0 or fz < 0 or fx >= n or fy >= n or fz >= n:
        return False, 0.0
    if _block_of(macro_tile, tiles, _split(fx, df, shift)[0], _split(fy, df, shift)[0], _split(fz, df, shift)[0]) < 0:
        return False, 0.0
    df3 = df * df * df
    qx, qy, qz = gx * df - 0.5, gy * df - 0.5, gz * df - 0.5
    ix, iy, iz = int(math.floor(qx)), int(math.floor(qy)), int(math.floor(qz))
    wx, wy, wz = qx - ix, qy - iy, qz - iz
    sigma = 0.0
    wsum = 0.0
    nv = 0
    for a in range(2):
        ax = ix + a
        if ax < 0 or ax >= n:
            continue
        wa = wx if a == 1 else 1.0 - wx
        acx, alx = _split(ax, df, shift)
        for b in range(2):
            ay = iy + b
            if ay < 0 or ay >= n:
                continue
            wb = wy if b == 1 else 1.0 - wy
            acy, aly = _split(ay, df, shift)
            for c in range(2):
                az = iz + c
                if az < 0 or az >= n:
                    continue
                acz, alz = _split(az, df, shift)
                mc = _block_of(macro_tile, tiles, acx, acy, acz)
                if mc < 0:
                    continue
                w = wa * wb * (wz if c == 1 else 1.0 - wz)
                v = mc * df3 + (alx * df + aly) * df + alz
                sigma += w * _decode(density[v])
                row = sh_row[v]
                if row >= 0:
                    wsum += w
                    shacc[nc + nv] = w
                    shacc[nc + 8 + nv] = row
                    nv += 1
    if sigma > 0.0:
        for j in range(nc):
            shacc[j] = 0.0
        for i in range(nv):
            w = shacc[nc + i]
            base = int(shacc[nc + 8 + i]) * nc
            for j in range(nc):
                shacc[j] += w * _decode(sh[base + j])
        for j in range(nc):
            shacc[j] /= wsum
    return True, sigma


@njit(cache=True, inline="always")
def _march_ray(
    trilinear, r, macro_tile, tiles, mdist, density, tf_table, vox_mask, row_base, sh_row, sh, lo, scale, box, dc, df, shift, degree, origins, dirs, viewdirs,
    near, far, step, t_min, basis, shacc, wbuf, rbuf,
):  # fmt: skip
    """March ray r; returns (r, g, b without background, depth, opacity, samples)."""
    dm = mdist.shape[0]
    n = dc * df
    k = degree * degree
    nc = 3 * k
    inv_step = 1.0 / step
    ox = (origins[r, 0] - lo[0]) * scale[0]
    oy = (origins[r, 1] - lo[1]) * scale[1]
    oz = (origins[r, 2] - lo[2]) * scale[2]
    dx = dirs[r, 0] * scale[0]
    dy = dirs[r, 1] * scale[1]
    dz = dirs[r, 2] * scale[2]
    nr, fr = np.float64(near[r]), np.float64(far[r])
    # clip to the box of the occupied macro blocks (within [0, dc]^3)
    ta, tb = nr, fr
    for a, o, d in ((0, ox, dx), (1, oy, dy), (2, oz, dz)):
        blo, bhi = box[0, a], box[1, a]
        if d == 0.0:
            if o < blo or o > bhi:
                tb = -_INF
        else:
            t1, t2 = (blo - o) / d, (bhi - o) / d
            ta = max(ta, min(t1, t2))
            tb = min(tb, max(t1, t2))
    trans, cr, cg, cb, dep, opa = 1.0, 0.0, 0.0, 0.0, 0.0, 0.0
    ns = 0
    if ta >= tb:
        return cr, cg, cb, dep, opa, ns
    vx, vy, vz = viewdirs[r, 0], viewdirs[r, 1], viewdirs[r, 2]
    vn = max(math.sqrt(vx * vx + vy * vy + vz * vz), 1e-12)
    _sh_basis(vx / vn, vy / vn, vz / vn, degree, basis)
    dmax = max(abs(dx), abs(dy), abs(dz))
    done = False
    nb = 0  # samples waiting for their colour in wbuf / rbuf
    df3 = df * df * df
    use_mask = vox_mask.shape[0] > 0
    has = np.int64(1)  # the voxel has density (the mask path sets it per sample)
    k_done = -1
    t = ta
    mx, sx, tmx, tdx = _dda_init(ox, dx, t, TILE, 0, dm - 1)
    my, sy, tmy, tdy = _dda_init(oy, dy, t, TILE, 0, dm - 1)
    mz, sz, tmz, tdz = _dda_init(oz, dz, t, TILE, 0, dm - 1)
    while True:
        dist = mdist[mx, my, mz]
        if dist >= 2:  # every block within dist - 1 is empty: jump
            t = t + (dist - 1) * TILE / dmax
            if t >= tb:
                break
            mx, sx, tmx, tdx = _dda_init(ox, dx, t, TILE, 0, dm - 1)
            my, sy, tmy, tdy = _dda_init(oy, dy, t, TILE, 0, dm - 1)
            mz, sz, tmz, tdz = _dda_init(oz, dz, t, TILE, 0, dm - 1)
            continue
        t_next = min(tmx, tmy, tmz, tb)
        if dist == 0 and t_next >= t:
            tile = macro_tile[mx, my, mz]
            x0, y0, z0 = mx * TILE, my * TILE, mz * TILE
            x1, y1, z1 = min(x0 + TILE, dc) - 1, min(y0 + TILE, dc) - 1, min(z0 + TILE, dc) - 1
            s = t
            cx, csx, tcx, tdcx = _dda_init(ox, dx, s, 1.0, x0, x1)
            cy, csy, tcy, tdcy = _dda_init(oy, dy, s, 1.0, y0, y1)
            cz, csz, tcz, tdcz = _dda_init(oz, dz, s, 1.0, z0, z1)
            while True:
                s_next = min(tcx, tcy, tcz, t_next)
                blk = tiles[tile, cx & _TM, cy & _TM, cz & _TM]
                if blk >= 0 and s_next >= s:
                    klo = max(k_done + 1, int(math.ceil((s - nr) * inv_step - 0.5)) - 1, 0)
                    khi = int(math.floor((s_next - nr) * inv_step - 0.5)) + 1
                    for kk in range(klo, khi + 1):
                        tk = nr + (kk + 0.5) * step
                        if tk >= fr:
                            done = True
                            break
                        k_done = kk
                        gx, gy, gz = ox + tk * dx, oy + tk * dy, oz + tk * dz
                        sigma = 0.0
                        if trilinear:
                            _prefetch_ahead(  # memory latency dominates: fetch ahead
                                macro_tile, tiles, density, sh_row, sh, ox, oy, oz, dx, dy, dz, tk + PREFETCH_AHEAD * step,
                                tk + 2 * PREFETCH_AHEAD * step, df, shift, n, nc,
                            )  # fmt: skip
                            occ, sigma = _lookup_trilinear(
                                macro_tile, tiles, density, sh_row, sh, gx, gy, gz, df, shift, n, nc, shacc
                            )  # fmt: skip
                            if not occ:
                                continue
                        else:  # nearest: the voxel, from the cell being walked when the sample lies in it
                            fx = int(math.floor(gx * df))
                            fy = int(math.floor(gy * df))
                            fz = int(math.floor(gz * df))
                            if shift >= 0 and (fx >> shift) == cx and (fy >> shift) == cy and (fz >> shift) == cz:
                                vb = blk
                                vl = ((fx & (df - 1)) * df + (fy & (df - 1))) * df + (fz & (df - 1))
                                v = blk * df3 + vl
                            else:
                                v = _voxel_at(macro_tile, tiles, gx, gy, gz, df, shift, n)
                                if v < 0:
                                    continue
                                vb = v // df3
                                vl = v - vb * df3
                        ns += 1
                        if trilinear:
                            if sigma <= 0.0:
                                continue
                            tf = _exp32(-sigma * step)
                        elif use_mask:  # no branch on the voxel's bit (it is as good as random): an empty voxel's
                            # density is 0, its transmittance 1, and its queue entry is overwritten
                            vbits = vox_mask[vb]
                            has = np.int64((vbits >> np.uint64(vl)) & np.uint64(1))
                            tf = _transmittance(density[v], tf_table, step)
                        else:
                            tf = _transmittance(density[v], tf_table, step)
                            if tf >= 1.0:  # no density (or too little to change a float32 exponential)
                                continue
                        alpha = 1.0 - tf
                        w = trans * alpha
                        # colour written out, not through _add_interpolated_colour / _queue_colour as in the
                        # contracted kernel: here the calls cost 15% of a lego frame (58 -> 68 ms at 400x400)
                        if trilinear:  # colour now, from the interpolated SH in shacc
                            xr, xg, xb = 0.0, 0.0, 0.0
                            for j in range(k):
                                xr += shacc[j] * basis[j]
                                xg += shacc[k + j] * basis[j]
                                xb += shacc[2 * k + j] * basis[j]
                            cr += w / (1.0 + _exp32(-xr))
                            cg += w / (1.0 + _exp32(-xg))
                            cb += w / (1.0 + _exp32(-xb))
                        else:  # colour with the batch; fetch the SH record meanwhile
                            if use_mask:  # the rank of the voxel among the block's voxels with density
                                row = row_base[vb] + np.int64(_popcount(vbits & ((np.uint64(1) << np.uint64(vl)) - np.uint64(1))))
                            else:
                                row = np.int64(sh_row[v])
                            _prefetch(sh, row * nc)
                            _prefetch(sh, row * nc + nc - 1)
                            wbuf[nb] = w
                            rbuf[nb] = row
                            nb += has  # 1 unless the mask says the voxel is empty
                            if nb == COLOUR_BATCH:
                                cr, cg, cb = _flush_colour(sh, wbuf, rbuf, nb, basis, k, cr, cg, cb)
                                nb = 0
                        dep += w * tk
                        opa += w
                        trans *= tf
                        if trans < t_min:
                            done = True
                            break
                    if done:
                        break
                if s_next >= t_next:
                    break
                if tcx <= tcy and tcx <= tcz:
                    cx += csx
                    if cx < x0 or cx > x1:
                        break
                    s = tcx
                    tcx += tdcx
                elif tcy <= tcz:
                    cy += csy
                    if cy < y0 or cy > y1:
                        break
                    s = tcy
                    tcy += tdcy
                else:
                    cz += csz
                    if cz < z0 or cz > z1:
                        break
                    s = tcz
                    tcz += tdcz
        if done or t_next >= tb:
            break
        if tmx <= tmy and tmx <= tmz:
            mx += sx
            if mx < 0 or mx >= dm:
                break
            t = tmx
            tmx += tdx
        elif tmy <= tmz:
            my += sy
            if my < 0 or my >= dm:
                break
            t = tmy
            tmy += tdy
        else:
            mz += sz
            if mz < 0 or mz >= dm:
                break
            t = tmz
            tmz += tdz
    if nb > 0:
        cr, cg, cb = _flush_colour(sh, wbuf, rbuf, nb, basis, k, cr, cg, cb)
    return cr, cg, cb, dep, opa, ns


@njit(cache=True, nogil=True, fastmath={"reassoc", "contract", "nsz", "arcp"})
def _march_rays(
    r0, r1, trilinear, macro_tile, tiles, mdist, density, tf_table, vox_mask, row_base, sh_row, sh, lo, scale, box, dc, df, shift, degree, origins, dirs,
    viewdirs, near, far, bg, step, t_min, out_rgb, out_depth, out_opac, out_samples,
):  # fmt: skip
    """March rays r0..r1-1 into the outputs (one call per task: a call per ray would incref and
    decref its arrays each time, which cost as much as marching a ray that misses the scene)."""
    nc = 3 * degree * degree
    basis = np.empty(25)
    shacc = np.empty(nc + 16)
    wbuf = np.empty(COLOUR_BATCH)
    rbuf = np.empty(COLOUR_BATCH, np.int64)
    for r in range(r0, r1):
        cr, cg, cb, dep, opa, ns = _march_ray(
            trilinear, r, macro_tile, tiles, mdist, density, tf_table, vox_mask, row_base, sh_row, sh, lo, scale, box, dc, df, shift, degree, origins, dirs,
            viewdirs, near, far, step, t_min, basis, shacc, wbuf, rbuf,
        )  # fmt: skip
        out_rgb[r, 0] = cr + (1.0 - opa) * bg[0]
        out_rgb[r, 1] = cg + (1.0 - opa) * bg[1]
        out_rgb[r, 2] = cb + (1.0 - opa) * bg[2]
        out_depth[r] = dep
        out_opac[r] = opa
        out_samples[r] = ns


@njit(parallel=True, cache=True, nogil=True)
def _march_kernel(
    trilinear, macro_tile, tiles, mdist, density, tf_table, vox_mask, row_base, sh_row, sh, lo, scale, box, dc, df, degree, origins, dirs, viewdirs, near, far,
    bg, step, t_min, block, out_rgb, out_depth, out_opac, out_samples, order,
):  # fmt: skip
    n_rays = origins.shape[0]
    shift = -1
    if df & (df - 1) == 0:
        shift = 0
        while (1 << shift) < df:
            shift += 1
    for i in prange(order.shape[0]):
        task = order[i]
        _march_rays(
            task * block, min(n_rays, (task + 1) * block), trilinear, macro_tile, tiles, mdist, density, tf_table, vox_mask, row_base, sh_row, sh, lo, scale,
            box, dc, df, shift, degree, origins, dirs, viewdirs, near, far, bg, step, t_min, out_rgb, out_depth, out_opac, out_samples,
        )  # fmt: skip


def _prepare_call(r: int, near, far) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """(near [R] float32, far [R] float32, empty outputs) of a marcher call on R rays."""
    f32 = lambda a: np.ascontiguousarray(np.broadcast_to(np.asarray(a, np.float32), (r,)))  # noqa: E731
    out = {
        "rgb": np.empty((r, 3), np.float32),
        "depth": np.empty(r, np.float32),
        "opacity": np.empty(r, np.float32),
        "samples": np.empty(r, np.int32),
    }
    return f32(near), f32(far), out


TASK_RUN = 16
"""consecutive tasks (of RAYS_PER_TASK rays) that go to one thread (:func:`task_order`)"""


def task_order(n_rays: int, block: int, threads: int, run: int = TASK_RUN) -> np.ndarray:
    """int64 [n_tasks]: the order in which the kernels' prange hands out tasks of ``block`` rays.

    numba splits a prange into one contiguous range per thread whatever the parallel chunk size
    (measured: numba 0.68, OpenMP layer), so in plain row order one thread got the top of the
    image and the other its bottom, and a scene that is not centred gave them unequal work. This
    order is block-cyclic: runs of ``run`` consecutive tasks are dealt to the threads in turn
    (run k to thread k mod threads) and each thread's runs are listed together, so each thread's
    range covers every band of rows. Lego 400x400, 2 threads: 56-58 ms a frame in row order,
    43-51 ms so, on 3 views; the fern capture unchanged (BENCHMARKS.md)."""
    n_tasks = -(-n_rays // block)
    threads = max(int(threads), 1)
    runs = np.arange(n_tasks, dtype=np.int64) // max(int(run), 1)
    return np.concatenate([np.flatnonzero(runs % threads == j) for j in range(threads)]).astype(np.int64)


def _run_parallel(kernel, threads: int | None, n_rays: int, *args) -> None:
    """Call a prange kernel with ``threads`` numba threads (default: numba's setting) and small
    chunks of tasks, in :func:`task_order` (appended to ``args``), restoring numba's settings
    afterwards."""
    old_threads = numba.get_num_threads()
    old_chunk = numba.get_parallel_chunksize()
    try:
        if threads:
            numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
        numba.set_parallel_chunksize(4)
        kernel(*args, task_order(n_rays, RAYS_PER_TASK, numba.get_num_threads()))
    finally:
        numba.set_parallel_chunksize(old_chunk)
        numba.set_num_threads(old_threads)


def march_cpu(
    tree: NerfTree | CpuTree,
    origins: np.ndarray,
    dirs: np.ndarray,
    viewdirs: np.ndarray,
    near: np.ndarray,
    far: np.ndarray,
    background: np.ndarray,
    step: float,
    lookup: str = "nearest",
    t_min: float = T_MIN,
    threads: int | None = None,
) -> dict[str, np.ndarray]:
    """March R rays through the tree with the numba kernel (same contract as
    :func:`turbonerf.bake.march_numpy.march_numpy`).

    Ray inputs are taken as float32 (what torch produces); the arithmetic is float64 except the
    exponentials (:func:`_exp32`).

    Args:
        tree: a NerfTree, or a :class:`CpuTree` from :func:`prepare_cpu` (reuse it across frames).
        origins, dirs, viewdirs: [R, 3]; near, far: [R] or scalars; background: [3].
        threads: numba threads (default: numba's setting).
    Returns:
        rgb [R, 3], depth [R], opacity [R] float32, samples [R] int32.
    """
    ct = tree if isinstance(tree, CpuTree) else prepare_cpu(tree)
    if lookup not in ("nearest", "trilinear"):
        raise ValueError(f"lookup must be 'nearest' or 'trilinear', got {lookup!r}")
    r = origins.shape[0]
    near, far, out = _prepare_call(r, near, far)
    if r == 0:
        return out
    f32 = lambda a: np.ascontiguousarray(a, dtype=np.float32)  # noqa: E731
    _run_parallel(
        _march_kernel, threads, r, lookup == "trilinear", ct.macro_tile, ct.tiles, ct.macro_dist, ct.density, ct.transmittance(step), ct.vox_mask, ct.row_base, ct.sh_row, ct.sh,
        ct.lo, ct.scale, ct.box, ct.coarse_res, ct.fine_res, ct.sh_degree,
        f32(origins), f32(dirs), f32(viewdirs), near, far, np.asarray(background, np.float64).reshape(3), float(step), float(t_min),
        RAYS_PER_TASK, out["rgb"], out["depth"], out["opacity"], out["samples"],
    )  # fmt: skip
    return out


# --------------------------------------------------------------------------------------------
# contracted trees (unbounded scenes): the rule of march_numpy.march_numpy_contracted

CONTRACTION_LIPSCHITZ = 4.0 / 3.0
"""bound on how far (L-inf) a contracted point moves per unit of L-inf movement before the
contraction: the rows of its Jacobian sum to at most (4n - 3) / n^2 <= 4/3 (n = 3/2), so a ray
in a macro block whose distance to every occupied block is D may skip (D - 1) * 8 coarse cells
divided by this (a test checks the bound numerically)"""


@njit(cache=True, inline="always")
def _march_ray_contracted(
    trilinear, r, macro_tile, tiles, mdist, cdist, density, sh_row, sh, lo, scale, dc, df, shift, degree, origins, dirs, viewdirs,
    near, far, step, cone, centre, half, max_steps, t_min, basis, shacc, wbuf, rbuf,
):  # fmt: skip
    """March world ray r through a contracted tree; returns (r, g, b, depth, opacity, samples)."""
    n = dc * df
    k = degree * degree
    nc = 3 * k
    dm = mdist.shape[0]
    px = (origins[r, 0] - centre[0]) / half[0]
    py = (origins[r, 1] - centre[1]) / half[1]
    pz = (origins[r, 2] - centre[2]) / half[2]
    ex = dirs[r, 0] / half[0]
    ey = dirs[r, 1] / half[1]
    ez = dirs[r, 2] / half[2]
    e_inf = max(abs(ex), abs(ey), abs(ez), 1e-30)
    dnorm = math.sqrt(np.float64(dirs[r, 0]) ** 2 + np.float64(dirs[r, 1]) ** 2 + np.float64(dirs[r, 2]) ** 2)
    dt = step / max(dnorm, 1e-12)
    nr, fr = np.float64(near[r]), np.float64(far[r])
    n_lin = _INF  # lattice edges: nr + k dt up to edge n_lin, then each (1 + cone) times the last
    if cone > 0.0:
        n_lin = float(math.ceil(max(dt / cone - nr, 0.0) / dt))
    # contracted-space cells per unit, over the safe-skip slope of the ray in contracted space
    skip_rate = CONTRACTION_LIPSCHITZ * e_inf * scale[0]
    vx, vy, vz = viewdirs[r, 0], viewdirs[r, 1], viewdirs[r, 2]
    vn = max(math.sqrt(vx * vx + vy * vy + vz * vz), 1e-12)
    _sh_basis(vx / vn, vy / vn, vz / vn, degree, basis)
    trans, cr, cg, cb, dep, opa = 1.0, 0.0, 0.0, 0.0, 0.0, 0.0
    ns = 0
    nb = 0
    kk = 0
    e0 = nr
    grow = 1.0 + cone
    while kk < max_steps:
        if kk < n_lin:
            e1 = nr + (kk + 1) * dt
        else:  # geometric: the closed form's exp once per skip, a product per step
            e1 = e0 * grow
        tm = 0.5 * (e0 + e1)
        if tm >= fr:
            break
        qx, qy, qz = px + tm * ex, py + tm * ey, pz + tm * ez
        nq = max(abs(qx), abs(qy), abs(qz))
        if nq > 1.0:
            f = (2.0 - 1.0 / nq) / nq
            qx, qy, qz = qx * f, qy * f, qz * f
        gx, gy, gz = (qx - lo[0]) * scale[0], (qy - lo[1]) * scale[1], (qz - lo[2]) * scale[2]
        mx = min(max(int(gx) >> _TS, 0), dm - 1)
        my = min(max(int(gy) >> _TS, 0), dm - 1)
        mz = min(max(int(gz) >> _TS, 0), dm - 1)
        dist = np.int64(mdist[mx, my, mz])
        cells = (dist - 1) * TILE  # nothing occupied within this many cells of contracted space
        if dist < 2:
            cells = np.int64(cdist[min(max(int(gx), 0), dc - 1), min(max(int(gy), 0), dc - 1), min(max(int(gz), 0), dc - 1)]) - 1
        if cells >= 1:  # step over the samples whose middles lie before t_to: all in empty cells
            t_to = tm + cells / skip_rate
            kk += 1
            e0 = e1
            while kk < max_steps:
                e1 = nr + (kk + 1) * dt if kk < n_lin else e0 * grow
                if e0 + e1 >= 2.0 * t_to:
                    break
                kk += 1
                e0 = e1
            continue
        seg = e1 - e0
        kk += 1
        e0 = e1
        if trilinear:
            occ, sigma = _lookup_trilinear(macro_tile, tiles, density, sh_row, sh, gx, gy, gz, df, shift, n, nc, shacc)
            if not occ:
                continue
        else:
            v = _voxel_at(macro_tile, tiles, gx, gy, gz, df, shift, n)
            if v < 0:
                continue
            sigma = _decode(density[v])
        ns += 1
        if sigma <= 0.0:
            continue
        alpha = 1.0 - _exp32(-sigma * seg)
        w = trans * alpha
        if trilinear:
            cr, cg, cb = _add_interpolated_colour(shacc, basis, k, w, cr, cg, cb)
        else:
            nb, cr, cg, cb = _queue_colour(sh, sh_row, v, w, wbuf, rbuf, nb, basis, k, cr, cg, cb)
        dep += w * tm
        opa += w
        trans *= 1.0 - alpha
        if trans < t_min:
            break
    if nb > 0:
        cr, cg, cb = _flush_colour(sh, wbuf, rbuf, nb, basis, k, cr, cg, cb)
    return cr, cg, cb, dep, opa, ns


@njit(parallel=True, cache=True, nogil=True)
def _march_kernel_contracted(
    trilinear, macro_tile, tiles, mdist, cdist, density, sh_row, sh, lo, scale, dc, df, degree, origins, dirs, viewdirs, near, far,
    bg, step, cone, centre, half, max_steps, t_min, block, out_rgb, out_depth, out_opac, out_samples, order,
):  # fmt: skip
    n_rays = origins.shape[0]
    shift = -1
    if df & (df - 1) == 0:
        shift = 0
        while (1 << shift) < df:
            shift += 1
    nc = 3 * degree * degree
    for i in prange(order.shape[0]):
        task = order[i]
        basis = np.empty(25)
        shacc = np.empty(nc + 16)
        wbuf = np.empty(COLOUR_BATCH)
        rbuf = np.empty(COLOUR_BATCH, np.int64)
        for r in range(task * block, min(n_rays, (task + 1) * block)):
            cr, cg, cb, dep, opa, ns = _march_ray_contracted(
                trilinear, r, macro_tile, tiles, mdist, cdist, density, sh_row, sh, lo, scale, dc, df, shift, degree, origins, dirs,
                viewdirs, near, far, step, cone, centre, half, max_steps, t_min, basis, shacc, wbuf, rbuf,
            )  # fmt: skip
            out_rgb[r, 0] = cr + (1.0 - opa) * bg[0]
            out_rgb[r, 1] = cg + (1.0 - opa) * bg[1]
            out_rgb[r, 2] = cb + (1.0 - opa) * bg[2]
            out_depth[r] = dep
            out_opac[r] = opa
            out_samples[r] = ns


def march_cpu_contracted(
    tree: NerfTree | CpuTree,
    inner_box: np.ndarray,
    origins: np.ndarray,
    dirs: np.ndarray,
    viewdirs: np.ndarray,
    near: np.ndarray,
    far: np.ndarray,
    background: np.ndarray,
    step: float,
    cone_angle: float,
    lookup: str = "nearest",
    t_min: float = T_MIN,
    max_steps: int = MAX_STEPS,
    threads: int | None = None,
) -> dict[str, np.ndarray]:
    """March R world rays through a contracted tree with the numba kernel (same contract and
    rule as :func:`turbonerf.bake.march_numpy.march_numpy_contracted`). Empty space is skipped
    with Chebyshev distances to the nearest occupied cell (the macro blocks' far from the
    scene, the coarse cells' near it), shrunk by :data:`CONTRACTION_LIPSCHITZ`.

    Args:
        tree: a contracted NerfTree, or its :class:`CpuTree` (then ``inner_box`` is the tree's).
        inner_box: [2, 3] the tree's ``inner_box``.
    Returns:
        rgb [R, 3], depth [R], opacity [R] float32, samples [R] int32.
    """
    ct = tree if isinstance(tree, CpuTree) else prepare_cpu(tree)
    if lookup not in ("nearest", "trilinear"):
        raise ValueError(f"lookup must be 'nearest' or 'trilinear', got {lookup!r}")
    if ct.cell_dist is None:
        raise ValueError("march_cpu_contracted needs a contracted tree (prepared with its cell distances)")
    r = origins.shape[0]
    near, far, out = _prepare_call(r, near, far)
    if r == 0:
        return out
    f32 = lambda a: np.ascontiguousarray(a, dtype=np.float32)  # noqa: E731
    box = np.asarray(inner_box, np.float64).reshape(2, 3)
    _run_parallel(
        _march_kernel_contracted, threads, r, lookup == "trilinear", ct.macro_tile, ct.tiles, ct.macro_dist, ct.cell_dist, ct.density,
        ct.sh_row, ct.sh, ct.lo, ct.scale, ct.coarse_res, ct.fine_res, ct.sh_degree,
        f32(origins), f32(dirs), f32(viewdirs), near, far, np.asarray(background, np.float64).reshape(3), float(step),
        float(cone_angle), box.mean(0), (box[1] - box[0]) / 2.0, int(max_steps), float(t_min),
        RAYS_PER_TASK, out["rgb"], out["depth"], out["opacity"], out["samples"],
    )  # fmt: skip
    return out
