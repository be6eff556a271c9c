"""Model size and compute per rendered ray, counted from the model's Linear layers.

Definition (the one R2L and the NeRF papers use for MLP methods):

    FLOPs per ray = sum over the network evaluations one rendered ray costs of
                    sum over the Linear layers of that network of 2 * in_features * out_features

A multiply-add counts as 2 FLOPs. Biases, activations, positional encodings, spherical-harmonics
evaluation, hash-grid lookups, sampling and compositing are **not** counted: for MLP methods
they are a few percent of the matmuls; for hash-grid methods (Instant-NGP) the lookups dominate
and this number understates the real cost. Evaluations per ray:

- a model with its own ``flops_per_ray()`` method: that method's answer;
- a light field (``samples_per_ray() == 1``, e.g. R2L): every Linear layer once;
- coarse + fine NeRFs with ``config.n_coarse`` / ``config.n_fine`` (vanilla NeRF): the coarse
  network on ``n_coarse`` samples, the fine network on ``n_coarse + n_fine`` (64 + 192 with the
  paper's settings);
- other models with ``coarse`` and ``fine`` networks (EfficientNeRF): the fine network on every
  evaluation counted by ``samples_per_ray()`` (an upper bound: its coarse network is lighter);
- anything else: every Linear layer of the model on each of ``samples_per_ray()`` evaluations.
"""

from __future__ import annotations

from torch import nn


def linear_flops(module: nn.Module) -> int:
    """FLOPs of one evaluation of every ``nn.Linear`` inside ``module``: sum of 2 * in * out."""
    return sum(2 * m.in_features * m.out_features for m in module.modules() if isinstance(m, nn.Linear))


def params(model: nn.Module) -> int:
    """Number of trainable and frozen parameters (buffers such as occupancy grids not included)."""
    return sum(p.numel() for p in model.parameters())


def flops_per_ray(model: nn.Module) -> float:
    """FLOPs one rendered ray costs (see the module docstring for what is counted)."""
    own = getattr(model, "flops_per_ray", None)
    if callable(own):
        return float(own())
    spr = float(model.samples_per_ray())
    coarse, fine = getattr(model, "coarse", None), getattr(model, "fine", None)
    if isinstance(coarse, nn.Module) and isinstance(fine, nn.Module):
        cfg = getattr(model, "config", None)
        n_coarse, n_fine = getattr(cfg, "n_coarse", None), getattr(cfg, "n_fine", None)
        if n_coarse is not None and n_fine is not None:
            return float(linear_flops(coarse) * n_coarse + linear_flops(fine) * (n_coarse + n_fine))
        return float(linear_flops(fine)) * spr
    return float(linear_flops(model)) * spr
