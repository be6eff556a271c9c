"""Instant-NGP (Müller et al. 2022): multiresolution hash encoding + tiny MLPs + occupancy grid.

Training marches each ray with a fixed step through the occupied cells of an occupancy grid
(refreshed from the field's density every 16 steps), optionally drops the samples behind
opaque matter with a cheap no-grad density pass (transmittance < 1e-4, as nerfacc does; off by
default, see ``train_early_stop``), and composites with an L2 loss. Inference marches the same way and evaluates samples in rounds,
retiring rays once their transmittance falls below 1e-4.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from turbonerf.fields.contraction import contract_inf, normalize_to_box, uncontract_inf
from turbonerf.fields.hash_field import HashField
from turbonerf.methods.base import Method, adam, linear_flops
from turbonerf.rays import PackedSamples, RayBundle
from turbonerf.render.renderer import render_with_early_stop
from turbonerf.render.volrend import composite, render_transmittance_from_density
from turbonerf.samplers.base import SamplerUpdate
from turbonerf.samplers.carving import carve_cells, carve_grid
from turbonerf.samplers.occupancy import OccupancyGrid, OccupancySampler, opacity_to_density


@dataclass
class InstantNGPConfig:
    """Instant-NGP hyper-parameters (defaults: the paper's synthetic-scene settings)."""

    n_levels: int = 16
    """hash-grid levels L"""
    features_per_level: int = 2
    """features per level F (the fast CPU kernel needs 2)"""
    log2_table_size: int = 19
    """log2 of the entries per hashed level T"""
    base_resolution: int = 16
    """coarsest grid resolution N_min"""
    max_resolution: int = 2048
    """finest grid resolution N_max (2048 for synthetic scenes; scale with the scene's extent)"""
    hash_backend: str = "auto"
    """hash encoding kernel: auto (numba on CPU), numba or torch"""
    hidden: int = 64
    """width of the density and colour MLPs"""
    density_layers: int = 1
    """hidden layers of the density MLP"""
    geo_features: int = 16
    """outputs of the density MLP (the first is the raw density)"""
    color_layers: int = 2
    """hidden layers of the colour MLP"""
    sh_degree: int = 4
    """spherical-harmonics bands of the view-direction encoding (4 -> 16 coefficients)"""
    contraction: str = "auto"
    """unbounded scenes: "on" contracts space beyond the central box of half-size
    ``inner_half_size`` (L-inf, Mip-NeRF 360 / nerfstudio) so the hash field and the occupancy
    grid cover all of space within [-2, 2]^3; "auto" does so when the scene box's half-size
    exceeds ``contract_beyond`` (transforms.json captures with aabb_scale >= 3); "off" never"""
    inner_half_size: float = 1.5
    """half-size of the uncontracted central box (instant-ngp's unit cube spans [-1.5, 1.5]^3 of a
    transforms.json scene)"""
    contract_beyond: float = 4.0
    """"auto" contracts when the scene box's half-size exceeds this"""
    cone_angle: float = 1.0 / 256
    """contracted scenes: marching steps grow as max(step, cone_angle * t) (instant-ngp's cone
    stepping for aabb_scale > 1); bounded scenes march with a fixed step"""
    steps_per_diagonal: int = 1024
    """marching step = box diagonal / this (Instant-NGP: sqrt(3)/1024 for the unit cube); the
    central box's diagonal when contracted"""
    max_samples: int = 1024
    """most marching steps per ray"""
    grid_resolution: int = 128
    """occupancy-grid cells per axis"""
    carve_from_views: bool = True
    """start the occupancy grid from the training views: cells outside every camera frustum or
    seen through a transparent pixel are empty for good (:mod:`turbonerf.samplers.carving`)
    instead of the first refresh marking about half of all cells occupied at random"""
    precrop_steps: int = 0
    """training steps whose rays come from the central half of each image (vanilla NeRF's
    precrop); none by default: the carved grid already keeps the young model off the background,
    and a centre-cropped ray crosses about 3x the samples of an average one"""
    grid_update_every: int = 16
    """refresh the occupancy grid every this many steps"""
    grid_warmup_steps: int = 256
    """until this step every grid cell is re-evaluated at each refresh"""
    grid_decay: float = 0.95
    """decay of the per-cell density moving maximum per refresh"""
    grid_sample_fraction: float = 0.125
    """after warm-up: fraction of cells drawn at random per refresh (plus up to as many occupied
    ones). Instant-NGP draws 1/4; the refresh took 24% of a CPU training step with 1/4, and each
    cell is still re-examined every ~128 steps with 1/8"""
    occupancy_threshold: float = 0.01
    """a cell is occupied when one marching step through it has at least this opacity
    (or its density exceeds the grid's mean density)"""
    train_early_stop: bool = False
    """drop training samples behind transmittance < early_stop_eps using a no-grad density pass
    (nerfacc does); on lego after 300 CPU steps it pruned ~25% of the samples and cost more
    than it saved (0.18 vs 0.16 s/step), so it is off by default"""
    early_stop_eps: float = 1e-4
    """transmittance below which a ray stops (training pre-pass and inference)"""
    max_batch_samples: int = 1 << 18
    """most samples a training step composites: when a batch's rays hold more (early steps, long
    rays through unbounded scenes), only its leading rays that fit are trained on, so memory and
    step time stay bounded (Instant-NGP sizes batches by samples the same way)"""
    render_chunk_rays: int = 16384
    """rays marched at once at inference"""
    render_samples_per_round: int = 131072
    """field evaluations per round of the early-terminating inference renderer"""
    lr: float = 1e-2
    """Adam learning rate"""
    adam_beta1: float = 0.9
    """Adam beta1"""
    adam_beta2: float = 0.99
    """Adam beta2"""
    adam_eps: float = 1e-15
    """Adam epsilon"""
    mlp_weight_decay: float = 1e-6
    """L2 weight decay on the MLP weights (none on the hash table)"""
    lr_warmup_steps: int = 20
    """linear learning-rate warm-up from lr / 100 (nerfacc warms up over 100 of its 20k steps; a
    CPU run of a few hundred steps gained 0.3-0.5 dB at 1.5 minutes from 20, BENCHMARKS.md)"""
    lr_decay_start: int = 10_000
    """step at which the learning rate starts to fall"""
    lr_decay_steps: int = 10_000
    """the rate falls by lr_decay_factor every this many steps after lr_decay_start"""
    lr_decay_factor: float = 0.33
    """multiplicative learning-rate decay per lr_decay_steps"""


class InstantNGP(Method):
    """Hash field + occupancy grid."""

    def __init__(self, config: InstantNGPConfig, aabb: Tensor):
        super().__init__()
        self.config = c = config
        aabb = aabb.detach().float().reshape(2, 3)
        if c.contraction not in ("auto", "on", "off"):
            raise ValueError(f"contraction must be auto, on or off, not {c.contraction!r}")
        half = float((aabb[1] - aabb[0]).max()) / 2
        self.contracted = c.contraction == "on" or (c.contraction == "auto" and half > c.contract_beyond)
        march_box = aabb
        if self.contracted:
            centre = aabb.mean(0)
            # not saved: it follows from the config and the scene box
            self.register_buffer("inner_box", torch.stack([centre - c.inner_half_size, centre + c.inner_half_size]), persistent=False)
            march_box = self.inner_box
            aabb = torch.tensor([[-2.0] * 3, [2.0] * 3])  # the contracted space the field and the grid cover
        self.field = HashField(
            aabb,
            n_levels=c.n_levels,
            features_per_level=c.features_per_level,
            log2_table_size=c.log2_table_size,
            base_resolution=c.base_resolution,
            max_resolution=c.max_resolution,
            hidden=c.hidden,
            density_layers=c.density_layers,
            geo_features=c.geo_features,
            color_layers=c.color_layers,
            sh_degree=c.sh_degree,
            hash_backend=c.hash_backend,
        )
        self.step_size = float((march_box[1] - march_box[0]).norm()) / c.steps_per_diagonal
        self.grid = OccupancyGrid(
            aabb,
            resolution=c.grid_resolution,
            density_threshold=opacity_to_density(c.occupancy_threshold, self.step_size),
            update_every=c.grid_update_every,
            warmup_steps=c.grid_warmup_steps,
            decay=c.grid_decay,
            sample_fraction=c.grid_sample_fraction,
        )
        self.sampler = OccupancySampler(self.grid, self.step_size, c.max_samples, cone_angle=c.cone_angle if self.contracted else 0.0,
                                        warp=self.warp if self.contracted else None)
        # [train samples-per-ray moving average, rendered samples, rendered rays]
        self.register_buffer("sample_stats", torch.zeros(3, dtype=torch.float64))

    def warp(self, points: Tensor) -> Tensor:
        """Sample-space points [N, 3] -> where the field and the grid see them (contracted when
        the scene is unbounded, else unchanged)."""
        if not self.contracted:
            return points
        return contract_inf(normalize_to_box(points, self.inner_box))

    def density_at(self, points: Tensor) -> Tensor:
        """Density [N] at sample-space points [N, 3]."""
        return self.field.density(self.warp(points))

    def field_at(self, points: Tensor, dirs: Tensor) -> tuple[Tensor, Tensor]:
        """(sigma [N], rgb [N, 3]) at sample-space points [N, 3] seen along dirs [N, 3]."""
        return self.field(self.warp(points), dirs)

    def _train_samples(self, rays: RayBundle) -> tuple[PackedSamples, int]:
        """Occupied samples of ``rays`` (jittered), minus those behind opaque matter when
        ``train_early_stop``. Returns (samples, density evaluations spent by the pre-pass)."""
        c = self.config
        samples = self.sampler.sample(rays, self.field.density, train=True)
        spent = 0
        if c.train_early_stop and len(samples) > 0:
            with torch.no_grad():
                sigma = self.density_at(samples.positions(rays))
                trans, _ = render_transmittance_from_density(
                    samples.t_starts, samples.t_ends, sigma, samples.ray_indices, samples.n_rays
                )
            spent = len(samples)
            samples = samples.masked(trans > c.early_stop_eps)
        return samples, spent

    def forward(self, rays: RayBundle, background: Tensor, train: bool = False) -> dict:
        """Training: march (jittered), composite every occupied sample. Inference: chunks of
        ``render_chunk_rays`` rays, each marched and composited with early termination.
        background: [3] (or [R, 3])."""
        if not train:
            return self._render(rays, background)
        c = self.config
        samples, prepass = self._train_samples(rays)
        n_rays = len(rays)
        if len(samples) > c.max_batch_samples:
            n_rays = max(1, int(samples.ray_indices[c.max_batch_samples]))  # rays [0, n_rays) fit entirely
            keep = samples.ray_indices < n_rays
            samples = PackedSamples(samples.ray_indices[keep], samples.t_starts[keep], samples.t_ends[keep], n_rays)
            rays = rays[:n_rays]
            background = background[:n_rays] if background.dim() == 2 else background
        sigma, rgb = self.field_at(samples.positions(rays), samples.viewdirs(rays))
        out = composite(samples.t_starts, samples.t_ends, sigma, rgb, samples.ray_indices, samples.n_rays, background)
        spr = len(samples) / max(len(rays), 1)
        prev = float(self.sample_stats[0])
        self.sample_stats[0] = spr if prev == 0.0 else 0.99 * prev + 0.01 * spr
        out["stats"] = {
            "rays_trained": float(n_rays),
            "samples_per_ray": spr,
            "prepass_samples_per_ray": prepass / max(len(rays), 1),
            "occupied_fraction": self.grid.occupied_fraction(),
        }
        return out

    @torch.no_grad()
    def _render(self, rays: RayBundle, background: Tensor) -> dict:
        c = self.config
        if len(rays) == 0:
            z = rays.origins.new_zeros(0)
            return {"rgb": rays.origins.new_zeros(0, 3), "depth": z, "opacity": z}
        parts = []
        for r0 in range(0, len(rays), c.render_chunk_rays):
            chunk = rays[r0 : r0 + c.render_chunk_rays]
            bg = background[r0 : r0 + c.render_chunk_rays] if background.dim() == 2 else background
            samples = self.sampler.sample(chunk, self.field.density, train=False)
            out, evaluated = render_with_early_stop(
                chunk, samples, self.field_at, bg, c.early_stop_eps, c.render_samples_per_round
            )
            self.sample_stats[1] += evaluated
            self.sample_stats[2] += len(chunk)
            parts.append(out)
        return {k: torch.cat([p[k] for p in parts]) for k in ("rgb", "depth", "opacity")}

    def loss(self, outputs: dict, target: Tensor):
        """target: [R, 3]; a training batch over the sample budget covers only its first rows."""
        mse = torch.mean((outputs["rgb"] - target[: outputs["rgb"].shape[0]]) ** 2)
        return mse, {"mse": float(mse.detach())}

    def prepare_from_views(self, cameras, alphas) -> dict[str, float]:
        if not self.config.carve_from_views:
            return {}
        if not self.contracted:
            return {"grid_cells_left": carve_grid(self.grid, cameras, alphas)}
        # contracted: cells in world space, each with its own size; only the frustum test (no
        # alphas), on blocks of 2^3 cells (8x fewer projections; a block is kept whole)
        g = self.grid
        res = g.resolution // 2 if g.resolution % 2 == 0 else g.resolution
        k = g.resolution // res
        dev = g.density.device
        axis = torch.arange(res, device=dev, dtype=torch.float32)
        ijk = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), -1).reshape(-1, 3)
        size = (g.aabb[1] - g.aabb[0]) / res
        lo, hi = self._unwarp(g.aabb[0] + ijk * size), self._unwarp(g.aabb[0] + (ijk + 1) * size)  # block corners, world space
        blocks = carve_cells(0.5 * (lo + hi), 0.5 * (hi - lo).norm(dim=-1), cameras.to(dev), None).reshape(res, res, res)
        allowed = blocks.repeat_interleave(k, 0).repeat_interleave(k, 1).repeat_interleave(k, 2).reshape(-1)
        g.restrict(allowed)
        return {"grid_cells_left": float(allowed.float().mean())}

    def _unwarp(self, y: Tensor) -> Tensor:
        """Contracted points [N, 3] -> sample space (the inverse of :meth:`warp`)."""
        x = uncontract_inf(y)
        return self.inner_box[0] + (x + 1.0) * 0.5 * (self.inner_box[1] - self.inner_box[0])

    def precrop_steps(self) -> int:
        return self.config.precrop_steps

    def callbacks(self) -> list:
        """The occupancy grid's refresh from the field's density (every ``grid_update_every`` steps)."""
        return [SamplerUpdate(self.sampler, self.field.density)]

    def samples_per_ray(self) -> float:
        """Mean field evaluations per ray: over all rays rendered so far if any, else the moving
        average over training steps (after the early-stop pre-pass, which is not counted)."""
        if float(self.sample_stats[2]) > 0:
            return float(self.sample_stats[1] / self.sample_stats[2])
        return float(self.sample_stats[0])

    def flops_per_ray(self) -> float:
        """The Linear layers of the field's MLPs on every evaluation (hash lookups, which dominate
        on a CPU, are not counted)."""
        return float(linear_flops(self.field)) * self.samples_per_ray()

    def baking_field(self) -> nn.Module:
        """The hash field; when contracted it takes contracted points (see :meth:`baking_inner_box`)."""
        return self.field

    def occupancy_fn(self):
        """The occupancy grid, in the hash field's space (contracted when the scene is)."""
        return self.grid.is_occupied

    def baking_inner_box(self) -> Tensor | None:
        return self.inner_box.detach().clone() if self.contracted else None

    def make_optimizer(self):
        c = self.config
        mlp_params = [p for n, p in self.named_parameters() if not n.startswith("field.encoding.")]
        groups = [
            {"params": [self.field.encoding.table], "weight_decay": 0.0},
            {"params": mlp_params, "weight_decay": c.mlp_weight_decay},
        ]
        opt = adam(groups, c.lr, (c.adam_beta1, c.adam_beta2), c.adam_eps)

        def lr_factor(step: int) -> float:
            warm = min(1.0, 0.01 + 0.99 * step / max(c.lr_warmup_steps, 1))
            decay = c.lr_decay_factor ** (max(0, step - c.lr_decay_start) / c.lr_decay_steps)
            return warm * decay

        return opt, lr_factor
