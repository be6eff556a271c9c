"""The sampler / estimator contract: where along each ray a method evaluates its field.

Every sampler that places samples from something it learns or estimates (the occupancy grid of
Instant-NGP, EfficientNeRF's momentum density grid, activation-based sampling, the proposal
networks still to come) fits one shape:

- ``sample(rays, density_fn, train) -> PackedSamples``: the samples of R rays. ``density_fn``
  (points [N, 3] -> [N]) is what the sampler may query (a field's density, an MLP trunk's
  activations); samplers that already hold what they need ignore it. ``train`` jitters.
- ``update(step, density_fn)``: called by the training loop before step ``step``; grids that
  probe the field refresh themselves here (Instant-NGP every 16 steps), proposal networks
  anneal.
- ``observe(points, density)``: what the forward pass of a step found (points [N, 3] and raw
  densities [N]); grids that learn from the method's own samples (EfficientNeRF's
  V <- (1 - beta) V + beta sigma) update here, after the optimizer step.

A sampler never imports a field: it receives callables. :class:`SamplerUpdate` adapts a sampler
to the training loop's callback hooks.
"""

from __future__ import annotations

from typing import Callable, Protocol

from torch import Tensor

from turbonerf.rays import PackedSamples, RayBundle

DensityFn = Callable[[Tensor], Tensor]
"""points [N, 3] -> density (or an estimate of it) [N]"""

OBSERVED_POINTS = "observed_points"
OBSERVED_DENSITY = "observed_density"
"""keys of a forward pass's outputs holding what a sampler should ``observe``"""


class Sampler(Protocol):
    def sample(self, rays: RayBundle, density_fn: DensityFn | None, train: bool = False) -> PackedSamples: ...

    def update(self, step: int, density_fn: DensityFn) -> None: ...

    def observe(self, points: Tensor, density: Tensor) -> None: ...


class SamplerUpdate:
    """Training-loop callback that keeps a sampler learning: ``update(step, density_fn)`` before
    each step, ``observe(...)`` with the step's observed points and densities after it (when the
    forward outputs carry them)."""

    def __init__(self, sampler: Sampler, density_fn: DensityFn):
        self.sampler = sampler
        self.density_fn = density_fn

    def before_step(self, step: int) -> None:
        self.sampler.update(step, self.density_fn)

    def after_step(self, step: int, output) -> None:
        outputs = output.outputs
        if OBSERVED_POINTS in outputs:
            self.sampler.observe(outputs[OBSERVED_POINTS], outputs[OBSERVED_DENSITY])
