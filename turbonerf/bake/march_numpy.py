"""Reference NerfTree marcher in plain numpy: slow, obvious, the ground truth of the parity tests.

Marching rule shared by every backend (see :func:`turbonerf.bake.render.render_tree`):

- Samples sit on a fixed lattice along each ray, t_k = near + (k + 1/2) * step for k = 0, 1, ...
  while t_k < far; each stands for an interval of length ``step``.
- A sample's position in coarse-grid units is g = (o - aabb_min) * s + t_k * (d * s) with
  s = D_c / (aabb_max - aabb_min). Its fine voxel is F = floor(g * D_f) (per axis, in
  [0, D_c * D_f) or the sample is outside), its coarse cell F // D_f. Samples in empty coarse
  cells (or outside the box) contribute nothing.
- ``nearest``: density and SH of voxel F. ``trilinear``: density interpolated between the 8
  fine-voxel centres around g (voxels of empty cells or outside count as density 0); SH
  interpolated the same way but normalised over the voxels that have density (only they store
  colour).
- rgb_c = sigmoid(sum_k sh[c * K + k] * Y_k(viewdir)); alpha = 1 - exp(-sigma * step);
  front-to-back compositing; a ray stops after the sample that brings its transmittance below
  ``t_min``. Outputs: rgb = sum w c + (1 - opacity) * background, depth = sum w t_k,
  opacity = sum w, samples = number of samples taken in occupied cells.
"""

from __future__ import annotations

import numpy as np
import torch

from turbonerf.bake.nerftree import T_MIN, NerfTree
from turbonerf.encodings.sh import sh_basis

CORNERS = [(a, b, c) for a in (0, 1) for b in (0, 1) for c in (0, 1)]


