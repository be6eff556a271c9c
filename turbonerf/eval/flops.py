"""Model size and compute per rendered ray, counted from the model's Linear layers.

Definition (the one R2L and the NeRF papers use for MLP methods):

    FLOPs per ray = sum over the network evaluations one rendered ray costs of
                    sum over the Linear layers of that network of 2 * in_features * out_features

A multiply-add counts as 2 FLOPs. Biases, activations, positional encodings, spherical-harmonics
evaluation, hash-grid lookups, sampling and compositing are **not** counted: for MLP methods
they are a few percent of the matmuls; for hash-grid methods (Instant-NGP) the lookups dominate
and this number understates the real cost. Each method says how many evaluations of which
network a ray costs in its ``flops_per_ray()`` (:class:`turbonerf.methods.base.Method`), e.g.
vanilla NeRF: the coarse network on ``n_coarse`` samples and the fine one on ``n_coarse + n_fine``
(64 + 192 with the paper's settings); a light field (R2L): every Linear layer once.
"""

from __future__ import annotations

from torch import nn

from turbonerf.methods.base import Method, linear_flops

__all__ = ["flops_per_ray", "linear_flops", "params"]


def params(model: nn.Module) -> int:
    """Number of trainable and frozen parameters (buffers such as occupancy grids not included)."""
    return sum(p.numel() for p in model.parameters())


def flops_per_ray(model: Method) -> float:
    """FLOPs one rendered ray costs (see the module docstring for what is counted)."""
    return float(model.flops_per_ray())
