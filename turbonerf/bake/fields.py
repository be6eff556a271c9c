"""What a trained method hands to the baker: ``baking_fields(model, sh_degree) -> BakingFields``.

The method says what to bake (``Method.baking_field()``) and where space may be occupied
(``Method.occupancy_fn()``); the colour model depends on the field's class:

==========================  ===========================================================  ===================
baking_field()              colour in the tree                                           example
==========================  ===========================================================  ===================
``SHField``                 the network's own SH coefficients (truncated or zero-padded   efficient-nerf
                            to ``sh_degree``); density = softplus(raw)
``NeRFMLP``                 SH projection of the colour logits (the trunk runs once per   vanilla-nerf
                            point, the view branch once per direction)
``HashField``               SH projection of the colour logits (the encoding runs once    instant-ngp
                            per point)
``NerfactoField``           the same, with the mean appearance embedding                  nerfacto
any other field             SH projection of logit(rgb) from ``density`` + ``forward``     any other field
                            (generic, slowest)
==========================  ===========================================================  ===================

SH projection: the colour logit (pre-sigmoid value) of each voxel is evaluated at
``n_dirs`` fixed directions and the K = sh_degree^2 coefficients are the least-squares fit,
c = pinv(Y) @ logits with Y the [n_dirs, K] basis matrix. Cost: one trunk pass plus ``n_dirs`` passes of the view-dependent head per voxel; for
the NeRF MLP the head's first layer is split (feature part once per point, direction part once
per direction), so 32 directions add about 10% to the trunk's cost; Instant-NGP's colour MLP is
split the same way, and its later layers dominate a bake (16 directions, the default, baked a lego
Instant-NGP at D_c = 192 in 81 s against 246 s with 32, for -0.01 dB; BENCHMARKS.md). The generic
path costs ``n_dirs`` full network evaluations per voxel. Colour is computed only for the voxels
the tree keeps (``select``).

Which directions (:func:`viewing_directions`): where the training views see the scene from a
cone narrower than a hemisphere (forward-facing captures such as LLFF), a Fibonacci lattice on
that cone; otherwise (360-degree captures) on the whole sphere. A network has never been trained
on the directions behind a forward-facing capture and returns arbitrary colours there; a fit over
the whole sphere spends its few coefficients on them and greys the colours that are seen (fern:
the leaves lost their green).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from turbonerf.bake.nerftree import BakingFields, SelectFn
from turbonerf.cameras import Cameras, camera_rays
from turbonerf.encodings.sh import sh_basis
from turbonerf.errors import TurboNerfError
from turbonerf.fields.hash_field import HashField
from turbonerf.fields.nerfacto_field import NerfactoField
from turbonerf.fields.nerf_mlp import NeRFMLP
from turbonerf.fields.sh_field import SHField, activate_density
from turbonerf.methods.base import Method

LOGIT_EPS = 1e-3
"""rgb is clamped to [eps, 1 - eps] before the logit in the generic projection"""


def _fibonacci_cap(n: int, cos_min: float) -> Tensor:
    """[n, 3] float64 Fibonacci lattice on the cap z >= cos_min of the unit sphere (cos_min = -1:
    the whole sphere)."""
    i = torch.arange(n, dtype=torch.float64) + 0.5
    z = 1.0 - (1.0 - cos_min) * i / n
    r = torch.sqrt((1.0 - z * z).clamp(min=0.0))
    phi = math.pi * (3.0 - math.sqrt(5.0)) * i
    return torch.stack([r * torch.cos(phi), r * torch.sin(phi), z], -1)


def fibonacci_directions(n: int) -> Tensor:
    """[n, 3] unit vectors spread evenly over the sphere (Fibonacci lattice), float64."""
    return _fibonacci_cap(n, -1.0)


def cap_directions(n: int, axis: Tensor, half_angle: float) -> Tensor:
    """[n, 3] unit vectors spread evenly (Fibonacci lattice) over the spherical cap of
    ``half_angle`` radians around unit ``axis`` [3], float64."""
    local = _fibonacci_cap(n, math.cos(half_angle))
    a = axis.double() / axis.double().norm()
    helper = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64) if abs(float(a[0])) < 0.9 else torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64)
    e1 = torch.linalg.cross(helper, a)
    e1 = e1 / e1.norm()
    e2 = torch.linalg.cross(a, e1)
    return local[:, :1] * e1 + local[:, 1:2] * e2 + local[:, 2:] * a


def viewing_directions(cameras: Cameras, n: int, margin: float = math.radians(10.0), grid: int = 5) -> tuple[Tensor, float]:
    """The directions to fit colours at: (float64 [n, 3], cap half-angle in radians, pi for the
    whole sphere).

    The ray directions of every camera at a ``grid`` x ``grid`` lattice of pixels (corners
    included) give the mean viewing axis and the widest angle from it; widened by ``margin``,
    a cap narrower than a hemisphere gets :func:`cap_directions`, anything wider the sphere."""
    k = len(cameras)
    us = torch.linspace(0, cameras.width - 1, grid)
    vs = torch.linspace(0, cameras.height - 1, grid)
    u, v = torch.meshgrid(us, vs, indexing="xy")
    idx = torch.arange(k).repeat_interleave(grid * grid)
    _, d = camera_rays(cameras, idx, u.reshape(-1).repeat(k), v.reshape(-1).repeat(k))
    d = d.double().cpu()
    axis = d.mean(0)
    if float(axis.norm()) < 1e-6:
        return fibonacci_directions(n), math.pi
    axis = axis / axis.norm()
    half = math.acos(float((d @ axis).clamp(-1.0, 1.0).min())) + margin
    if half >= math.pi / 2:
        return fibonacci_directions(n), math.pi
    return cap_directions(n, axis, half), half


def sh_projection_matrix(dirs: Tensor, sh_degree: int) -> Tensor:
    """[K, D] least-squares projection: coefficients = P @ values-at-dirs. dirs: [D, 3]."""
    basis = sh_basis(dirs.double(), sh_degree)  # [D, K]
    return torch.linalg.pinv(basis)


def project_logits(logits: Tensor, proj: Tensor) -> Tensor:
    """Colour logits at D directions [N, D, 3] -> SH coefficients [N, 3, K] (proj: [K, D])."""
    return torch.einsum("kd,ndc->nck", proj.to(logits.device, torch.float32), logits.float())


def resize_sh(coeffs: Tensor, k_out: int) -> Tensor:
    """[N, 3, K_in] -> [N, 3, k_out]: drop the highest bands (the L2 projection, since the basis
    is orthonormal) or pad them with zeros."""
    k_in = coeffs.shape[-1]
    if k_out <= k_in:
        return coeffs[..., :k_out]
    return F.pad(coeffs, (0, k_out - k_in))


def nerf_mlp_color_logits(mlp: nn.Module, h: Tensor, dirs: Tensor) -> Tensor:
    """Colour logits of a NeRFMLP for every point at every direction.

    The view branch's first layer is split: its feature half runs once per point, its direction
    half once per direction. Args: h [N, width] trunk features, dirs [D, 3] unit directions.
    Returns: [N, D, 3] (rgb = sigmoid of it).
    """
    width = mlp.feature.out_features
    feat = mlp.feature(h)
    w, b = mlp.color_hidden.weight, mlp.color_hidden.bias
    a = F.linear(feat, w[:, :width], b)  # [N, C]
    bd = F.linear(mlp.dir_enc(dirs), w[:, width:])  # [D, C]
    hid = F.relu(a[:, None, :] + bd[None, :, :].to(a.dtype))
    return mlp.color_head(hid)


def hash_field_color_logits(field: nn.Module, h: Tensor, dirs: Tensor, code: Tensor | None = None) -> Tensor:
    """Colour logits of a HashField (or a NerfactoField): h [N, geo_features] from ``geometry``,
    dirs [D, 3], and for nerfacto the appearance ``code`` [appearance_dim] that follows the
    direction encoding in the colour MLP's input -> [N, D, 3].

    The colour MLP's first layer is split as in :func:`nerf_mlp_color_logits`: its feature part
    (and the code's) runs once per point, its direction part once per direction, and only the
    later layers run per (point, direction) pair (a third fewer multiply-adds than the
    concatenated input).
    """
    first, rest = field.color_mlp[0], field.color_mlp[1:]
    g, ks = h.shape[1], field.sh_degree**2
    enc = sh_basis(dirs.float(), field.sh_degree).to(h.dtype)  # [D, Ks]
    a = F.linear(h, first.weight[:, :g], first.bias)  # [N, C]
    if code is not None:
        a = a + F.linear(code.to(h.dtype), first.weight[:, g + ks :])
    b = F.linear(enc, first.weight[:, g : g + ks]).to(a.dtype)  # [D, C]
    n, d = h.shape[0], enc.shape[0]
    return rest((a[:, None, :] + b[None, :, :]).reshape(n * d, -1)).reshape(n, d, 3)


def _selected(x: Tensor, sigma: Tensor, select: SelectFn | None) -> Tensor:
    """The rows of ``x`` [N, ...] whose density ``sigma`` [N] ``select`` picks (all for None)."""
    return x if select is None else x[select(sigma)]


def _nerf_mlp_fields(mlp: nn.Module, sh_degree: int, dirs: Tensor) -> BakingFields:
    """NeRFMLP (turbonerf.fields.nerf_mlp): ReLU density, sigmoid colour through a view branch."""
    n_dirs = dirs.shape[0]
    proj = sh_projection_matrix(dirs, sh_degree)

    def voxel_fn(x: Tensor, select: SelectFn | None = None) -> tuple[Tensor, Tensor]:
        h = mlp.trunk_features(x)
        sigma = F.relu(mlp.sigma_head(h)[:, 0]).float()
        h = _selected(h, sigma, select)
        logits = nerf_mlp_color_logits(mlp, h, dirs.to(x.device, torch.float32))
        return sigma, project_logits(logits, proj)

    return BakingFields(mlp.density, voxel_fn, sh_degree, description=f"NeRF MLP, SH projection from {n_dirs} directions")


def _sh_field_fields(field: nn.Module, sh_degree: int) -> BakingFields:
    """EfficientNeRF's SHField: raw density through softplus, native SH colour."""
    k = sh_degree**2

    def density_fn(x: Tensor) -> Tensor:
        return activate_density(field.sigma_head(field.features(x))[:, 0].float(), 0.0)

    def voxel_fn(x: Tensor, select: SelectFn | None = None) -> tuple[Tensor, Tensor]:
        h = field.features(x)
        sigma = activate_density(field.sigma_head(h)[:, 0].float(), 0.0)
        h = _selected(h, sigma, select)
        coeffs = field.sh_head(h).float().reshape(h.shape[0], 3, -1)
        return sigma, resize_sh(coeffs, k)

    native = int(field.sh_degree)
    note = "native SH" + ("" if native == sh_degree else f" ({native} bands resized to {sh_degree})")
    return BakingFields(density_fn, voxel_fn, sh_degree, description=note)


def _hash_field_fields(field: nn.Module, sh_degree: int, dirs: Tensor) -> BakingFields:
    """Instant-NGP's HashField: the encoding and density MLP once per point, the colour MLP per direction."""
    n_dirs = dirs.shape[0]
    proj = sh_projection_matrix(dirs, sh_degree)

    def voxel_fn(x: Tensor, select: SelectFn | None = None) -> tuple[Tensor, Tensor]:
        sigma, h = field.geometry(x)
        logits = hash_field_color_logits(field, _selected(h, sigma, select), dirs.to(x.device, torch.float32))
        return sigma.float(), project_logits(logits, proj)

    return BakingFields(field.density, voxel_fn, sh_degree, description=f"hash field, SH projection from {n_dirs} directions")


def _nerfacto_fields(field: NerfactoField, sh_degree: int, dirs: Tensor) -> BakingFields:
    """nerfacto's field: as the HashField, with the mean appearance embedding (any other view's)."""
    n_dirs = dirs.shape[0]
    proj = sh_projection_matrix(dirs, sh_degree)

    def voxel_fn(x: Tensor, select: SelectFn | None = None) -> tuple[Tensor, Tensor]:
        sigma, h = field.geometry(x)
        code = field.appearance_codes(None, 1)
        code = None if code is None else code[0]
        logits = hash_field_color_logits(field, _selected(h, sigma, select), dirs.to(x.device, torch.float32), code)
        return sigma.float(), project_logits(logits, proj)

    return BakingFields(field.density, voxel_fn, sh_degree, description=f"nerfacto field (mean appearance), SH projection from {n_dirs} directions")


def _generic_fields(field: nn.Module, sh_degree: int, dirs: Tensor) -> BakingFields:
    """Any field with density(x) and forward(x, d) -> (sigma, rgb): n_dirs full evaluations per voxel."""
    n_dirs = dirs.shape[0]
    proj = sh_projection_matrix(dirs, sh_degree)

    def voxel_fn(x: Tensor, select: SelectFn | None = None) -> tuple[Tensor, Tensor]:
        sigma = field.density(x).float().reshape(-1)
        xs = _selected(x, sigma, select)
        n, d = xs.shape[0], dirs.shape[0]
        dd = dirs.to(x.device, torch.float32)
        _, rgb = field(xs.repeat_interleave(d, 0), dd.repeat(n, 1))
        rgb = rgb.float().reshape(n, d, 3).clamp(LOGIT_EPS, 1.0 - LOGIT_EPS)
        return sigma, project_logits(torch.logit(rgb), proj)

    return BakingFields(field.density, voxel_fn, sh_degree, description=f"generic field, SH projection of logit(rgb) from {n_dirs} directions")


def field_baking_fields(field: nn.Module, sh_degree: int = 3, n_dirs: int = 16, directions: Tensor | None = None) -> BakingFields:
    """Density and SH-colour functions of one field (dispatch on its class, see the module
    docstring; any other field needs ``density(x)`` and ``forward(x, d) -> (sigma, rgb)``).
    ``directions`` [D, 3] (default: ``n_dirs`` over the sphere) are where colours are fitted."""
    dirs = fibonacci_directions(n_dirs) if directions is None else directions.double()
    if isinstance(field, NerfactoField):
        return _nerfacto_fields(field, sh_degree, dirs)
    if isinstance(field, SHField):
        return _sh_field_fields(field, sh_degree)
    if isinstance(field, NeRFMLP):
        return _nerf_mlp_fields(field, sh_degree, dirs)
    if isinstance(field, HashField):
        return _hash_field_fields(field, sh_degree, dirs)
    if not (callable(getattr(field, "density", None)) and callable(field)):
        raise TurboNerfError(f"cannot bake a {type(field).__name__}: it has no density(x) and forward(x, d)")
    return _generic_fields(field, sh_degree, dirs)


def baking_fields(
    model: Method, sh_degree: int = 3, n_dirs: int = 16, use_method_grid: bool = True, directions: Tensor | None = None
) -> BakingFields:
    """Density, SH-colour and (optionally) candidate functions of a trained method.

    Args:
        model: a trained method; its ``baking_field()`` is baked (dispatch on the field's class,
            see the module docstring) and its ``occupancy_fn()`` limits the cells.
        sh_degree: SH bands of the tree.
        n_dirs: directions per voxel for the SH projection (must be >= sh_degree^2).
        use_method_grid: skip cells the method's occupancy / density grid calls empty.
        directions: [n_dirs, 3] unit directions to fit the colour at (default: the sphere; see
            :func:`viewing_directions`).
    """
    if n_dirs < sh_degree**2:
        raise TurboNerfError(f"SH projection needs at least {sh_degree ** 2} directions for {sh_degree} bands, got {n_dirs}")
    out = field_baking_fields(model.baking_field(), sh_degree, n_dirs, directions)
    cand_fn = model.occupancy_fn() if use_method_grid else None
    if cand_fn is not None:
        out = BakingFields(out.density_fn, out.voxel_fn, out.sh_degree, cand_fn, out.description + "; cells limited to the method's grid")
    return out
