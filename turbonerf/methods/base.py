"""What every method provides, so the trainer, eval and render commands can treat them alike."""

from __future__ import annotations

from typing import Protocol

import torch
from torch import Tensor

from turbonerf.rays import RayBundle


class Method(Protocol):
    """A trainable radiance-field method (an ``nn.Module``).

    ``training_loss`` runs one training forward pass; ``render`` is deterministic inference
    (called under ``torch.no_grad()``); ``make_optimizer`` returns the optimizer and a function
    step -> learning-rate factor (applied by the trainer).
    """

    def training_loss(
        self, rays: RayBundle, target: Tensor, background: Tensor, step: int
    ) -> tuple[Tensor, dict[str, float]]:
        """rays: R rays; target: [R, 3] in [0, 1]; background: [3]. Returns (loss, stats)."""
        ...

    def render(self, rays: RayBundle, background: Tensor) -> dict[str, Tensor]:
        """Returns rgb [R, 3], depth [R], opacity [R]."""
        ...

    def make_optimizer(self) -> tuple[torch.optim.Optimizer, "callable"]:
        ...