def grid_rays(tree: NerfTree, origins: np.ndarray, dirs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rays in coarse-grid units: (g0 [R, 3], gd [R, 3]) float64, g(t) = g0 + t * gd."""
    lo = tree.aabb[0].astype(np.float64)
    scale = tree.coarse_res / (tree.aabb[1].astype(np.float64) - lo)
    return (origins.astype(np.float64) - lo) * scale, dirs.astype(np.float64) * scale


def unit_viewdirs_basis(viewdirs: np.ndarray, sh_degree: int) -> np.ndarray:
    """[R, 3] view directions -> [R, K] SH basis at the normalised directions (float64)."""
    v = torch.from_numpy(np.asarray(viewdirs, dtype=np.float64))
    v = v / v.norm(dim=-1, keepdim=True).clamp(min=1e-12)
    return sh_basis(v, sh_degree).numpy()


def lookup_nearest(tree: NerfTree, g: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Samples g [S, 3] (grid units) -> occupied [S] bool, sigma [S], sh [S, 3K] (zeros where empty)."""
    dc, df = tree.coarse_res, tree.fine_res
    n = dc * df
    f = np.floor(g * df).astype(np.int64)
    inside = np.all((f >= 0) & (f < n), axis=1)
    fc = np.where(inside[:, None], f, 0)
    c = fc // df
    m = np.where(inside, tree.index[c[:, 0], c[:, 1], c[:, 2]], -1)
    occ = m >= 0
    loc = fc - c * df
    mm = np.where(occ, m, 0)
    sigma = tree.density[mm, loc[:, 0], loc[:, 1], loc[:, 2]].astype(np.float64) * occ
    return occ, sigma, _sh_of(tree, np.where(occ, tree.sh_row[mm, loc[:, 0], loc[:, 1], loc[:, 2]], -1))


def _sh_of(tree: NerfTree, rows: np.ndarray) -> np.ndarray:
    """SH rows [S] (-1: none) -> [S, 3K] float64, zeros where there is no row."""
    return tree.sh[np.maximum(rows, 0)].astype(np.float64) * (rows >= 0)[:, None]


def lookup_trilinear(tree: NerfTree, g: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Like :func:`lookup_nearest` with trilinear interpolation between fine-voxel centres."""
    occ, _, _ = lookup_nearest(tree, g)
    dc, df = tree.coarse_res, tree.fine_res
    n = dc * df
    q = g * df - 0.5
    i0 = np.floor(q).astype(np.int64)
    w = q - i0
    sigma = np.zeros(g.shape[0])
    sh = np.zeros((g.shape[0], tree.sh.shape[-1]))
    wsum = np.zeros(g.shape[0])
    for corner in CORNERS:
        f = i0 + np.array(corner)
        ok = np.all((f >= 0) & (f < n), axis=1)
        f = np.where(ok[:, None], f, 0)
        c = f // df
        m = np.where(ok, tree.index[c[:, 0], c[:, 1], c[:, 2]], -1)
        ok &= m >= 0
        loc = f - c * df
        mm = np.where(ok, m, 0)
        wc = np.ones(g.shape[0])
        for axis in range(3):
            wc = wc * (w[:, axis] if corner[axis] else 1.0 - w[:, axis])
        wc = wc * ok
        sigma += wc * tree.density[mm, loc[:, 0], loc[:, 1], loc[:, 2]].astype(np.float64)
        rows = np.where(ok, tree.sh_row[mm, loc[:, 0], loc[:, 1], loc[:, 2]], -1)
        wc = wc * (rows >= 0)
        sh += wc[:, None] * _sh_of(tree, rows)
        wsum += wc
    sh = sh / np.where(wsum > 0, wsum, 1.0)[:, None]
    return occ, sigma * occ, sh * occ[:, None]


class _Composite:
    """Front-to-back compositing state of R rays (float64), shared by both reference marchers."""

    def __init__(self, r: int, basis: np.ndarray):
        self.basis, self.k = basis, basis.shape[1]
        self.trans = np.ones(r)
        self.rgb, self.depth, self.opac = np.zeros((r, 3)), np.zeros(r), np.zeros(r)
        self.samples = np.zeros(r, dtype=np.int32)

    def add(self, act: np.ndarray, sigma: np.ndarray, sh: np.ndarray, t: np.ndarray, length) -> None:
        """One sample on each ray ``act`` [S] (in an occupied cell): density [S], SH [S, 3K], at t
        [S], standing for an interval of ``length`` (scalar or [S])."""
        alpha = 1.0 - np.exp(-sigma * length)
        w = self.trans[act] * alpha
        col = 1.0 / (1.0 + np.exp(-(sh.reshape(-1, 3, self.k) * self.basis[act, None, :]).sum(-1)))
        self.rgb[act] += w[:, None] * col
        self.depth[act] += w * t
        self.opac[act] += w
        self.trans[act] *= 1.0 - alpha
        self.samples[act] += 1

    def outputs(self, background: np.ndarray) -> dict[str, np.ndarray]:
        rgb = self.rgb + (1.0 - self.opac)[:, None] * np.asarray(background, np.float64)[None]
        f32 = lambda a: a.astype(np.float32)  # noqa: E731
        return {"rgb": f32(rgb), "depth": f32(self.depth), "opacity": f32(self.opac), "samples": self.samples}


def march_numpy(
    tree: NerfTree,
    origins: np.ndarray,
    dirs: np.ndarray,
    viewdirs: np.ndarray,
    near: np.ndarray,
    far: np.ndarray,
    background: np.ndarray,
    step: float,
    lookup: str = "nearest",
    t_min: float = T_MIN,
) -> dict[str, np.ndarray]:
    """March R rays through ``tree`` (rule in the module docstring).

    Args:
        origins, dirs: [R, 3] in the tree's space; viewdirs: [R, 3] colour directions.
        near, far: [R]; background: [3].
    Returns:
        rgb [R, 3], depth [R], opacity [R] float32, samples [R] int32.
    """
    lut = {"nearest": lookup_nearest, "trilinear": lookup_trilinear}[lookup]
    r = origins.shape[0]
    g0, gd = grid_rays(tree, origins, dirs)
    near = np.broadcast_to(np.asarray(near, np.float64), (r,))
    far = np.broadcast_to(np.asarray(far, np.float64), (r,))
    acc = _Composite(r, unit_viewdirs_basis(viewdirs, tree.sh_degree))
    n_steps = int(np.ceil(np.max((far - near) / step, initial=0.0))) + 1
    for i in range(n_steps):
        t = near + (i + 0.5) * step
        act = np.flatnonzero((acc.trans >= t_min) & (t < far))
        if act.size == 0:
            if np.all(t >= far) or np.all(acc.trans < t_min):
                break
            continue
        occ, sigma, sh = lut(tree, g0[act] + t[act, None] * gd[act])
        acc.add(act[occ], sigma[occ], sh[occ], t[act][occ], step)
    return acc.outputs(background)


# --------------------------------------------------------------------------------------------
# contracted trees (unbounded scenes)

MAX_STEPS = 1024
"""most lattice steps a ray of a contracted tree takes (Instant-NGP's ``max_samples``)"""


def cone_edges(near: np.ndarray, dt: np.ndarray, k: np.ndarray, cone_angle: float) -> np.ndarray:
    """Lattice edges of a contracted march: t after k steps from ``near`` with step length
    max(dt, cone_angle * t) (Instant-NGP's cone stepping, as
    :func:`turbonerf.samplers.occupancy.cone_positions`): linear up to dt / cone_angle, then
    geometric, t_k = t_s * exp((k - n_s) * log1p(cone_angle)). near, dt: [R]; k: [K] -> [R, K] float64."""
    near, dt = np.asarray(near, np.float64), np.asarray(dt, np.float64)
    k = np.asarray(k, np.float64)[None]
    linear = near[:, None] + k * dt[:, None]
    if cone_angle <= 0:
        return linear
    n_lin = np.ceil(np.maximum(dt / cone_angle - near, 0.0) / dt)[:, None]
    start = near[:, None] + n_lin * dt[:, None]
    geometric = start * np.exp(np.maximum(k - n_lin, 0.0) * np.log1p(cone_angle))
    return np.where(k <= n_lin, linear, geometric)


def contract_np(p: np.ndarray) -> np.ndarray:
    """The L-inf contraction of :func:`turbonerf.fields.contraction.contract_inf` on [S, 3] float64."""
    n = np.abs(p).max(axis=-1, keepdims=True)
    safe = np.maximum(n, 1.0)
    return np.where(n <= 1.0, p, (2.0 - 1.0 / safe) * p / safe)


def march_numpy_contracted(
    tree: NerfTree,
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
) -> dict[str, np.ndarray]:
    """March R world rays through a contracted tree (``tree.inner_box`` set).

    The rule, shared with the numba kernel: lattice edges e_k = :func:`cone_edges` (near,
    step / |d|, k) for k = 0 .. ``max_steps``; sample k sits at the middle m_k of [e_k, e_k+1]
    while m_k < far and stands for that interval (alpha = 1 - exp(-sigma (e_k+1 - e_k))); its
    world point o + m_k d is mapped to [-1, 1]^3 by the inner box, contracted, and looked up in
    the [-2, 2]^3 tree exactly as :func:`march_numpy` looks up a point. Compositing, early
    termination and outputs as there.
    """
    lut = {"nearest": lookup_nearest, "trilinear": lookup_trilinear}[lookup]
    r = origins.shape[0]
    inner = np.asarray(tree.inner_box, np.float64)
    centre, half = inner.mean(0), (inner[1] - inner[0]) / 2.0
    po = (origins.astype(np.float64) - centre) / half
    pd = dirs.astype(np.float64) / half
    lo = tree.aabb[0].astype(np.float64)
    scale = tree.coarse_res / (tree.aabb[1].astype(np.float64) - lo)
    near = np.broadcast_to(np.asarray(near, np.float64), (r,))
    far = np.broadcast_to(np.asarray(far, np.float64), (r,))
    dt = step / np.maximum(np.linalg.norm(dirs.astype(np.float64), axis=-1), 1e-12)
    acc = _Composite(r, unit_viewdirs_basis(viewdirs, tree.sh_degree))
    edges = cone_edges(near, dt, np.arange(max_steps + 1), cone_angle) if r else np.zeros((0, max_steps + 1))
    for i in range(max_steps):
        tm = 0.5 * (edges[:, i] + edges[:, i + 1])
        act = np.flatnonzero((acc.trans >= t_min) & (tm < far))
        if act.size == 0:
            break
        occ, sigma, sh = lut(tree, (contract_np(po[act] + tm[act, None] * pd[act]) - lo) * scale)
        act = act[occ]
        acc.add(act, sigma[occ], sh[occ], tm[act], edges[act, i + 1] - edges[act, i])
    return acc.outputs(background)
