"""Scene contraction for unbounded scenes (Mip-NeRF 360, with nerfstudio's L-inf norm).

Points are first normalised so that the scene box maps to [-1, 1]^3; then
``contract(x) = x`` where ||x||_inf <= 1 and ``(2 - 1 / ||x||_inf) * x / ||x||_inf`` elsewhere,
so all of space lands inside the box [-2, 2]^3 and the scene box itself is untouched.
"""

from __future__ import annotations

import torch
from torch import Tensor


def normalize_to_box(x: Tensor, aabb: Tensor) -> Tensor:
    """Points [N, 3] -> [N, 3] with the box ``aabb`` [2, 3] (min, max) mapped to [-1, 1]^3."""
    return 2.0 * (x - aabb[0]) / (aabb[1] - aabb[0]) - 1.0


def contract_inf(x: Tensor) -> Tensor:
    """L-inf scene contraction of points [N, 3] (already normalised) -> [N, 3] with
    ||out||_inf < 2: the identity inside the unit cube, ``(2 - 1/n) x / n`` outside, n = ||x||_inf."""
    n = x.abs().amax(dim=-1, keepdim=True)
    safe = n.clamp(min=1.0)
    return torch.where(n <= 1.0, x, (2.0 - 1.0 / safe) * x / safe)


def points_to_unit_cube(x: Tensor, aabb: Tensor, contract: bool) -> tuple[Tensor, Tensor]:
    """Where a hash grid looks points up: world points [N, 3] -> (u [N, 3] in [0, 1]^3, inside [N] bool).

    With ``contract`` the normalised points are contracted and [-2, 2]^3 maps to [0, 1]^3 (every
    finite point is inside); without it the box maps to [0, 1]^3 and points outside are flagged."""
    p = normalize_to_box(x, aabb)
    if contract:
        p = contract_inf(p)
        u = (p + 2.0) / 4.0
    else:
        u = (p + 1.0) / 2.0
    inside = ((u >= 0.0) & (u <= 1.0)).all(dim=-1)
    return u, inside


def uncontract_inf(y: Tensor) -> Tensor:
    """The inverse of :func:`contract_inf` for points [N, 3] with ||y||_inf < 2 (points on or
    beyond the outer boundary are clamped just inside it): ``y`` where ||y||_inf <= 1, else
    ``y / (n (2 - n))`` with n = ||y||_inf."""
    n = y.abs().amax(dim=-1, keepdim=True).clamp(max=2.0 - 1e-6)
    safe = n.clamp(min=1.0)
    return torch.where(n <= 1.0, y, y / (safe * (2.0 - safe)))

