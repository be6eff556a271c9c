"""The Instant-NGP field: hash encoding + tiny density MLP + tiny colour MLP on spherical harmonics."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from turbonerf.encodings.hashgrid import HashEncoding
from turbonerf.encodings.sh import sh_basis
from turbonerf.fields.fixed_rows import apply_in_fixed_rows


class _TruncExp(torch.autograd.Function):
    """exp(x) whose gradient uses exp(min(x, 15)), so a large raw density cannot blow up the step.
    The forward value is capped at exp(30) so that it stays finite."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        ctx.save_for_backward(x)
        return torch.exp(x.clamp(max=30.0))

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        (x,) = ctx.saved_tensors
        return grad * torch.exp(x.clamp(max=15.0))


def trunc_exp(x: Tensor) -> Tensor:
    """exp with a truncated gradient (Instant-NGP's density activation). x: any shape."""
    return _TruncExp.apply(x)


def normalize_points(x: Tensor, aabb: Tensor) -> Tensor:
    """Map points [N, 3] in the box ``aabb`` [2, 3] (min, max) to [0, 1]^3 (not clamped)."""
    return (x - aabb[0]) / (aabb[1] - aabb[0])


def _mlp(in_dim: int, hidden: int, n_hidden: int, out_dim: int) -> nn.Sequential:
    """n_hidden ReLU layers of width ``hidden``, then a linear output layer; no biases (as the
    fully fused MLPs of tiny-cuda-nn)."""
    layers: list[nn.Module] = []
    d = in_dim
    for _ in range(n_hidden):
        layers += [nn.Linear(d, hidden, bias=False), nn.ReLU()]
        d = hidden
    layers.append(nn.Linear(d, out_dim, bias=False))
    return nn.Sequential(*layers)


def hidden_activations(mlp: nn.Sequential, h: Tensor, upto: int) -> Tensor:
    """[N, hidden]: the ReLU output of hidden layer ``upto`` (0-based) of an MLP made by
    :func:`_mlp`, for its inputs ``h`` [N, in_dim] (what activation-based sampling reads)."""
    if not 0 <= upto < hidden_layers(mlp):
        raise ValueError(f"hidden layer {upto} does not exist: the MLP has {hidden_layers(mlp)}")
    for layer in mlp[: 2 * (upto + 1)]:
        h = layer(h)
    return h


def hidden_layers(mlp: nn.Sequential) -> int:
    """The number of hidden (ReLU) layers of an MLP made by :func:`_mlp`."""
    return (len(mlp) - 1) // 2


class HashField(nn.Module):
    """Points in an axis-aligned box -> (sigma, rgb), the field of Instant-NGP.

    x -> hash encoding [L*F] -> density MLP (``density_layers`` hidden layers of ``hidden``) ->
    ``geo_features`` outputs, of which the first is the raw density (activation: trunc_exp);
    all of them, with the SH encoding of the view direction, feed the colour MLP
    (``color_layers`` hidden layers) -> sigmoid rgb. On the CPU both MLPs see only a few row
    counts whatever the number of points (:mod:`turbonerf.fields.fixed_rows`: oneDNN keeps
    state per matmul shape, which made memory grow with the training steps).

    Args:
        aabb: [2, 3] the box (min, max) the hash grid covers; points outside get zero density.
        n_levels, features_per_level, log2_table_size, base_resolution, max_resolution: see
            :class:`turbonerf.encodings.hashgrid.HashEncoding`.
        hidden: width of both MLPs (paper: 64).
        density_layers: hidden layers of the density MLP (paper: 1).
        geo_features: outputs of the density MLP (paper: 16).
        color_layers: hidden layers of the colour MLP (paper: 2).
        sh_degree: SH bands of the direction encoding (paper: 4 -> 16 coefficients).
        hash_backend: "auto", "numba" or "torch".
    """

    def __init__(
        self,
        aabb: Tensor,
        n_levels: int = 16,
        features_per_level: int = 2,
        log2_table_size: int = 19,
        base_resolution: int = 16,
        max_resolution: int = 2048,
        hidden: int = 64,
        density_layers: int = 1,
        geo_features: int = 16,
        color_layers: int = 2,
        sh_degree: int = 4,
        hash_backend: str = "auto",
    ):
        super().__init__()
        self.register_buffer("aabb", aabb.detach().clone().float().reshape(2, 3))
        self.encoding = HashEncoding(n_levels, features_per_level, log2_table_size, base_resolution, max_resolution, hash_backend)
        self.sh_degree = sh_degree
        self.density_mlp = _mlp(self.encoding.out_dim, hidden, density_layers, geo_features)
        self.color_mlp = _mlp(geo_features + sh_degree**2, hidden, color_layers, 3)

    def geometry(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """x: [N, 3] -> sigma [N] float32, geo features [N, geo_features] (autocast dtype)."""
        u = normalize_points(x, self.aabb)
        inside = ((u >= 0.0) & (u <= 1.0)).all(dim=-1)
        h = apply_in_fixed_rows(self.density_mlp, self.encoding(u))  # a bounded set of matmul shapes (fixed_rows.py)
        sigma = trunc_exp(h[:, 0].float()) * inside
        return sigma, h

    def density(self, x: Tensor) -> Tensor:
        """x: [N, 3] points -> sigma [N] float32 (>= 0)."""
        return self.geometry(x)[0]

    def forward(self, x: Tensor, d: Tensor) -> tuple[Tensor, Tensor]:
        """x: [N, 3] points, d: [N, 3] unit directions -> sigma [N], rgb [N, 3] (float32)."""
        sigma, h = self.geometry(x)
        sh = sh_basis(d.float(), self.sh_degree).to(h.dtype)
        rgb = torch.sigmoid(apply_in_fixed_rows(self.color_mlp, torch.cat([h, sh], dim=-1)).float())
        return sigma, rgb
