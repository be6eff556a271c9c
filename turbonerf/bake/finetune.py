"""Fine-tune a baked NerfTree on the training images (PlenOctrees, Yu et al. ICCV 2021, sec. 4.3).

Baking samples the model at voxel centres and fits each voxel's colour from a few directions;
the tree then renders differently from the model (nearest voxels on a fixed lattice, a coarse
SH fit): a lego tree scored 0.47 dB below its model. Fine-tuning optimises the tree itself
against the training pixels, rendered by the marchers' own rule, which closes that gap (on lego
the tuned tree matches its model; BENCHMARKS.md), so a tree can also be baked coarser for the
same quality. The structure is kept: which cells are occupied, which voxels have density.

One step (:func:`finetune_step`, numba, parallel over rays) takes a batch of training rays and,
for each ray:

1. traces it (:func:`_trace_ray`, the rule of :mod:`turbonerf.bake.march_numpy` with nearest
   lookup: lattice samples, early termination at ``t_min``), from the lattice index of its first
   sample with density, found once for all rays (:meth:`TrainingRays.with_first_samples`: rays
   that meet no density get no gradient and are dropped);
2. renders its samples and differentiates the squared error by hand (:func:`_ray_gradients`:
   front to back, then back to front for dL/d log(sigma) and dL/d(SH logit)), with the closing
   of a ray stopped early (:func:`turbonerf.bake.render.close_terminated`);
3. updates the log-densities and SH rows of its samples at once, by RMSprop with one second
   moment per voxel and per SH row (so the optimiser's state is 8 bytes a voxel, not copies of
   the pool); a float16 SH pool is written with stochastic rounding (:func:`half_stochastic`),
   so that updates below float16's resolution still count on average.

Densities are optimised as log(sigma): a voxel keeps its density (and so its SH row), and
multiplicative steps suit densities that span four orders of magnitude. The plain-torch twin of
the rendering, :func:`composite_samples`, differentiated by autograd, is what the kernel's
gradients are tested against (:func:`sample_gradients`).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch
from llvmlite import ir
from numba import njit, prange, types
from numba.extending import intrinsic, overload
from torch import Tensor
from tqdm.auto import tqdm

from turbonerf.bake.march_cpu import _decode, chebyshev_distance, tile_index
from turbonerf.bake.march_numpy import grid_rays, unit_viewdirs_basis
from turbonerf.bake.nerftree import FLOAT16_MAX, T_MIN, NerfTree
from turbonerf.prefetch import prefetch as _prefetch


@dataclass
class FinetuneConfig:
    """How a tree is fine-tuned."""

    seconds: float = 30.0
    """wall-clock budget of the optimisation (finding the training rays comes on top)"""
    max_steps: int = 1_000_000
    max_epochs: float = 8.0
    """stop after this many passes over the training rays (whichever of this and ``seconds`` ends
    first; the learning rates decay over that budget). More overfits the training views: a lego
    tree at D_c = 128 scored 31.76 / 31.83 / 31.79 / 31.56 dB after 4 / 8 / 12 / 20 passes (BENCHMARKS.md)"""
    rays_per_step: int = 8192
    lr_sh: float = 0.02
    """step of an SH coefficient (logit units) at a unit normalised gradient"""
    lr_density: float = 0.05
    """step of log(sigma) at a unit normalised gradient"""
    lr_final: float = 0.1
    """learning rates decay exponentially to this factor at the end of the budget"""
    beta: float = 0.95
    """RMSprop decay of the second moment"""
    max_samples: int = 256
    """samples with density a ray may take (a cap that rays stopping at ``t_min`` seldom reach)"""
    t_min: float = T_MIN
    seed: int = 0


@njit(cache=True, inline="always")
def _box_exit(g0x, g0y, g0z, gdx, gdy, gdz, x0, y0, z0, size):
    """t at which the ray g0 + t gd leaves the cube [x0, x0 + size] x ... (grid units)."""
    t = 1e30
    if gdx > 0:
        t = min(t, (x0 + size - g0x) / gdx)
    elif gdx < 0:
        t = min(t, (x0 - g0x) / gdx)
    if gdy > 0:
        t = min(t, (y0 + size - g0y) / gdy)
    elif gdy < 0:
        t = min(t, (y0 - g0y) / gdy)
    if gdz > 0:
        t = min(t, (z0 + size - g0z) / gdz)
    elif gdz < 0:
        t = min(t, (z0 - g0z) / gdz)
    return t


@njit(cache=True, inline="always")
def _trace_ray(index, macro_dist, density, df, ox, oy, oz, dx, dy, dz, nr, fr, k_start, step, t_min, vox):
    """The samples with density of one ray into vox[:count]; returns (count, lattice index of the
    first one or -1). Rule and arguments: :func:`trace_samples`."""
    dc = index.shape[0]
    n = dc * df
    df3 = df * df * df
    cap = vox.shape[0]
    dmax = max(abs(dx), abs(dy), abs(dz))
    ta, tb = nr, fr
    for o, d in ((ox, dx), (oy, dy), (oz, dz)):
        if d == 0.0:
            if o < 0.0 or o > dc:
                tb = -1e30
        else:
            t1, t2 = (0.0 - o) / d, (dc - o) / d
            ta = max(ta, min(t1, t2))
            tb = min(tb, max(t1, t2))
    cnt = 0
    kf = -1
    if ta >= tb:
        return cnt, kf
    trans = 1.0
    k = k_start if k_start >= 0 else max(int(math.ceil((ta - nr) / step - 0.5)) - 1, 0)
    while True:
        tk = nr + (k + 0.5) * step
        if tk >= fr or tk > tb + step:
            break
        gx, gy, gz = ox + tk * dx, oy + tk * dy, oz + tk * dz
        fx, fy, fz = int(math.floor(gx * df)), int(math.floor(gy * df)), int(math.floor(gz * df))
        if fx < 0 or fy < 0 or fz < 0 or fx >= n or fy >= n or fz >= n:
            k += 1
            continue
        cx, cy, cz = fx // df, fy // df, fz // df
        dist = macro_dist[cx >> 3, cy >> 3, cz >> 3]
        if dist > 0:  # an empty macro block
            te = _box_exit(ox, oy, oz, dx, dy, dz, (cx >> 3) * 8, (cy >> 3) * 8, (cz >> 3) * 8, 8.0)
            te = max(te, tk + (dist - 1) * 8.0 / dmax)
            k = max(k + 1, int(math.ceil((te - nr) / step - 0.5)) - 1)
            continue
        m = index[cx, cy, cz]
        if m < 0:
            te = _box_exit(ox, oy, oz, dx, dy, dz, cx, cy, cz, 1.0)
            k = max(k + 1, int(math.ceil((te - nr) / step - 0.5)) - 1)
            continue
        v = np.int64(m) * df3 + ((fx - cx * df) * df + (fy - cy * df)) * df + (fz - cz * df)
        sigma = density[v]
        if sigma > 0.0:
            if kf < 0:
                kf = k
            vox[cnt] = v
            cnt += 1
            trans *= math.exp(-sigma * step)
            if trans < t_min or cnt == cap:
                break
        k += 1
    return cnt, kf


@njit(parallel=True, cache=True)
def trace_samples(index, macro_dist, density, df, g0, gd, near, far, k0, step, t_min, vox, counts, first):
    """List each ray's samples with density, in marching order.

    The lattice, the voxel of each sample and the stopping rule are those of
    :func:`turbonerf.bake.march_numpy.march_numpy` with nearest lookup. Empty space is skipped:
    an empty macro block of 8^3 coarse cells at Chebyshev distance D from the nearest occupied
    one by D - 1 blocks or to its exit, an empty coarse cell to its exit; each jump lands one
    lattice step short, so rounding never skips a sample.

    Args:
        index: int32 [Dc, Dc, Dc] coarse index (-1 empty); macro_dist: uint8 [Dm, Dm, Dm]
            (:func:`macro_distance`); density: float32 [M * Df^3] flat; df: D_f.
        g0, gd: float64 [R, 3] rays in coarse-grid units; near, far: float64 [R].
        k0: int64 [R] lattice index to start from (-1: from where the ray enters the box).
        step: lattice step (t units); t_min: stop once the transmittance falls below this.
        vox: int64 [R, C] out: flat voxel indices of the samples (C = most samples listed).
        counts: int32 [R] out: samples listed per ray.
        first: int64 [R] out: lattice index of the first sample with density (-1: none).
    """
    for r in prange(g0.shape[0]):
        counts[r], first[r] = _trace_ray(
            index, macro_dist, density, df, g0[r, 0], g0[r, 1], g0[r, 2], gd[r, 0], gd[r, 1], gd[r, 2], near[r], far[r], k0[r], step, t_min,
            vox[r],
        )  # fmt: skip


@njit(cache=True, inline="always")
def _ray_gradients(density, sh, sh_row, basis, k, gt, bg, step, t_min, vox, cnt, scale, wbuf, cbuf, tbuf, g_logd, g_logit):
    """Forward and backward of one ray's samples vox[:cnt] (the rule of :func:`composite_samples`).

    Fills g_logd[i] = dL/dlog(sigma_i) and g_logit[i, c] = dL/dx_ic (x: the SH logit of channel c;
    dL/dsh_i[c * K + j] = g_logit[i, c] * basis[j]) for L = scale * |rgb - gt|^2. Returns |rgb - gt|^2.
    """
    nc = 3 * k
    trans = 1.0
    cr, cg, cb, opa = 0.0, 0.0, 0.0, 0.0
    for i in range(cnt):
        v = vox[i]
        tau = density[v] * step
        tf = math.exp(-tau)
        w = trans * (1.0 - tf)
        base = np.int64(sh_row[v]) * nc
        for c in range(3):
            x = 0.0
            for j in range(k):
                x += _decode(sh[base + c * k + j]) * basis[j]
            col = 1.0 / (1.0 + math.exp(-x))
            cbuf[i, c] = col
        cr += w * cbuf[i, 0]
        cg += w * cbuf[i, 1]
        cb += w * cbuf[i, 2]
        opa += w
        wbuf[i] = w
        trans *= tf
        tbuf[i] = trans  # transmittance after the sample
    if opa >= 1.0 - t_min:  # stopped: closed as opaque (close_terminated)
        inv = 1.0 / max(opa, 1e-6)
        outr, outg, outb = cr * inv, cg * inv, cb * inv
    else:
        outr, outg, outb = cr + (1.0 - opa) * bg[0], cg + (1.0 - opa) * bg[1], cb + (1.0 - opa) * bg[2]
    er, eg, eb = outr - gt[0], outg - gt[1], outb - gt[2]
    gr, gg, gb = 2.0 * scale * er, 2.0 * scale * eg, 2.0 * scale * eb
    if opa >= 1.0 - t_min:
        inv = 1.0 / max(opa, 1e-6)
        gcr, gcg, gcb = gr * inv, gg * inv, gb * inv
        go = -(gr * cr + gg * cg + gb * cb) * inv * inv
    else:
        gcr, gcg, gcb = gr, gg, gb
        go = -(gr * bg[0] + gg * bg[1] + gb * bg[2])
    suffix = 0.0  # sum over later samples of dL/dw_j * w_j
    for i in range(cnt - 1, -1, -1):
        w = wbuf[i]
        c0, c1, c2 = cbuf[i, 0], cbuf[i, 1], cbuf[i, 2]
        e = gcr * c0 + gcg * c1 + gcb * c2 + go  # dL/dw_i
        g_tau = e * tbuf[i] - suffix
        suffix += e * w
        g_logd[i] = g_tau * density[vox[i]] * step
        g_logit[i, 0] = gcr * w * c0 * (1.0 - c0)
        g_logit[i, 1] = gcg * w * c1 * (1.0 - c1)
        g_logit[i, 2] = gcb * w * c2 * (1.0 - c2)
    return er * er + eg * eg + eb * eb


@njit(parallel=True, cache=True)
def sample_gradients(index, macro_dist, density, sh, sh_row, df, degree, g0, gd, near, far, k0, basis, rgb, bg, step, t_min, cap, scale,
                     offsets, g_logd, g_logit):  # fmt: skip
    """Per-sample gradients of a batch, packed by ray: ray r's samples at offsets[r]:offsets[r + 1]
    (as :func:`trace_samples` counts them with ``cap``) -> g_logd [S], g_logit [S, 3]. What
    :func:`finetune_step` applies, exposed for the test against :func:`composite_samples`."""
    k = degree * degree
    for r in prange(g0.shape[0]):
        vox = np.empty(cap, np.int64)
        wbuf, tbuf, cbuf = np.empty(cap), np.empty(cap), np.empty((cap, 3))
        gl, gx = np.empty(cap), np.empty((cap, 3))
        cnt, _ = _trace_ray(index, macro_dist, density, df, g0[r, 0], g0[r, 1], g0[r, 2], gd[r, 0], gd[r, 1], gd[r, 2], near[r], far[r], k0[r], step,
                            t_min, vox)  # fmt: skip
        _ray_gradients(density, sh, sh_row, basis[r], k, rgb[r], bg, step, t_min, vox, cnt, scale, wbuf, cbuf, tbuf, gl, gx)
        o = offsets[r]
        for i in range(cnt):
            g_logd[o + i] = gl[i]
            g_logit[o + i, 0], g_logit[o + i, 1], g_logit[o + i, 2] = gx[i, 0], gx[i, 1], gx[i, 2]


def _store(arr, i, value, noise):  # pragma: no cover - replaced by the overload inside numba
    arr[i] = value


@overload(_store, inline="always")
def _store_impl(arr, i, value, noise):
    if isinstance(arr.dtype, types.Integer):  # float16 bits: stochastic rounding
        return lambda arr, i, value, noise: _set_half_bits(arr, i, value, noise)
    return lambda arr, i, value, noise: _set_float(arr, i, value)


@njit(cache=True, inline="always")
def _set_float(arr, i, value):
    arr[i] = value


@njit(cache=True, inline="always")
def _set_half_bits(arr, i, value, noise):
    arr[i] = _f32_to_half_bits_stochastic(np.float32(value), np.uint32(noise))


@intrinsic
def _f32_to_half_bits_stochastic(typingctx, x, noise):
    """float32 -> float16 bit pattern (uint16), rounded stochastically: ``noise`` (uniform in [0,
    2^13)) is added to the 13 mantissa bits float16 drops, which are then cut (the value is
    then exact in float16's normal range; below it the conversion rounds once more)."""

    def codegen(context, builder, signature, args):
        i32 = ir.IntType(32)
        bits = builder.bitcast(args[0], i32)
        noise = builder.trunc(args[1], i32) if args[1].type.width > 32 else args[1]
        bits = builder.and_(builder.add(bits, noise), ir.Constant(i32, -(1 << 13)))
        h = builder.fptrunc(builder.bitcast(bits, ir.FloatType()), ir.HalfType())
        return builder.bitcast(h, ir.IntType(16))

    return types.uint16(x, noise), codegen


@njit(cache=True)
def half_stochastic(x, seed):
    """float32 [N] -> float16 bit patterns uint16 [N], each rounded up or down at random in
    proportion to its distance (unbiased: updates far below float16's resolution still move
    a float16 pool on average); the kernel :func:`finetune_step` uses, exposed for its test."""
    out = np.empty(x.shape[0], np.uint16)
    rng = _seed_state(seed)
    for i in range(x.shape[0]):
        rng = _xorshift(rng)
        _store(out, i, x[i], rng >> np.uint64(51))
    return out


@njit(cache=True, inline="always")
def _seed_state(seed):
    """A well-mixed non-zero xorshift state from any integer seed (splitmix64's finaliser)."""
    z = np.uint64(seed) + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return (z ^ (z >> np.uint64(31))) | np.uint64(1)


@njit(cache=True, inline="always")
def _xorshift(state):
    """Next state of a 64-bit xorshift generator (Marsaglia 2003): the rounding noise."""
    state ^= state << np.uint64(13)
    state ^= state >> np.uint64(7)
    state ^= state << np.uint64(17)
    return state


@njit(parallel=True, cache=True)
def finetune_step(index, macro_dist, density, log_d, m_d, sh, sh_row, m_s, df, degree, g0, gd, near, far, k0, basis, rgb, pick, bg, step,
                  t_min, cap, lr_d, lr_s, beta, log_lo, log_hi, seed, losses):  # fmt: skip
    """One fine-tuning step on the batch of rays ``pick`` (int64 [R], rows of the ray arrays
    g0 ... rgb of :class:`TrainingRays`), in place: each ray is traced
    (:func:`trace_samples`, from k0), rendered and differentiated (:func:`_ray_gradients`, loss
    = mean over rays and channels of the squared error), and the log-densities and SH rows of its
    samples are updated at once by RMSprop with one second moment per voxel (m_d) and per SH row
    (m_s; 0: not seen yet). Rays run in parallel; the rare voxel two rays of a batch share gets
    both updates one after the other (as in sparse, lock-free SGD). ``density`` is kept equal to
    exp(log_d); a float16 ``sh`` (uint16 bits) is written with stochastic rounding.
    losses: float64 [R] out, each ray's squared error."""
    k = degree * degree
    nc = 3 * k
    r_all = pick.shape[0]
    scale = 1.0 / (3.0 * r_all)
    nt = (r_all + 63) // 64
    for task in prange(nt):
        vox = np.empty(cap, np.int64)
        wbuf, tbuf, cbuf = np.empty(cap), np.empty(cap), np.empty((cap, 3))
        gl, gx = np.empty(cap), np.empty((cap, 3))
        rng = _seed_state(seed * 65536 + task)
        for q in range(task * 64, min(r_all, task * 64 + 64)):
            r = pick[q]
            b = basis[r]
            bb = 0.0
            for j in range(k):
                bb += b[j] * b[j]
            cnt, _ = _trace_ray(index, macro_dist, density, df, g0[r, 0], g0[r, 1], g0[r, 2], gd[r, 0], gd[r, 1], gd[r, 2], near[r], far[r], k0[r],
                                step, t_min, vox)  # fmt: skip
            for i in range(cnt):  # the state the update reads: fetched while the ray is rendered
                v = vox[i]
                row = np.int64(sh_row[v])
                _prefetch(sh, row * nc)
                _prefetch(sh, row * nc + nc - 1)
                _prefetch(log_d, v)
                _prefetch(m_d, v)
                _prefetch(m_s, row)
            losses[q] = _ray_gradients(density, sh, sh_row, b, k, rgb[r], bg, step, t_min, vox, cnt, scale, wbuf, cbuf, tbuf, gl, gx)
            for i in range(cnt):
                v = vox[i]
                g = gl[i]
                m = m_d[v]
                m = beta * m + (1.0 - beta) * g * g if m > 0.0 else g * g
                m_d[v] = m
                if m > 0.0:
                    ld = min(max(log_d[v] - lr_d * g / math.sqrt(m), log_lo), log_hi)
                    log_d[v] = ld
                    density[v] = math.exp(ld)
                row = np.int64(sh_row[v])
                g2 = (gx[i, 0] * gx[i, 0] + gx[i, 1] * gx[i, 1] + gx[i, 2] * gx[i, 2]) * bb / nc
                m = m_s[row]
                m = beta * m + (1.0 - beta) * g2 if m > 0.0 else g2
                m_s[row] = m
                if m > 0.0:
                    f = lr_s / math.sqrt(m)
                    base = row * nc
                    for c in range(3):
                        gc = gx[i, c] * f
                        for j in range(k):
                            rng = _xorshift(rng)
                            _store(sh, base + c * k + j, _decode(sh[base + c * k + j]) - gc * b[j], rng >> np.uint64(51))


def macro_distance(index: np.ndarray) -> np.ndarray:
    """uint8 [Dm]^3: Chebyshev distance (in macro blocks of 8^3 coarse cells) of each macro block
    to the nearest one with an occupied cell, as :func:`trace_samples` reads it."""
    return chebyshev_distance(tile_index(index)[0] >= 0)


def composite_samples(
    sigma: Tensor, coeff: Tensor, ray_of: Tensor, basis: Tensor, step: float, background: Tensor, t_min: float
) -> tuple[Tensor, Tensor]:
    """Render packed samples (differentiable).

    Args:
        sigma: [S] densities; coeff: [S, 3K] SH coefficients; ray_of: [S] long ray of each sample
            (non-decreasing: a ray's samples are consecutive and in marching order).
        basis: [R, K] SH basis of each ray's view direction; background: [3].
    Returns:
        rgb [R, 3] (background composited, rays that stopped at ``t_min`` closed as opaque),
        opacity [R].
    """
    r, k = basis.shape
    tau = (sigma * step).double()
    cs = torch.cumsum(tau, 0)
    counts = torch.bincount(ray_of, minlength=r)
    ends = torch.cumsum(counts, 0)
    before = torch.cat([cs.new_zeros(1), cs])[ends - counts]  # sum of tau before each ray's first sample
    excl = (cs - tau - before[ray_of]).float()
    alpha = -torch.expm1(-sigma * step)
    w = torch.exp(-excl) * alpha
    col = torch.sigmoid((coeff.reshape(-1, 3, k) * basis[ray_of, None, :]).sum(-1))
    rgb = torch.zeros(r, 3, dtype=w.dtype).index_add(0, ray_of, w[:, None] * col)
    opa = torch.zeros(r, dtype=w.dtype).index_add(0, ray_of, w)
    stopped = opa.detach() >= 1.0 - t_min
    closed = rgb / opa.clamp_min(1e-6)[:, None]
    open_ = rgb + (1.0 - opa)[:, None] * background.to(rgb)[None]
    return torch.where(stopped[:, None], closed, open_), opa


@dataclass
class TrainingRays:
    """Rays with their pixels, in the tree's coarse-grid units.

    Attributes: g0, gd: float64 [N, 3] ray origins and directions in coarse-grid units (g(t) =
    g0 + t gd); near, far: float64 [N]; basis: float32 [N, K] the SH basis of each view
    direction; rgb: float32 [N, 3] the pixels; k0: int64 [N] lattice index of each ray's first
    sample with density (-1: not known; :meth:`with_first_samples`)."""

    g0: np.ndarray
    gd: np.ndarray
    near: np.ndarray
    far: np.ndarray
    basis: Tensor
    rgb: Tensor
    k0: np.ndarray

    def __len__(self) -> int:
        return self.g0.shape[0]

    def __getitem__(self, sel) -> "TrainingRays":
        t = torch.as_tensor(sel)
        return TrainingRays(self.g0[sel], self.gd[sel], self.near[sel], self.far[sel], self.basis[t], self.rgb[t], self.k0[sel])

    @classmethod
    def from_rays(cls, tree: NerfTree, origins: Tensor, dirs: Tensor, viewdirs: Tensor, near: Tensor, far: Tensor, rgb: Tensor) -> "TrainingRays":
        """From rays in the tree's space: origins, dirs, viewdirs [N, 3], near, far [N], rgb [N, 3] in [0, 1]."""
        as64 = lambda a: np.ascontiguousarray(torch.as_tensor(a).double().numpy())  # noqa: E731
        g0, gd = grid_rays(tree, as64(origins), as64(dirs))
        basis = torch.from_numpy(unit_viewdirs_basis(as64(viewdirs), tree.sh_degree)).float()
        rgb = torch.as_tensor(rgb, dtype=torch.float32)
        return cls(g0, gd, as64(near), as64(far), basis, rgb, np.full(len(g0), -1, np.int64))

    def with_first_samples(self, tree: NerfTree, density: np.ndarray, step: float, macro_dist: np.ndarray | None = None) -> "TrainingRays":
        """The rays that meet a voxel with density (only they can get a gradient), each with the
        lattice index of its first such sample in ``k0`` (where later traces start: fine-tuning
        keeps every voxel's density above zero). density: float32 [M * Df^3]."""
        vox = np.empty((len(self), 1), np.int64)
        counts = np.empty(len(self), np.int32)
        first = np.empty(len(self), np.int64)
        md = macro_distance(tree.index) if macro_dist is None else macro_dist
        trace_samples(tree.index, md, density, tree.fine_res, self.g0, self.gd, self.near, self.far, self.k0, step, 1.0, vox, counts, first)
        keep = np.flatnonzero(first >= 0)
        out = self[keep]
        out.k0 = first[keep]
        return out


def training_rays(tree: NerfTree, scene, step: float, progress: bool = True) -> TrainingRays:
    """The rays of the training pixels of ``scene`` that meet a voxel of ``tree`` with density
    (:meth:`TrainingRays.with_first_samples`)."""
    from turbonerf.rays import image_ray_bundle

    split = scene.split("train")
    density = tree.density.reshape(-1).astype(np.float32)
    md = macro_distance(tree.index)
    parts = []
    for i in tqdm(range(len(split)), desc="fine-tune: training rays", unit="view", disable=not progress, leave=False):
        rays = image_ray_bundle(split.cameras, i, scene.near, scene.far, scene.ndc)
        rgb = split.images[i].reshape(-1, 3).float() / 255.0
        data = TrainingRays.from_rays(tree, rays.origins, rays.directions, rays.viewdirs, rays.near, rays.far, rgb)
        parts.append(data.with_first_samples(tree, density, step, md))
    cat = lambda xs: np.concatenate(xs) if isinstance(xs[0], np.ndarray) else torch.cat(xs)  # noqa: E731
    return TrainingRays(*(cat([getattr(p, f) for p in parts]) for f in ("g0", "gd", "near", "far", "basis", "rgb", "k0")))


LOG_DENSITY_RANGE = (-60.0, math.log(FLOAT16_MAX))
"""log(sigma) is kept in this range: a voxel never loses its density while fine-tuned (and so
keeps its SH row), and float16 pools do not overflow"""


def finetune_tree(
    tree: NerfTree, data: TrainingRays, background: Tensor, step: float, cfg: FinetuneConfig | None = None, progress: bool = True,
    in_place: bool = False,
) -> tuple[NerfTree, dict]:
    """Fine-tune the densities and SH of ``tree`` on the pixels of ``data`` (composited on
    ``background`` [3]), marched with ``step`` (module docstring). ``data`` holds only rays
    that meet density, with their first samples (:func:`training_rays`). Returns (the new tree,
    info: steps, seconds, mean squared error over the first and the last 20 steps).

    Memory: a float32 copy of the densities (with its log and a second moment each: 12 bytes a
    voxel), a copy of the SH pool in the tree's dtype (a float16 pool is updated with stochastic
    rounding, :func:`half_stochastic`) and a second moment per SH row. ``in_place``: update the
    tree's own SH pool instead of a copy (it must be writable; the tree is then the tuned one's
    colours), which saves the copy (1.9 GB on a hazy fern tree)."""
    cfg = cfg or FinetuneConfig()
    t0 = time.perf_counter()
    dens = tree.density.reshape(-1).astype(np.float32)  # the densities the tracer reads, kept equal to exp(log_d)
    has = dens > 0
    log_d = np.log(np.maximum(dens, 1e-30)).clip(*LOG_DENSITY_RANGE).astype(np.float32)
    half = tree.sh.dtype == np.float16
    sh = tree.sh.reshape(-1).view(np.uint16) if half else tree.sh.reshape(-1)
    if not in_place:
        sh = sh.copy()
    sh_row = tree.sh_row.reshape(-1)
    m_d = np.zeros(dens.shape[0], np.float32)  # second moments (per voxel / per SH row; 0: not seen yet)
    m_s = np.zeros(tree.sh.shape[0], np.float32)
    md = macro_distance(tree.index)
    bg = np.asarray(background, np.float64)
    gen = np.random.default_rng(cfg.seed)
    losses = np.empty(min(cfg.rays_per_step, len(data)))
    basis, pixels = data.basis.numpy(), data.rgb.numpy()
    curve = []
    t_start = time.perf_counter()
    steps = 0
    batch = min(cfg.rays_per_step, len(data))
    max_steps = min(cfg.max_steps, math.ceil(cfg.max_epochs * len(data) / max(batch, 1)))
    # the step budget; the time budget is shown beside it (whichever ends first ends the bar)
    bar = tqdm(total=max_steps, desc="fine-tune", unit="step", disable=not progress, leave=False)
    while steps < max_steps:
        elapsed = time.perf_counter() - t_start
        if elapsed >= cfg.seconds:
            break
        decay = cfg.lr_final ** max(elapsed / cfg.seconds, steps / max_steps)  # whichever budget ends first
        finetune_step(
            tree.index, md, dens, log_d, m_d, sh, sh_row, m_s, tree.fine_res, tree.sh_degree, data.g0, data.gd, data.near, data.far, data.k0,
            basis, pixels, gen.integers(0, len(data), batch), bg, step, cfg.t_min, cfg.max_samples, cfg.lr_density * decay, cfg.lr_sh * decay, cfg.beta,
            *LOG_DENSITY_RANGE, steps + cfg.seed * 1_000_003, losses,
        )  # fmt: skip
        curve.append(float(losses.mean()) / 3.0)
        steps += 1
        if progress and (steps % 16 == 0 or steps == max_steps):
            bar.n = steps
            bar.set_postfix(time=f"{elapsed:.0f}/{cfg.seconds:.0f}s", mse=f"{curve[-1]:.5f}", refresh=False)
            bar.refresh()
    bar.close()
    sh = sh.view(np.float16) if half else sh
    new_density = np.where(has, dens, 0.0).astype(tree.density.dtype)
    gone = has & (new_density.reshape(-1) == 0)  # below the pool dtype's smallest density: the voxel becomes empty
    sh_np = sh.reshape(tree.sh.shape)
    if gone.any():
        sh_np = sh_np[~gone[has]]
    out = NerfTree(
        index=tree.index, density=new_density.reshape(tree.density.shape), sh=sh_np, aabb=tree.aabb, sh_degree=tree.sh_degree,
        inner_box=tree.inner_box,
    )  # fmt: skip
    span = max(1, min(20, len(curve) // 2))  # steps averaged at either end
    info = {
        "finetune_steps": steps, "finetune_seconds": time.perf_counter() - t0, "finetune_rays": len(data),
        "finetune_mse_first": float(np.mean(curve[:span])) if curve else None,
        "finetune_mse_last": float(np.mean(curve[-span:])) if curve else None,
    }  # fmt: skip
    return out, info
