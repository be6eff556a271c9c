"""NerfTree marcher in torch: vectorised over rays, runs on CUDA (and, slower, on the CPU).

Same marching rule as :mod:`turbonerf.bake.march_numpy`, organised for a GPU:

1. Ray skipping: every ray first walks the coarse grid at half-cell spacing against the
   occupancy dilated by one cell, which finds the first and the last coarse hit; the lattice
   march then only covers [first - 1 cell, last + 1 cell] (exact: a sample in an occupied cell
   lies within a quarter cell of a hit of the dilated grid). Rays that hit nothing are done.
2. Rounds of ``samples_per_round`` lattice samples for all live rays at once: coarse lookup for
   every sample, density (and colour) only for samples in occupied cells, exclusive cumprod of
   (1 - alpha) for transmittance, and a sample counts while the transmittance in front of it is
   >= t_min (the sequential rule of the other backends). Rays that terminated or left their
   range are compacted away after each round (ngp_pl style).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from turbonerf.bake.nerftree import T_MIN, NerfTree
from turbonerf.encodings.sh import sh_basis

CORNERS = [(a, b, c) for a in (0, 1) for b in (0, 1) for c in (0, 1)]


@dataclass(frozen=True)
class TorchTree:
    """A tree as tensors on one device.

    Attributes:
        index: int32 [Dc^3] flat coarse index (-1 empty).
        dilated: bool [Dc^3] occupancy dilated by one cell (26-neighbourhood).
        density: [M * Df^3] pool densities (the tree's dtype).
        sh_row: int32 [M * Df^3] row of ``sh`` of each voxel, -1 where its density is zero.
        sh: [V, 3K] SH coefficients of the voxels with density.
        lo, scale: float64 [3] box minimum and coarse cells per unit.
    """

    index: Tensor
    dilated: Tensor
    density: Tensor
    sh_row: Tensor
    sh: Tensor
    lo: Tensor
    scale: Tensor
    coarse_res: int
    fine_res: int
    sh_degree: int

    @property
    def device(self) -> torch.device:
        return self.index.device


def prepare_torch(tree: NerfTree, device: str | torch.device = "cpu") -> TorchTree:
    """Move ``tree`` to ``device`` (once; reuse the result across frames)."""
    dev = torch.device(device)
    occ = torch.from_numpy(tree.index >= 0).to(dev)
    dil = F.max_pool3d(occ[None, None].half() if dev.type == "cuda" else occ[None, None].float(), 3, 1, 1)[0, 0] > 0
    lo = tree.aabb[0].astype(np.float64)
    scale = tree.coarse_res / (tree.aabb[1].astype(np.float64) - lo)
    return TorchTree(
        index=torch.from_numpy(tree.index).reshape(-1).to(dev),
        dilated=dil.reshape(-1),
        density=torch.from_numpy(tree.density.reshape(-1)).to(dev),
        sh_row=torch.from_numpy(tree.sh_row.reshape(-1)).to(dev),
        sh=torch.from_numpy(tree.sh).to(dev),
        lo=torch.from_numpy(lo).to(dev),
        scale=torch.from_numpy(scale).to(dev),
        coarse_res=tree.coarse_res,
        fine_res=tree.fine_res,
        sh_degree=tree.sh_degree,
    )


def ray_box_clip(g0: Tensor, gd: Tensor, size: float, near: Tensor, far: Tensor) -> tuple[Tensor, Tensor]:
    """Clip t in [near, far] to the box [0, size]^3 (grid units). Returns (ta, tb) [R]; empty when ta >= tb."""
    big = float("inf")
    safe = torch.where(gd == 0, torch.ones_like(gd), gd)
    t1, t2 = (0.0 - g0) / safe, (size - g0) / safe
    lo_t = torch.where(gd == 0, torch.where((g0 >= 0) & (g0 <= size), -big, big), torch.minimum(t1, t2))
    hi_t = torch.where(gd == 0, torch.where((g0 >= 0) & (g0 <= size), big, -big), torch.maximum(t1, t2))
    return torch.maximum(near, lo_t.amax(-1)), torch.minimum(far, hi_t.amin(-1))


def _flat_cell(c: Tensor, d: int) -> Tensor:
    """[..., 3] long cell coordinates -> flat index (x-major)."""
    return (c[..., 0] * d + c[..., 1]) * d + c[..., 2]


def coarse_hit_range(tt: TorchTree, g0: Tensor, gd: Tensor, ta: Tensor, tb: Tensor, round_size: int = 64) -> tuple[Tensor, Tensor]:
    """First and last t of each ray in the dilated occupancy (half-cell spacing from ta to tb,
    tb included). Returns (t_first, t_last) [R]; t_first = +inf for rays with no hit."""
    r = g0.shape[0]
    d = tt.coarse_res
    h = 0.5 / gd.norm(dim=-1).clamp(min=1e-30)
    n = torch.ceil(((tb - ta) / h).clamp(min=0)).long() + 1  # samples ta + j h, last one clamped to tb
    t_first = torch.full((r,), float("inf"), dtype=g0.dtype, device=g0.device)
    t_last = torch.full((r,), float("-inf"), dtype=g0.dtype, device=g0.device)
    for reverse in (False, True):
        live = torch.nonzero(ta < tb).squeeze(1)
        j0 = 0
        while live.numel():
            j = j0 + torch.arange(round_size, device=g0.device)
            jj = j[None, :].expand(live.numel(), -1)
            nl = n[live]
            valid = jj < nl[:, None]
            jj = (nl[:, None] - 1 - jj) if reverse else jj
            t = torch.minimum(ta[live, None] + jj.to(g0.dtype) * h[live, None], tb[live, None])
            pos = g0[live, None, :] + t[..., None] * gd[live, None, :]
            c = pos.floor().long().clamp(0, d - 1)
            hit = tt.dilated[_flat_cell(c, d)] & valid
            any_hit = hit.any(1)
            first = torch.argmax(hit.to(torch.uint8), 1)
            t_hit = t.gather(1, first[:, None])[:, 0]
            hl = live[any_hit]
            if reverse:
                t_last[hl] = t_hit[any_hit]
            else:
                t_first[hl] = t_hit[any_hit]
            keep = ~any_hit & (j0 + round_size < nl)
            live = live[keep]
            j0 += round_size
    return t_first, t_last


def lookup_nearest(tt: TorchTree, g: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor]:
    """Samples g [S, 3] -> occupied [S], sigma [S], voxel index [S] (long; 0 where empty)."""
    df, d = tt.fine_res, tt.coarse_res
    n = d * df
    f = torch.floor(g * df).long()
    inside = ((f >= 0) & (f < n)).all(-1)
    f = torch.where(inside[:, None], f, torch.zeros_like(f))
    c = torch.div(f, df, rounding_mode="floor")
    m = torch.where(inside, tt.index[_flat_cell(c, d)], torch.full_like(inside, -1, dtype=torch.int32)).long()
    occ = m >= 0
    loc = f - c * df
    v = torch.where(occ, m * df**3 + (loc[:, 0] * df + loc[:, 1]) * df + loc[:, 2], torch.zeros_like(m))
    sigma = tt.density[v].to(dtype) * occ
    return occ, sigma, v


def _trilinear(tt: TorchTree, g: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """Samples g [S, 3] (all in occupied cells) -> sigma [S], SH [S, 3K] (normalised over the voxels with density)."""
    df, d = tt.fine_res, tt.coarse_res
    n = d * df
    q = g * df - 0.5
    i0 = torch.floor(q)
    w = q - i0
    i0 = i0.long()
    sigma = torch.zeros(g.shape[0], dtype=dtype, device=g.device)
    sh = torch.zeros(g.shape[0], tt.sh.shape[1], dtype=dtype, device=g.device)
    wsum = torch.zeros_like(sigma)
    for corner in CORNERS:  # wsum: weights of the corners that have colour
        f = i0 + torch.tensor(corner, device=g.device)
        ok = ((f >= 0) & (f < n)).all(-1)
        f = torch.where(ok[:, None], f, torch.zeros_like(f))
        c = torch.div(f, df, rounding_mode="floor")
        m = tt.index[_flat_cell(c, d)].long()
        ok = ok & (m >= 0)
        loc = f - c * df
        v = torch.where(ok, m * df**3 + (loc[:, 0] * df + loc[:, 1]) * df + loc[:, 2], torch.zeros_like(m))
        wc = torch.ones_like(sigma)
        for axis in range(3):
            wc = wc * (w[:, axis] if corner[axis] else 1.0 - w[:, axis])
        wc = wc * ok
        sigma = sigma + wc * tt.density[v].to(dtype)
        row = torch.where(ok, tt.sh_row[v].long(), torch.full_like(m, -1))
        wc = wc * (row >= 0)
        sh = sh + wc[:, None] * tt.sh[row.clamp(min=0)].to(dtype)
        wsum = wsum + wc
    return sigma, sh / torch.where(wsum > 0, wsum, torch.ones_like(wsum))[:, None]


@torch.no_grad()
def march_torch(
    tree: NerfTree | TorchTree,
    origins: Tensor,
    dirs: Tensor,
    viewdirs: Tensor,
    near: Tensor,
    far: Tensor,
    background: Tensor,
    step: float,
    lookup: str = "nearest",
    t_min: float = T_MIN,
    samples_per_round: int = 64,
    dtype: torch.dtype = torch.float32,
    block_weight: Tensor | None = None,
) -> dict[str, Tensor]:
    """March R rays through the tree on the tensors' device (contract of
    :func:`turbonerf.bake.march_numpy.march_numpy`).

    Args:
        tree: a NerfTree or a :class:`TorchTree` from :func:`prepare_torch` (on the rays' device).
        origins, dirs, viewdirs: [R, 3]; near, far: [R]; background: [3].
        samples_per_round: lattice samples per ray and round.
        dtype: compute precision (float64 matches the CPU backends bit for bit in practice;
            float32 differs only for samples within rounding distance of a voxel face).
        block_weight: optional float [M] on the rays' device, updated in place: each block's
            entry becomes the largest compositing weight any sample in it received (what
            :func:`turbonerf.bake.prune.block_max_weights` collects over training rays).
    Returns:
        rgb [R, 3], depth [R], opacity [R] float32, samples [R] int32, on the rays' device.
    """
    if lookup not in ("nearest", "trilinear"):
        raise ValueError(f"lookup must be 'nearest' or 'trilinear', got {lookup!r}")
    dev = origins.device
    tt = tree if isinstance(tree, TorchTree) else prepare_torch(tree, dev)
    r = origins.shape[0]
    k = tt.sh_degree**2
    lo, scale = tt.lo.to(dtype), tt.scale.to(dtype)
    g0 = (origins.to(dtype) - lo) * scale
    gd = dirs.to(dtype) * scale
    near = torch.broadcast_to(torch.as_tensor(near, dtype=dtype, device=dev), (r,))
    far = torch.broadcast_to(torch.as_tensor(far, dtype=dtype, device=dev), (r,))
    v = viewdirs.to(dtype)
    basis = sh_basis(v / v.norm(dim=-1, keepdim=True).clamp(min=1e-12), tt.sh_degree)  # [R, K]

    rgb = torch.zeros(r, 3, dtype=dtype, device=dev)
    depth = torch.zeros(r, dtype=dtype, device=dev)
    opac = torch.zeros(r, dtype=dtype, device=dev)
    samples = torch.zeros(r, dtype=torch.int32, device=dev)
    trans_all = torch.ones(r, dtype=dtype, device=dev)

    ta, tb = ray_box_clip(g0, gd, float(tt.coarse_res), near, far)
    t_first, t_last = coarse_hit_range(tt, g0, gd, ta, tb)
    cell_t = 1.0 / gd.norm(dim=-1).clamp(min=1e-30)
    t_start, t_end = t_first - cell_t, t_last + cell_t
    hit = torch.isfinite(t_first)
    k_start = torch.floor((t_start - near) / step - 0.5).clamp(min=0)
    k_end = torch.minimum(torch.ceil((t_end - near) / step - 0.5), torch.ceil((far - near) / step))
    live = torch.nonzero(hit & (k_start <= k_end)).squeeze(1)
    k_start = torch.where(hit, k_start, torch.zeros_like(k_start)).long()
    k_end = torch.where(hit, k_end, torch.zeros_like(k_end)).long()
    j = torch.arange(samples_per_round, device=dev)
    kcur = k_start.clone()
    while live.numel():
        kk = kcur[live, None] + j[None, :]  # [L, S]
        t = near[live, None] + (kk.to(dtype) + 0.5) * step
        valid = (kk <= k_end[live, None]) & (t < far[live, None])
        pos = g0[live, None, :] + t[..., None] * gd[live, None, :]
        flat_pos = pos.reshape(-1, 3)
        occ, sigma, vox = lookup_nearest(tt, flat_pos, dtype)
        occ = occ.reshape(t.shape) & valid
        sel = torch.nonzero(occ.reshape(-1)).squeeze(1)
        sig = torch.zeros(t.numel(), dtype=dtype, device=dev)
        if lookup == "nearest":
            sig[sel] = sigma[sel]
        else:
            sig_s, sh_s = _trilinear(tt, flat_pos[sel], dtype)
            sig[sel] = sig_s
        sig = sig.reshape(t.shape)
        alpha = 1.0 - torch.exp(-sig * step)
        keep = 1.0 - alpha
        excl = torch.cumprod(torch.cat([torch.ones_like(keep[:, :1]), keep[:, :-1]], 1), 1)
        t_before = trans_all[live, None] * excl
        included = occ & (t_before >= t_min)
        w = torch.where(included, t_before * alpha, torch.zeros_like(alpha))
        # colour where it matters
        csel = torch.nonzero((included & (alpha > 0)).reshape(-1)).squeeze(1)
        if csel.numel():
            if lookup == "nearest":
                coeff = tt.sh[tt.sh_row[vox[csel]].long()].to(dtype)
            else:
                pos_in_sel = torch.searchsorted(sel, csel)
                coeff = sh_s[pos_in_sel]
            ray_of = torch.div(csel, samples_per_round, rounding_mode="floor")
            x = (coeff.reshape(-1, 3, k) * basis[live[ray_of], None, :]).sum(-1)
            col = torch.sigmoid(x)
            wc = w.reshape(-1)[csel]
            rgb.index_add_(0, live[ray_of], wc[:, None] * col)
        if block_weight is not None:
            bsel = torch.nonzero(included.reshape(-1)).squeeze(1)
            blocks = torch.div(vox[bsel], tt.fine_res**3, rounding_mode="floor")
            block_weight.scatter_reduce_(0, blocks, w.reshape(-1)[bsel].to(block_weight.dtype), "amax")
        depth[live] += (w * t).sum(1)
        opac[live] += w.sum(1)
        samples[live] += included.sum(1).to(torch.int32)
        trans_all[live] = trans_all[live] * torch.where(included, keep, torch.ones_like(keep)).prod(1)
        kcur[live] += samples_per_round
        alive = (trans_all[live] >= t_min) & (kcur[live] <= k_end[live])
        live = live[alive]
    rgb = rgb + (1.0 - opac)[:, None] * background.to(dev, dtype)[None]
    return {"rgb": rgb.float(), "depth": depth.float(), "opacity": opac.float(), "samples": samples}
