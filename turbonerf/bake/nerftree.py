"""NerfTree (EfficientNeRF, Hu et al. CVPR 2022): a two-level cache of a trained radiance field.

Level 1 is a dense grid of D_c^3 coarse cells over the scene box; each cell holds -1 (empty) or
the number of a block in a pool. Level 2 is that pool: M blocks of D_f^3 fine voxels, one per
occupied cell, each voxel holding a density, and each voxel whose density is not zero also 3 x K
spherical-harmonics coefficients (K = sh_degree^2). The pool is sparse in colour: the SH rows
are stored only for voxels with density, in the order of the voxels (block by block, then a, b,
c), so the row of a voxel is the number of voxels with density before it
(:attr:`NerfTree.sh_row`). On lego most voxels of an occupied block are empty, and a dense SH
pool spent most of its bytes on them. Colour along view direction d is
``sigmoid(sum_k c_k Y_k(d))`` per channel (the activation of EfficientNeRF and PlenOctrees), so a
renderer needs no network at all.

Conventions:
- Coarse cell (i, j, k) covers ``aabb[0] + ([i, i+1] x [j, j+1] x [k, k+1]) * (aabb[1] - aabb[0]) / D_c``;
  fine voxel (a, b, c) of that cell covers the (a, b, c)-th sub-cube of D_f^3, and its values
  were taken at the voxel's centre.
- Densities are activated (>= 0) and, as in the rest of turbonerf, per unit of the ray
  parameter t: alpha = 1 - exp(-sigma * step). For forward-facing scenes the box and the rays
  are in NDC space.
- ``sh_degree`` counts bands, as :mod:`turbonerf.encodings.sh` does (3 -> 9 coefficients, the
  "SH degree 2" of the EfficientNeRF and PlenOctrees papers).

Baking (:func:`bake`) never builds a dense fine grid: the coarse pass works on slabs of the
coarse grid, the fine pass on batches of occupied cells, so memory is the coarse index grid
(4 bytes per cell: 226 MB at D_c = 384) plus the pool itself.

Unbounded scenes (a contracted Instant-NGP) are baked in contracted space: the tree's box is
[-2, 2]^3, the image of all of space under the L-inf contraction of
:mod:`turbonerf.fields.contraction`, and ``inner_box`` is the world box that maps to [-1, 1]^3.
Such a tree is marched along the world ray with the model's own steps (cone stepping), each
sample contracted before its lookup (:mod:`turbonerf.bake.march_numpy` states the rule).

The file format (:func:`save_tree`, :func:`load_tree`) is safetensors: plain arrays plus a JSON
header, no pickle. On disk the coarse grid is stored sparsely, as the flat index of the cell of
each block, so the file holds little more than the pool. Version 2 stores the sparse SH rows;
version 3 (written for contracted trees only, so that an older turbonerf refuses them instead of
marching them as bounded) adds the ``inner_box`` array; version 1 stored SH for every voxel and is
still read (its rows of empty voxels are dropped on loading).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from turbonerf.errors import TurboNerfError
from turbonerf.fields.contraction import uncontract_inf

TREE_FORMAT_VERSION = 3
"""newest NerfTree file format this turbonerf reads (1: dense SH pool; 2: SH rows only for voxels
with density; 3: 2 plus the ``inner_box`` of a contracted tree). :func:`save_tree` writes 2 for
bounded trees and 3 for contracted ones."""
CONTRACTED_BOX = np.array([[-2.0] * 3, [2.0] * 3], dtype=np.float32)
"""the box of every contracted tree: where the L-inf contraction sends all of space"""
HEADER_KEY = "turbonerf_nerftree"
POOL_DTYPES = ("float16", "float32")
FLOAT16_MAX = 65000.0
T_MIN = 0.05
"""every marcher stops a ray once its transmittance falls below this, and the renderer then treats
the ray as opaque (:func:`turbonerf.bake.render.close_terminated`). On lego: 19% fewer samples than
1e-2 at the same PSNR over the 200 test views (-0.07 dB against 1e-2 with the same closing,
-0.005 dB against 1e-2 as it was, with the background showing through); BENCHMARKS.md, "early termination"."""
TILE = 8
"""edge, in coarse cells, of the tiles :func:`bake` orders the pool by (and the CPU marcher's macro blocks)"""

DensityFn = Callable[[Tensor], Tensor]
SelectFn = Callable[[Tensor], Tensor]
"""density [N] -> bool [N]: the voxels that need a colour"""
VoxelFn = Callable[[Tensor, "SelectFn | None"], "tuple[Tensor, Tensor]"]
CandidateFn = Callable[[Tensor], Tensor]


@dataclass
class NerfTree:
    """A baked scene.

    Attributes:
        index: int32 [Dc, Dc, Dc] (x, y, z order): the pool block of each coarse cell, -1 where empty.
        density: [M, Df, Df, Df] float16 (or float32) activated density at each fine voxel.
        sh: [V, 3 * K] same dtype, SH coefficients of the V voxels whose density is not zero, in
            voxel order, channel-major (K of red, then K of green, then K of blue).
        aabb: float32 [2, 3] the box (min corner, max corner) the coarse grid covers.
        sh_degree: SH bands; K = sh_degree ** 2.
        version: file-format version the tree was read from.
        sh_row: int32 [M, Df, Df, Df], derived: the row of ``sh`` of each voxel, -1 where its
            density is zero (computed from ``density`` when not given).
        inner_box: float32 [2, 3] or None. None: a bounded tree in sample space. Otherwise the
            tree lives in contracted space (``aabb`` is [-2, 2]^3) and this world box maps to
            [-1, 1]^3 before the contraction.
    """

    index: np.ndarray
    density: np.ndarray
    sh: np.ndarray
    aabb: np.ndarray
    sh_degree: int
    version: int = 2
    sh_row: np.ndarray | None = None
    inner_box: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.sh_row is None:
            self.sh_row = sh_rows(self.density)

    @property
    def contracted(self) -> bool:
        """Whether the tree lives in contracted space (see ``inner_box``)."""
        return self.inner_box is not None

    @classmethod
    def from_dense(cls, index: np.ndarray, density: np.ndarray, sh: np.ndarray, aabb: np.ndarray, sh_degree: int) -> "NerfTree":
        """A tree from a dense SH pool [M, Df, Df, Df, 3K] (the rows of voxels without density are dropped)."""
        keep = np.asarray(density).reshape(-1) > 0
        sh = np.asarray(sh)
        return cls(index, density, np.ascontiguousarray(sh.reshape(keep.shape[0], sh.shape[-1])[keep]), aabb, sh_degree)

    def dense_sh(self) -> np.ndarray:
        """[M, Df, Df, Df, 3K] SH per voxel, zeros where the density is zero (for tests and inspection)."""
        out = np.zeros(self.density.shape + (self.sh.shape[-1],), dtype=self.sh.dtype)
        out.reshape(-1, self.sh.shape[-1])[self.sh_row.reshape(-1) >= 0] = self.sh
        return out

    @property
    def coarse_res(self) -> int:
        return int(self.index.shape[0])

    @property
    def fine_res(self) -> int:
        return int(self.density.shape[1])

    @property
    def n_blocks(self) -> int:
        return int(self.density.shape[0])

    @property
    def n_coeffs(self) -> int:
        return int(self.sh_degree) ** 2

    def voxel_size(self) -> float:
        """Edge of a fine voxel along the box's shortest axis, in sample-space units (for a
        contracted tree: in world units inside ``inner_box``, where voxels are smallest)."""
        if self.contracted:
            return inner_voxel_size(self.inner_box, self.coarse_res, self.fine_res)
        ext = np.asarray(self.aabb[1], np.float64) - np.asarray(self.aabb[0], np.float64)
        return float(ext.min()) / (self.coarse_res * self.fine_res)

    def occupied_fraction(self) -> float:
        """Fraction of coarse cells that point into the pool."""
        return self.n_blocks / float(self.coarse_res**3)

    def nbytes(self) -> int:
        """Bytes of the arrays as stored on disk (sparse coarse grid + pool)."""
        return 4 * self.n_blocks + self.density.nbytes + self.sh.nbytes + self.aabb.nbytes

    def validate(self, path: str | Path | None = None) -> None:
        """Raise TurboNerfError (naming ``path``) unless shapes, dtypes and the index are consistent."""
        idx, dens, sh = self.index, self.density, self.sh
        if idx.ndim != 3 or idx.shape[0] != idx.shape[1] or idx.shape[1] != idx.shape[2] or idx.dtype != np.int32:
            raise TurboNerfError(f"coarse index must be int32 [Dc, Dc, Dc], got {idx.dtype} {idx.shape}", path)
        if dens.ndim != 4 or not (dens.shape[1] == dens.shape[2] == dens.shape[3]) or dens.shape[1] < 1:
            raise TurboNerfError(f"fine densities must be [M, Df, Df, Df], got {dens.shape}", path)
        if dens.dtype.name not in POOL_DTYPES or sh.dtype != dens.dtype:
            raise TurboNerfError(f"pool dtype must be one of {POOL_DTYPES} for both arrays, got {dens.dtype} / {sh.dtype}", path)
        if not 1 <= int(self.sh_degree) <= 5:
            raise TurboNerfError(f"SH degree must be in 1..5, got {self.sh_degree}", path)
        n_rows = int(np.count_nonzero(dens))
        if sh.shape != (n_rows, 3 * self.n_coeffs):
            raise TurboNerfError(f"SH pool must be [{n_rows}, {3 * self.n_coeffs}] (one row per voxel with density), got {sh.shape}", path)
        if not np.all(np.isfinite(dens)) or dens.min(initial=0) < 0:
            raise TurboNerfError("fine densities must be finite and >= 0", path)
        if self.aabb.shape != (2, 3) or not np.all(np.asarray(self.aabb[1]) > np.asarray(self.aabb[0])):
            raise TurboNerfError(f"aabb must be [2, 3] with max > min, got {self.aabb.tolist()}", path)
        if self.contracted:
            box = np.asarray(self.inner_box)
            if box.shape != (2, 3) or not np.all(np.isfinite(box)) or not np.all(box[1] > box[0]):
                raise TurboNerfError(f"inner_box must be [2, 3] finite with max > min, got {box.tolist()}", path)
            if not np.allclose(self.aabb, CONTRACTED_BOX):
                raise TurboNerfError(f"a contracted tree's box must be [-2, 2]^3, got {np.asarray(self.aabb).tolist()}", path)
        occupied = idx[idx >= 0]
        if idx.min(initial=0) < -1 or occupied.size != dens.shape[0]:
            raise TurboNerfError(f"coarse index has {occupied.size} occupied cells but the pool {dens.shape[0]} blocks", path)
        if occupied.size and (occupied.max() >= dens.shape[0] or np.unique(occupied).size != occupied.size):
            raise TurboNerfError("coarse index does not map occupied cells one-to-one onto pool blocks", path)


def inner_voxel_size(inner_box, coarse_res: int, fine_res: int) -> float:
    """World edge (shortest axis) of a fine voxel of a contracted tree inside its inner box: the
    tree spans 4 contracted units, of which [-1, 1] is the inner box's full width."""
    box = np.asarray(inner_box, np.float64)
    return float(np.min(box[1] - box[0])) / 2.0 * 4.0 / (coarse_res * fine_res)


def sh_rows(density: np.ndarray) -> np.ndarray:
    """int32 [M, Df, Df, Df]: the row of the sparse SH pool of each voxel, -1 where its density is 0."""
    has = np.asarray(density).reshape(-1) > 0
    rows = np.cumsum(has, dtype=np.int64) - 1
    return np.where(has, rows, -1).astype(np.int32).reshape(np.shape(density))


def empty_index(coarse_res: int) -> np.ndarray:
    """int32 [Dc, Dc, Dc] filled with -1."""
    return np.full((coarse_res,) * 3, -1, dtype=np.int32)


def index_from_cells(cells: np.ndarray, coarse_res: int) -> np.ndarray:
    """Dense index grid from the flat cell index of each block: cells [M] -> int32 [Dc, Dc, Dc]."""
    index = empty_index(coarse_res)
    index.reshape(-1)[cells.astype(np.int64)] = np.arange(cells.shape[0], dtype=np.int32)
    return index


def cells_from_index(index: np.ndarray) -> np.ndarray:
    """Inverse of :func:`index_from_cells`: int32 [M], the flat cell of block m at position m."""
    flat = index.reshape(-1)
    nz = np.flatnonzero(flat >= 0)
    cells = np.empty(nz.shape[0], dtype=np.int32)
    cells[flat[nz]] = nz
    return cells


# --------------------------------------------------------------------------------------------
# save / load


def save_tree(path: str | Path, tree: NerfTree, info: dict | None = None) -> None:
    """Write ``tree`` atomically (temporary file + rename) as safetensors + a JSON header.

    ``info``: JSON-able facts about the bake (source run, time, settings), kept in the header
    under "info" (see :func:`read_tree_header`)."""
    from safetensors.numpy import save_file

    tree.validate(path)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    header = {
        "version": 3 if tree.contracted else 2,
        "coarse_res": tree.coarse_res,
        "fine_res": tree.fine_res,
        "n_blocks": tree.n_blocks,
        "n_sh_rows": int(tree.sh.shape[0]),
        "sh_degree": int(tree.sh_degree),
        "dtype": tree.density.dtype.name,
        "color_activation": "sigmoid",
        "info": info or {},
    }
    arrays = {
        "cells": cells_from_index(tree.index),
        "density": np.ascontiguousarray(tree.density),
        "sh": np.ascontiguousarray(tree.sh),
        "aabb": np.ascontiguousarray(tree.aabb, dtype=np.float32),
    }
    if tree.contracted:
        arrays["inner_box"] = np.ascontiguousarray(tree.inner_box, dtype=np.float32)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        save_file(arrays, str(tmp), metadata={HEADER_KEY: json.dumps(header)})
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def read_tree_header(path: str | Path) -> dict:
    """The JSON header of a NerfTree file, without reading its arrays."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise TurboNerfError("NerfTree file not found (bake one with `turbonerf bake`)", path)
    try:
        with safe_open(str(path), framework="numpy") as f:
            raw = (f.metadata() or {}).get(HEADER_KEY)
    except (SafetensorError, OSError, ValueError) as e:
        raise TurboNerfError(f"not a readable NerfTree file ({e})", path) from None
    if raw is None:
        raise TurboNerfError("not a NerfTree file (no turbonerf_nerftree header)", path)
    try:
        header = json.loads(raw)
    except json.JSONDecodeError as e:
        raise TurboNerfError(f"corrupt NerfTree header ({e})", path) from None
    version = header.get("version")
    if not isinstance(version, int) or version < 1:
        raise TurboNerfError(f"NerfTree header has no valid version ({version!r})", path)
    if version > TREE_FORMAT_VERSION:
        raise TurboNerfError(f"NerfTree format {version} is newer than this turbonerf reads ({TREE_FORMAT_VERSION})", path)
    return header


def load_tree(path: str | Path) -> NerfTree:
    """Read a tree written by :func:`save_tree`; a corrupt, truncated or inconsistent file raises
    TurboNerfError naming it."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    path = Path(path)
    header = read_tree_header(path)
    try:
        arrays = load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise TurboNerfError(f"corrupt or truncated NerfTree file ({e})", path) from None
    missing = {"cells", "density", "sh", "aabb"} - set(arrays)
    if missing:
        raise TurboNerfError(f"NerfTree file lacks arrays {sorted(missing)}", path)
    try:
        dc, df, m, deg = (int(header[k]) for k in ("coarse_res", "fine_res", "n_blocks", "sh_degree"))
    except (KeyError, TypeError, ValueError) as e:
        raise TurboNerfError(f"NerfTree header is incomplete ({e})", path) from None
    cells, dens, sh = arrays["cells"], arrays["density"], arrays["sh"]
    if dens.shape != (m, df, df, df) or cells.shape != (m,) or cells.dtype != np.int32:
        raise TurboNerfError(f"array shapes do not match the header (density {dens.shape}, cells {cells.shape}, header M={m} Df={df})", path)
    if m and (cells.min() < 0 or cells.max() >= dc**3):
        raise TurboNerfError("cell indices outside the coarse grid", path)
    version = int(header["version"])
    if version == 1:  # dense SH pool [M, Df, Df, Df, 3K]: keep the rows of voxels with density
        if sh.shape[:4] != dens.shape or sh.ndim != 5:
            raise TurboNerfError(f"version-1 SH pool must be {dens.shape} x 3K, got {sh.shape}", path)
        tree = NerfTree.from_dense(index_from_cells(cells, dc), dens, sh, arrays["aabb"].astype(np.float32), deg)
        tree.version = 1
    else:
        inner = None
        if version >= 3:
            if "inner_box" not in arrays:
                raise TurboNerfError("version-3 NerfTree file lacks its inner_box array", path)
            inner = arrays["inner_box"].astype(np.float32)
        tree = NerfTree(index_from_cells(cells, dc), dens, sh, arrays["aabb"].astype(np.float32), deg, version, inner_box=inner)
    tree.validate(path)
    return tree


# --------------------------------------------------------------------------------------------
# baking


@dataclass(frozen=True)
class BakingFields:
    """What :func:`bake` needs from a trained method (see :func:`turbonerf.bake.fields.baking_fields`).

    Attributes:
        density_fn: points [N, 3] -> activated density [N] (the coarse occupancy test).
        voxel_fn: (points [N, 3], select) -> (density [N], SH coefficients [S, 3, sh_degree**2])
            whose colour is sigmoid(sum_k c_k Y_k(d)); ``select`` (density [N] -> bool [N], or
            None for all) picks the S voxels that get a colour, so the colour head, the costly
            part of a bake, runs only for voxels the tree keeps.
        sh_degree: SH bands of ``voxel_fn``'s coefficients.
        candidate_fn: optional points [N, 3] -> bool [N], False where the method itself knows
            space is empty (its occupancy / density grid): such cells are never evaluated.
        description: how the colour is obtained (for logs and benchmark tables).
    """

    density_fn: DensityFn
    voxel_fn: VoxelFn
    sh_degree: int
    candidate_fn: CandidateFn | None = None
    description: str = ""


def density_threshold_for(opacity: float, step: float) -> float:
    """Density whose opacity over one step of length ``step`` is ``opacity``."""
    return -math.log1p(-opacity) / step


def _cell_geometry(aabb: np.ndarray, coarse_res: int) -> tuple[np.ndarray, np.ndarray]:
    """(box min corner [3], coarse cell size [3]) in float64."""
    lo = np.asarray(aabb[0], np.float64)
    return lo, (np.asarray(aabb[1], np.float64) - lo) / coarse_res


def visible_cells(aabb: np.ndarray, res: int, cameras, progress: bool = False, inner_box: np.ndarray | None = None) -> np.ndarray:
    """bool [res, res, res]: cells of a res^3 grid over ``aabb`` seen by at least one camera.

    A cell counts as seen when its bounding sphere overlaps a camera's image frustum (a
    conservative test: the sphere's projection, widened by its radius in pixels, meets the image,
    or the sphere reaches behind the image plane). Lens distortion is ignored.

    Args:
        cameras: :class:`turbonerf.cameras.Cameras` (OpenGL convention, world space).
        inner_box: the grid is in contracted space (see :class:`NerfTree`): each cell is tested
            as the sphere through the world images of its lowest and highest corners.
    """
    lo, size = _cell_geometry(aabb, res)
    ax = [torch.as_tensor(lo[i] + (np.arange(res) + 0.5) * size[i]) for i in range(3)]
    centres = torch.stack(torch.meshgrid(*ax, indexing="ij"), -1).reshape(-1, 3)
    radius = torch.full((centres.shape[0],), 0.5 * float(np.linalg.norm(size)), dtype=torch.float64)
    if inner_box is not None:
        box = torch.as_tensor(np.asarray(inner_box, np.float64))
        half = torch.as_tensor(size) / 2
        a, b = (box[0] + (uncontract_inf(c) + 1.0) * 0.5 * (box[1] - box[0]) for c in (centres - half, centres + half))
        centres, radius = 0.5 * (a + b), 0.5 * (b - a).norm(dim=-1)
    seen = torch.zeros(centres.shape[0], dtype=torch.bool)
    c2w = cameras.c2w.double().cpu()
    w, h = float(cameras.width), float(cameras.height)
    for i in tqdm(range(len(cameras)), desc="visibility", disable=not progress, unit="cam", leave=False):
        todo = torch.nonzero(~seen).squeeze(1)
        if todo.numel() == 0:
            break
        rot, t = c2w[i, :, :3], c2w[i, :, 3]
        p = (centres[todo] - t) @ rot  # world -> camera: R^T (x - t)
        depth = -p[:, 2]
        z = depth.clamp(min=1e-9)
        fx, fy, cx, cy = (float(v[i]) for v in (cameras.fx, cameras.fy, cameras.cx, cameras.cy))
        u = fx * p[:, 0] / z + cx
        v = -fy * p[:, 1] / z + cy
        rad = radius[todo]
        ru, rv = fx * rad / z, fy * rad / z
        inside = (u >= -ru) & (u <= w + ru) & (v >= -rv) & (v <= h + rv) & (depth > 0)
        seen[todo[inside | (depth.abs() <= rad)]] = True
    return seen.reshape(res, res, res).numpy()


def _upsample_mask(mask: np.ndarray, factor: int, res: int) -> np.ndarray:
    """Nearest upsampling of a bool [r, r, r] grid to [res, res, res] (r = ceil(res / factor))."""
    up = mask.repeat(factor, 0).repeat(factor, 1).repeat(factor, 2)
    return up[:res, :res, :res]


def dilate_mask(mask: np.ndarray, radius: int) -> np.ndarray:
    """bool [D, D, D] dilated by ``radius`` cells (26-neighbourhood), done axis by axis."""
    out = mask.copy()
    for axis in range(3):
        src = out.copy()
        for s in range(1, radius + 1):
            sl_a = [slice(None)] * 3
            sl_b = [slice(None)] * 3
            sl_a[axis], sl_b[axis] = slice(s, None), slice(None, -s)
            out[tuple(sl_a)] |= src[tuple(sl_b)]
            out[tuple(sl_b)] |= src[tuple(sl_a)]
    return out


def _corner_need(cand: np.ndarray) -> np.ndarray:
    """bool [s+1, D+1, D+1]: lattice corners touching at least one candidate cell of cand [s, D, D]."""
    s, d, _ = cand.shape
    need = np.zeros((s + 1, d + 1, d + 1), dtype=bool)
    for a in (0, 1):
        for b in (0, 1):
            for c in (0, 1):
                need[a : a + s, b : b + d, c : c + d] |= cand
    return need


def _eval_points(fn: Callable[[Tensor], Tensor], points: np.ndarray, batch: int, device) -> np.ndarray:
    """fn over float64 points [N, 3] in batches -> float32 [N] numpy."""
    out = np.empty(points.shape[0], dtype=np.float32)
    for s in range(0, points.shape[0], batch):
        x = torch.from_numpy(points[s : s + batch].astype(np.float32)).to(device)
        out[s : s + batch] = fn(x).float().cpu().numpy()
    return out


@torch.no_grad()
def coarse_occupancy(
    density_fn: DensityFn,
    aabb: np.ndarray,
    coarse_res: int,
    threshold: float,
    candidates: np.ndarray | None = None,
    batch: int = 1 << 16,
    device: str | torch.device = "cpu",
    progress: bool = True,
) -> np.ndarray:
    """bool [Dc, Dc, Dc]: cells where the density at the cell's centre or at one of its 8
    corners exceeds ``threshold`` (corners are shared between neighbours, so this costs about two
    evaluations per cell). Only ``candidates`` (bool [Dc]^3, default all) are evaluated; the grid
    is processed in slabs along x so memory stays O(Dc^2 * slab).
    """
    lo, size = _cell_geometry(aabb, coarse_res)
    d = coarse_res
    occ = np.zeros((d, d, d), dtype=bool)
    slab = max(4, batch // (d * d))  # x-slices per slab
    bar = tqdm(total=d, desc="bake: coarse occupancy", disable=not progress, unit="slice", leave=False)
    for x0 in range(0, d, slab):
        x1 = min(d, x0 + slab)
        cand = np.ones((x1 - x0, d, d), dtype=bool) if candidates is None else candidates[x0:x1]
        if not cand.any():
            bar.update(x1 - x0)
            continue
        # centres
        ci = np.argwhere(cand)
        centres = lo + (ci + [x0 + 0.5, 0.5, 0.5]) * size
        vals = np.zeros(cand.shape, dtype=np.float32)
        vals[tuple(ci.T)] = _eval_points(density_fn, centres, batch, device)
        # corners
        need = _corner_need(cand)
        ki = np.argwhere(need)
        corners = lo + (ki + [x0, 0, 0]) * size
        cv = np.zeros(need.shape, dtype=np.float32)
        cv[tuple(ki.T)] = _eval_points(density_fn, corners, batch, device)
        s = x1 - x0
        for a in (0, 1):
            for b in (0, 1):
                for c in (0, 1):
                    np.maximum(vals, cv[a : a + s, b : b + d, c : c + d], out=vals)
        occ[x0:x1] = cand & (vals > threshold)
        bar.update(x1 - x0)
    bar.close()
    return occ


def _candidate_mask(candidate_fn: CandidateFn, aabb: np.ndarray, coarse_res: int, batch: int, device) -> np.ndarray:
    """bool [Dc]^3: cells with at least one of their 8 (slightly inset) corners accepted by
    ``candidate_fn``; exact for a method grid at most as fine as the coarse grid."""
    lo, size = _cell_geometry(aabb, coarse_res)
    d = coarse_res
    out = np.zeros((d, d, d), dtype=bool)
    inset = np.array([0.01, 0.99])
    grid_yz = np.stack(np.meshgrid(np.arange(d), np.arange(d), indexing="ij"), -1).reshape(-1, 2)
    for x in range(d):
        ijk = np.concatenate([np.full((grid_yz.shape[0], 1), x), grid_yz], 1).astype(np.float64)
        hit = np.zeros(ijk.shape[0], dtype=bool)
        for a in inset:
            for b in inset:
                for c in inset:
                    pts = lo + (ijk + [a, b, c]) * size
                    for s in range(0, pts.shape[0], batch):
                        x_t = torch.from_numpy(pts[s : s + batch].astype(np.float32)).to(device)
                        hit[s : s + batch] |= candidate_fn(x_t).cpu().numpy().astype(bool)
        out[x] = hit.reshape(d, d)
    return out


def tile_order(cells: np.ndarray, coarse_res: int, tile: int = TILE) -> np.ndarray:
    """Permutation sorting flat coarse cells [M] tile by tile (tile^3 blocks of cells, x-major),
    so that blocks of neighbouring cells lie close together in the pool."""
    ijk = np.stack(np.unravel_index(cells.astype(np.int64), (coarse_res,) * 3), -1)
    dm = -(-coarse_res // tile)
    t = ijk // tile
    loc = ijk % tile
    key = ((t[:, 0] * dm + t[:, 1]) * dm + t[:, 2]) * tile**3 + (loc[:, 0] * tile + loc[:, 1]) * tile + loc[:, 2]
    return np.argsort(key, kind="stable")


def _fine_offsets(fine_res: int) -> np.ndarray:
    """[Df^3, 3] voxel-centre offsets inside a cell in units of the cell, (a, b, c) C-order."""
    r = (np.arange(fine_res) + 0.5) / fine_res
    return np.stack(np.meshgrid(r, r, r, indexing="ij"), -1).reshape(-1, 3)


@dataclass
class BakedBlocks:
    """The fine pass's result for a run of coarse cells (:func:`fine_pass`): the cells that kept
    a block, in the order given, their densities and the SH rows of their voxels with density.

    Attributes:
        cells: int64 [w] flat coarse cell of each kept block.
        density: [w, Df^3] pool dtype.
        sh: [v, 3K] pool dtype, v = voxels of ``density`` that are not zero.
    """

    cells: np.ndarray
    density: np.ndarray
    sh: np.ndarray


def _all_slices(coarse_res: int) -> np.ndarray:
    return np.ones(coarse_res, dtype=bool)


def _alone(n: int, align: int) -> tuple[int, int]:
    return 0, n


@dataclass(frozen=True)
class BakeShare:
    """How :func:`bake` shares its work between processes; the default: one process does it all.

    Attributes:
        slices: Dc -> bool [Dc], the x-slices whose occupancy this process tests.
        combine: bool [Dc]^3 occupancy of this process's slices -> the whole grid's (every process).
        span: (n cells, alignment) -> this process's run [start, end) of the cells to bake,
            split only at multiples of the alignment.
        join: this process's :class:`BakedBlocks` -> every process's, in order, on the process
            that writes the tree; None on the others.
    """

    slices: Callable[[int], np.ndarray] = _all_slices
    combine: Callable[[np.ndarray], np.ndarray] = np.asarray
    span: Callable[[int, int], "tuple[int, int]"] = _alone
    join: Callable[["BakedBlocks"], "list[BakedBlocks] | None"] = lambda blocks: [blocks]


def default_threshold(aabb: np.ndarray, coarse_res: int, fine_res: int) -> float:
    """The occupancy threshold :func:`bake` uses by default: opacity 0.01 over one fine voxel."""
    _, size = _cell_geometry(np.asarray(aabb, np.float32).reshape(2, 3), coarse_res)
    return density_threshold_for(0.01, float(size.min()) / fine_res)


def fine_batch_cells(batch: int, fine_res: int) -> int:
    """Cells per field call of :func:`fine_pass` (about ``batch`` points). A run of cells split at
    multiples of it is evaluated in the same batches as the whole, so the parts equal the whole."""
    return max(1, batch // fine_res**3)


def bake_candidates(
    fields: BakingFields, aabb: np.ndarray, coarse_res: int, cameras=None, batch: int = 1 << 16, device="cpu", progress: bool = True,
    inner_box: np.ndarray | None = None,
) -> np.ndarray:
    """bool [Dc]^3: the cells worth testing: seen by some camera of ``cameras`` (tested on a 4x
    coarser grid, conservatively; all cells when None) and not empty by the method's own grid.
    ``inner_box``: the grid is in contracted space (:func:`visible_cells`)."""
    cand = np.ones((coarse_res,) * 3, dtype=bool)
    if cameras is not None:
        f = 4 if coarse_res >= 16 else 1
        cand &= _upsample_mask(visible_cells(aabb, -(-coarse_res // f), cameras, progress, inner_box), f, coarse_res)
    if fields.candidate_fn is not None:
        cand &= _candidate_mask(fields.candidate_fn, aabb, coarse_res, batch, device)
    return cand


def cells_to_bake(occ: np.ndarray, cand: np.ndarray, dilate: int = 0) -> np.ndarray:
    """int64 [M0]: the flat occupied cells of ``occ`` (grown by ``dilate`` cells within ``cand``),
    in tile order (:func:`tile_order`)."""
    if dilate > 0:
        occ = dilate_mask(occ, dilate) & cand
    cells = np.flatnonzero(occ.reshape(-1))
    return cells[tile_order(cells, occ.shape[0])]


@torch.no_grad()
def fine_pass(
    fields: BakingFields,
    cells: np.ndarray,
    aabb: np.ndarray,
    coarse_res: int,
    fine_res: int,
    threshold: float,
    density_floor: float,
    batch: int = 1 << 16,
    device: str | torch.device = "cpu",
    dtype: str = "float16",
    progress: bool = True,
) -> BakedBlocks:
    """``fields.voxel_fn`` at the D_f^3 voxel centres of each cell of ``cells`` [M0], in batches
    of :func:`fine_batch_cells` cells: densities below ``density_floor`` become exactly 0 (they get
    no colour), cells whose densities all stay at or below ``threshold`` are dropped, and colour
    is computed only for the voxels that remain. Kept blocks stay in the order of ``cells``."""
    lo, size = _cell_geometry(aabb, coarse_res)
    k = fields.sh_degree**2
    m0, nf = cells.shape[0], fine_res**3
    np_dtype = np.dtype(dtype)
    density = np.empty((m0, nf), dtype=np_dtype)
    sh = np.empty((max(1, m0 * nf // 4), 3 * k), dtype=np_dtype)  # grown on demand
    kept = np.empty(m0, dtype=np.int64)
    offsets = _fine_offsets(fine_res)
    per_batch = fine_batch_cells(batch, fine_res)

    def select(sig: Tensor) -> Tensor:
        """fine densities [B * nf] -> bool [B * nf]: at least the floor, in a cell that stays."""
        sig = sig.float().clamp(0.0, FLOAT16_MAX).reshape(-1, nf)
        return ((sig >= density_floor) & (sig > 0) & (sig > threshold).any(dim=1, keepdim=True)).reshape(-1)

    w = 0  # blocks kept so far: empty cells are compacted away as we go, in place
    v = 0  # SH rows written so far: only voxels with density get one
    bar = tqdm(total=m0, desc="bake: fine voxels", disable=not progress, unit="cell", leave=False)
    for s in range(0, m0, per_batch):
        c = cells[s : s + per_batch]
        ijk = np.stack(np.unravel_index(c, (coarse_res,) * 3), -1).astype(np.float64)
        pts = lo + (ijk[:, None, :] + offsets[None]) * size  # [B, nf, 3]
        x = torch.from_numpy(pts.reshape(-1, 3).astype(np.float32)).to(device)
        sigma, rows = fields.voxel_fn(x, select)
        sigma = sigma.float().clamp(0.0, FLOAT16_MAX).reshape(len(c), nf)
        keep_t = (sigma > threshold).any(dim=1)
        stored = select(sigma.reshape(-1)).reshape(len(c), nf)  # the voxels that got a colour
        keep = keep_t.cpu().numpy()
        # at least float16's smallest positive value, so that a stored density is never rounded to 0
        sigma = torch.where(stored, sigma.clamp(min=1e-7), torch.zeros_like(sigma)).cpu().numpy()[keep].astype(np_dtype)
        rows = rows.float().clamp(-FLOAT16_MAX, FLOAT16_MAX).reshape(-1, 3 * k).cpu().numpy()
        if v + rows.shape[0] > sh.shape[0]:  # grow geometrically (realloc: usually no copy)
            sh.resize((max(v + rows.shape[0], 2 * sh.shape[0]), 3 * k), refcheck=False)
        nk = int(keep.sum())
        density[w : w + nk] = sigma
        sh[v : v + rows.shape[0]] = rows
        kept[w : w + nk] = c[keep]
        w += nk
        v += rows.shape[0]
        bar.update(len(c))
    bar.close()
    density.resize((w, nf), refcheck=False)  # shrink in place (no second copy of the pool)
    sh.resize((v, 3 * k), refcheck=False)
    return BakedBlocks(kept[:w], density, sh)


def tree_from_blocks(
    parts: list[BakedBlocks], aabb: np.ndarray, coarse_res: int, fine_res: int, sh_degree: int, inner_box: np.ndarray | None = None
) -> NerfTree:
    """The tree of the fine pass's results over consecutive runs of cells, in order (one part:
    no copy); ``inner_box``: see :class:`NerfTree`."""
    if len(parts) == 1:
        cells, density, sh = parts[0].cells, parts[0].density, parts[0].sh
    else:
        cells = np.concatenate([p.cells for p in parts])
        density = np.concatenate([p.density for p in parts])
        sh = np.concatenate([p.sh for p in parts])
    return NerfTree(
        index=index_from_cells(cells, coarse_res),
        density=density.reshape(cells.shape[0], fine_res, fine_res, fine_res),
        sh=sh,
        aabb=np.asarray(aabb, np.float32).reshape(2, 3),
        sh_degree=sh_degree,
        inner_box=None if inner_box is None else np.asarray(inner_box, np.float32).reshape(2, 3),
    )


def check_pool_size(n_cells: int, coarse_res: int, fine_res: int, sh_degree: int, dtype: str, max_pool_gib: float) -> None:
    """Refuse (before the fine pass) a pool that could exceed ``max_pool_gib``."""
    pool_gib = n_cells * fine_res**3 * (1 + 3 * sh_degree**2) * np.dtype(dtype).itemsize / 2**30  # colour for every voxel
    if pool_gib > max_pool_gib:
        raise TurboNerfError(
            f"{n_cells} occupied cells ({100 * n_cells / coarse_res**3:.1f}% of the grid) could need a {pool_gib:.1f} GiB pool "
            f"(limit {max_pool_gib:g} GiB): raise the threshold or lower the resolution"
        )


def check_bake_settings(coarse_res: int, fine_res: int, dtype: str) -> None:
    if dtype not in POOL_DTYPES:
        raise TurboNerfError(f"pool dtype must be one of {POOL_DTYPES}, got {dtype!r}")
    if coarse_res < 1 or fine_res < 1:
        raise TurboNerfError(f"resolutions must be positive (coarse {coarse_res}, fine {fine_res})")


def as_box(aabb) -> np.ndarray:
    """float32 [2, 3] numpy copy of a box given as a tensor, an array or nested lists."""
    return np.asarray(torch.as_tensor(aabb).detach().cpu().float().numpy(), dtype=np.float32).reshape(2, 3)


@torch.no_grad()
def bake(
    fields: BakingFields,
    aabb,
    coarse_res: int = 192,
    fine_res: int = 4,
    cameras=None,
    threshold: float | None = None,
    batch: int = 1 << 16,
    device: str | torch.device = "cpu",
    dtype: str = "float16",
    dilate: int = 0,
    density_floor: float | None = None,
    max_pool_gib: float = 16.0,
    progress: bool = True,
    share: BakeShare | None = None,
    inner_box=None,
) -> NerfTree | None:
    """Bake a field into a NerfTree.

    1. Candidates (:func:`bake_candidates`): every coarse cell, minus cells no camera in
       ``cameras`` sees, minus cells the method's own grid calls empty (``fields.candidate_fn``).
    2. Occupancy: a candidate cell is occupied when the density at its centre or at one of its
       corners exceeds ``threshold`` (:func:`coarse_occupancy`); then optionally dilated by
       ``dilate`` cells (within the candidates), and ordered tile by tile (:func:`cells_to_bake`),
       which keeps neighbouring cells close in the pool.
    3. Fine pass (:func:`fine_pass`): densities and colours at the D_f^3 voxel centres of each
       occupied cell; voxels below ``density_floor`` store 0 and no colour, cells that stay at or
       below ``threshold`` everywhere are dropped.

    Args:
        aabb: [2, 3] box (sample space: NDC for forward-facing scenes).
        cameras: training cameras for visibility culling, or None (e.g. NDC scenes, where the
            box already is the reference camera's frustum).
        threshold: density above which space counts as occupied; default: the density with
            opacity 0.01 over one fine voxel (for unit-length ray directions).
        batch: points per call of the field functions.
        dtype: "float16" (default; half the storage) or "float32" for the pool.
        dilate: grow the occupied cells by this many cells before the fine pass (catches thin
            structures the 9-point occupancy test missed; costs fine evaluations).
        density_floor: fine densities below it are stored as 0 (and get no colour); default
            ``threshold`` (opacity 0.01 per fine voxel: on a lego Instant-NGP at D_c = 192 it stored
            15% fewer voxels than threshold / 10 at +0.02 dB; BENCHMARKS.md).
        max_pool_gib: refuse (before the fine pass) when the pool would exceed this size.
        inner_box: [2, 3] world box, for a field that lives in contracted space: ``aabb`` must
            then be [-2, 2]^3, the field takes contracted points, the visibility test maps cells
            back to the world, and the tree records the box (:class:`NerfTree`).
        share: how the occupancy test and the fine pass are shared between processes (default:
            this one does all; ``turbonerf bake --nproc N`` builds one from its replicas in
            :mod:`turbonerf.app.bake`). Every process takes the same steps in the same order.
    Returns:
        the tree (None on a process that only contributed a share).
    """
    share = share or BakeShare()
    check_bake_settings(coarse_res, fine_res, dtype)
    aabb = as_box(aabb)
    if inner_box is not None and not np.allclose(aabb, CONTRACTED_BOX):
        raise TurboNerfError("a contracted bake covers [-2, 2]^3")
    threshold = default_threshold(aabb, coarse_res, fine_res) if threshold is None else threshold
    density_floor = threshold if density_floor is None else density_floor
    cand = bake_candidates(fields, aabb, coarse_res, cameras, batch, device, progress, inner_box)
    mine = cand & share.slices(coarse_res)[:, None, None]
    occ = share.combine(coarse_occupancy(fields.density_fn, aabb, coarse_res, threshold, mine, batch, device, progress))
    cells = cells_to_bake(occ, cand, dilate)
    del occ, cand, mine
    check_pool_size(cells.shape[0], coarse_res, fine_res, fields.sh_degree, dtype, max_pool_gib)
    start, end = share.span(cells.shape[0], fine_batch_cells(batch, fine_res))
    blocks = fine_pass(fields, cells[start:end], aabb, coarse_res, fine_res, threshold, density_floor, batch, device, dtype, progress)
    parts = share.join(blocks)
    return None if parts is None else tree_from_blocks(parts, aabb, coarse_res, fine_res, fields.sh_degree, inner_box)
