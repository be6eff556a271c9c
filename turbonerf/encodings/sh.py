"""Real spherical harmonics, the view-direction encoding of Instant-NGP and the colour basis of
EfficientNeRF / PlenOctrees.

``degree`` counts bands, as in tiny-cuda-nn: degree d covers l = 0 .. d-1 and gives d^2
coefficients (degree 4 -> 16, Instant-NGP's direction encoding; degree 3 -> 9, the "SH degree 2"
of PlenOctrees and EfficientNeRF). Constants and sign conventions (Condon-Shortley phase
included) follow PlenOctrees' ``eval_sh``, so coefficients trained there evaluate alike here.
The basis is orthonormal over the unit sphere.
"""

from __future__ import annotations

import torch
from torch import Tensor

MAX_SH_DEGREE = 5
"""the largest supported degree (bands l = 0..4, 25 coefficients)"""

_C0 = 0.28209479177387814
_C1 = 0.4886025119029199
_C2 = (1.0925484305920792, -1.0925484305920792, 0.31539156525252005, -1.0925484305920792, 0.5462742152960396)
_C3 = (
    -0.5900435899266435,
    2.890611442640554,
    -0.4570457994644658,
    0.3731763325901154,
    -0.4570457994644658,
    1.445305721320277,
    -0.5900435899266435,
)
_C4 = (
    2.5033429417967046,
    -1.7701307697799304,
    0.9461746957575601,
    -0.6690465435572892,
    0.10578554691520431,
    -0.6690465435572892,
    0.47308734787878004,
    -1.7701307697799304,
    0.6258357354491761,
)


def sh_basis(dirs: Tensor, degree: int) -> Tensor:
    """Real SH basis functions evaluated at unit directions.

    Args:
        dirs: [..., 3] unit vectors (x, y, z).
        degree: number of bands d, 1..5.
    Returns:
        [..., d^2] in dirs' dtype, ordered l-major then m = -l..l: index l^2 + l + m.
    """
    if not 1 <= degree <= MAX_SH_DEGREE:
        raise ValueError(f"SH degree must be in 1..{MAX_SH_DEGREE}, got {degree}")
    x, y, z = dirs[..., 0], dirs[..., 1], dirs[..., 2]
    out = [torch.full_like(x, _C0)]
    if degree > 1:
        out += [-_C1 * y, _C1 * z, -_C1 * x]
    if degree > 2:
        xx, yy, zz = x * x, y * y, z * z
        xy, yz, xz = x * y, y * z, x * z
        out += [
            _C2[0] * xy,
            _C2[1] * yz,
            _C2[2] * (2.0 * zz - xx - yy),
            _C2[3] * xz,
            _C2[4] * (xx - yy),
        ]
    if degree > 3:
        out += [
            _C3[0] * y * (3.0 * xx - yy),
            _C3[1] * xy * z,
            _C3[2] * y * (4.0 * zz - xx - yy),
            _C3[3] * z * (2.0 * zz - 3.0 * xx - 3.0 * yy),
            _C3[4] * x * (4.0 * zz - xx - yy),
            _C3[5] * z * (xx - yy),
            _C3[6] * x * (xx - 3.0 * yy),
        ]
    if degree > 4:
        out += [
            _C4[0] * xy * (xx - yy),
            _C4[1] * yz * (3.0 * xx - yy),
            _C4[2] * xy * (7.0 * zz - 1.0),
            _C4[3] * yz * (7.0 * zz - 3.0),
            _C4[4] * (zz * (35.0 * zz - 30.0) + 3.0),
            _C4[5] * xz * (7.0 * zz - 3.0),
            _C4[6] * (xx - yy) * (7.0 * zz - 1.0),
            _C4[7] * xz * (xx - 3.0 * yy),
            _C4[8] * (xx * (xx - 3.0 * yy) - yy * (3.0 * xx - yy)),
        ]
    return torch.stack(out, dim=-1)


def eval_sh(coeffs: Tensor, dirs: Tensor) -> Tensor:
    """Evaluate SH expansions: sum_k coeffs[..., c, k] * Y_k(dirs).

    Args:
        coeffs: [..., C, K] with K = d^2 for some degree d (e.g. C = 3 colour channels).
        dirs: [..., 3] unit directions.
    Returns:
        [..., C].
    """
    k = coeffs.shape[-1]
    degree = int(round(k**0.5))
    if degree * degree != k:
        raise ValueError(f"the last dimension of coeffs must be a square, got {k}")
    basis = sh_basis(dirs, degree).to(coeffs.dtype)
    return (coeffs * basis[..., None, :]).sum(-1)
