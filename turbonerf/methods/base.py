"""The contract every method fulfils, so that training, evaluation, rendering, baking,
activation sampling and distillation treat them alike.

A method is an ``nn.Module`` subclass of :class:`Method`:

- ``forward(rays, background, train) -> outputs``: the rendered outputs, ``rgb`` [R, 3],
  ``depth`` [R], ``opacity`` [R], plus whatever the method's samplers produced (e.g. the coarse
  pass's ``coarse_rgb``, the points and raw densities a density grid learns from) and a
  ``stats`` dict of floats for the log. ``train=True`` jitters samples and keeps the graph.
- ``loss(outputs, target) -> (loss, stats)``: the training objective over those outputs.
- ``render(rays, background)``: inference (no graph), the three image outputs only; it is
  ``forward(train=False)`` unless a method renders differently at inference.
- ``make_optimizer() -> (optimizer, step -> learning-rate factor)``.
- ``prepare_from_views(cameras, alphas)``: before the first step of a fresh run, what the training
  views prove (e.g. empty space outside every frustum or behind transparent pixels,
  :mod:`turbonerf.samplers.carving`); called for world-space scenes only.
- ``callbacks()``: hooks of the training loop (:mod:`turbonerf.engine.loop`), e.g. the
  occupancy-grid refresh; grid updates happen there, never inside ``loss``.
- ``samples_per_ray()`` / ``flops_per_ray()``: the cost of one rendered ray (eval reports them).
- ``multi_scene``: a method trained across scenes (pixelNeRF) also has ``encode(images, cameras)
  -> SourceViews``, ``render_scenes(rays, sources, background, train) -> outputs`` (batches of
  scenes) and ``condition(images, cameras)`` (the one scene ``forward`` renders).
- ``image_space``: a student that maps a camera to a whole image (:mod:`turbonerf.methods.image_student`)
  has ``render_views(cameras, train) -> [N, H, W, 3]`` and ``image_loss(cameras, images)`` instead
  of a per-ray ``forward``.
- ``baking_field()`` / ``occupancy_fn()`` / ``baking_inner_box()``: what ``turbonerf bake``
  caches (a field taking points), the method's own test of empty space in that field's space,
  when it has one, and, for a field of contracted space, the world box that maps to [-1, 1]^3.

Coarse-to-fine NeRFs additionally fulfil :class:`CoarseToFine`, which activation-based sampling
(:mod:`turbonerf.samplers.activation`) needs.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Callable, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from turbonerf.cameras import Cameras
from turbonerf.data.scene import Scene
from turbonerf.errors import TurboNerfError
from turbonerf.rays import RayBundle

IMAGE_OUTPUTS = ("rgb", "depth", "opacity")

LrFactor = Callable[[int], float]


def linear_flops(module: nn.Module) -> int:
    """FLOPs of one evaluation of every ``nn.Linear`` inside ``module``: sum of 2 * in * out
    (a multiply-add counts as 2; biases and activations are not counted)."""
    return sum(2 * m.in_features * m.out_features for m in module.modules() if isinstance(m, nn.Linear))


def adam(params, lr: float, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> torch.optim.Optimizer:
    """Adam, fused when this device / torch build has the kernel (about 3x faster steps on the
    development CPU for large models), the plain implementation otherwise. ``params`` may be
    parameters or param-group dicts."""
    try:
        return torch.optim.Adam(params, lr=lr, betas=betas, eps=eps, fused=True)
    except (RuntimeError, TypeError):  # no fused kernel for this device / torch version
        return torch.optim.Adam(params, lr=lr, betas=betas, eps=eps)


class Method(nn.Module, ABC):
    """Base class of every method (see the module docstring for the contract). The abstract
    methods must be implemented: a method missing one cannot be constructed."""

    multi_scene: bool = False
    """trained across many scenes and conditioned on source views at render time (pixelNeRF):
    ``turbonerf train`` builds its batches from a multi-scene set, and whatever renders it first
    calls its ``condition(images [S, H, W, 3], cameras)``"""

    image_space: bool = False
    """renders whole images from cameras, not rays (the image-space students,
    :mod:`turbonerf.methods.image_student`): ``render_views(cameras) -> [N, H, W, 3]`` and
    ``image_loss(cameras, images)``; ``forward`` on rays is refused"""

    @abstractmethod
    def forward(self, rays: RayBundle, background: Tensor, train: bool = False) -> dict:
        """rays: R rays; background: [3] (or [R, 3]). Returns rgb [R, 3], depth [R], opacity [R], ..."""
        ...

    @abstractmethod
    def loss(self, outputs: dict, target: Tensor) -> tuple[Tensor, dict[str, float]]:
        """target: [R, 3] in [0, 1]. Returns (scalar loss, stats including ``mse`` of the final rgb)."""
        ...

    @abstractmethod
    def make_optimizer(self) -> tuple[torch.optim.Optimizer, LrFactor]:
        ...

    @abstractmethod
    def samples_per_ray(self) -> float:
        """Network evaluations per rendered ray."""
        ...

    @abstractmethod
    def flops_per_ray(self) -> float:
        """FLOPs of the Linear layers one rendered ray costs (see :mod:`turbonerf.eval.flops`)."""
        ...

    @torch.no_grad()
    def render(self, rays: RayBundle, background: Tensor) -> dict[str, Tensor]:
        """Inference: rgb [R, 3], depth [R], opacity [R]."""
        out = self(rays, background, train=False)
        return {k: out[k] for k in IMAGE_OUTPUTS}

    @classmethod
    def config_for_scene(cls, config, scene: Scene):
        """The config with its scene-dependent settings resolved (e.g. "auto" values), when a
        run starts training on ``scene``; what it returns is saved in run.json. Default: as is."""
        return config

    def training_loss(self, rays: RayBundle, target: Tensor, background: Tensor) -> tuple[Tensor, dict[str, float]]:
        """One training forward pass and its loss (``forward(train=True)`` then ``loss``)."""
        outputs = self(rays, background, train=True)
        loss, stats = self.loss(outputs, target)
        return loss, {**outputs.get("stats", {}), **stats}

    def prepare_from_views(self, cameras: Cameras, alphas: Tensor | None) -> dict[str, float]:
        """Before the first training step of a fresh run on a world-space scene: take what the V
        training cameras (and their alphas [V, H, W] uint8, if any) prove about the scene.
        Returns figures for the user (e.g. the fraction of grid cells left); default: nothing."""
        return {}

    def precrop_steps(self) -> int:
        """Training steps at the start of a run on a world-space scene whose rays come only from
        the central part of each image (vanilla NeRF's "precrop", which keeps a young model from
        settling on the background of object scenes). Default: 100."""
        return 100

    def callbacks(self) -> list:
        """Training-loop hooks (objects with ``before_step(step)`` / ``after_step(step, output)``)."""
        return []

    def baking_field(self) -> nn.Module:
        """The field a NerfTree caches: ``density(x)`` and ``forward(x, d) -> (sigma, rgb)``."""
        raise TurboNerfError(f"{type(self).__name__} has no field to bake")

    def occupancy_fn(self) -> Callable[[Tensor], Tensor] | None:
        """points [N, 3] (where ``baking_field()`` takes them) -> bool [N]: the method's own test
        of possibly occupied space, if any."""
        return None

    def baking_inner_box(self) -> Tensor | None:
        """None when ``baking_field()`` takes sample-space points; for a field of contracted space
        (unbounded scenes: it takes points of [-2, 2]^3), the world box [2, 3] that maps to
        [-1, 1]^3 before the contraction (:mod:`turbonerf.fields.contraction`)."""
        return None


@runtime_checkable
class CoarseToFine(Protocol):
    """A NeRF whose later samples come from the weights of a first pass (vanilla NeRF and
    Mip-NeRF: a coarse MLP and inverse-CDF sampling; nerfacto: its first proposal network, whose
    weights place the second's samples, whose weights place the field's): what activation-based
    sampling replaces. Stages, all without jitter at inference:

    - ``initial_edges(rays, n=None) -> [R, n + 1]``: the first pass's bins (n: ``n_coarse``;
      vanilla / Mip-NeRF uniform in t, nerfacto uniform in its s coordinate);
    - ``coarse_stage(rays, background, train) -> (edges [R, n_coarse + 1], weights [R, n_coarse], outputs)``;
    - ``fine_edges(rays, edges, weights, train, padding=None) -> fine_edges [R, S + 1]``: the
      method's own way from the first pass's bins and their weights to the last level's bins
      (vanilla: the union of the bins and n_fine inverse-CDF samples; Mip-NeRF: blur-pool, then
      n_fine + 1 new edges; nerfacto: the draw for the second proposal network, that network,
      its draw). ``padding``: the uniform weight floor of the first draw (None: the method's own);
    - ``fine_stage(rays, background, fine_edges, train) -> outputs`` on those bins;
    - ``trunk_depth(net) -> int``: trunk (hidden ReLU) layers of the ``"coarse"`` network (the
      one the first pass uses) or the ``"fine"`` one;
    - ``trunk_activations(rays, edges, layer, net) -> [R * S, W]``: ReLU activations of trunk
      layer ``layer`` of ``net`` for the S bins ``edges`` [R, S + 1] (vanilla and nerfacto: at
      the bin midpoints; Mip-NeRF: the IPE of the bins' frustums);
    - ``bin_density(rays, edges, net) -> [R, S]``: that network's density for the same bins.
    """

    n_coarse: int
    n_fine: int

    def initial_edges(self, rays: RayBundle, n: int | None = None) -> Tensor: ...

    def coarse_stage(self, rays: RayBundle, background: Tensor, train: bool): ...

    def fine_edges(self, rays: RayBundle, edges: Tensor, weights: Tensor, train: bool, padding: float | None = None) -> Tensor: ...

    def fine_stage(self, rays: RayBundle, background: Tensor, fine_edges: Tensor, train: bool) -> dict: ...

    def trunk_depth(self, net: str) -> int: ...

    def trunk_activations(self, rays: RayBundle, edges: Tensor, layer: int, net: str) -> Tensor: ...

    def bin_density(self, rays: RayBundle, edges: Tensor, net: str) -> Tensor: ...
