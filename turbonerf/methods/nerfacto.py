"""nerfacto (nerfstudio's default model): proposal-network sampling, a hash-grid field with
per-image appearance embeddings, scene contraction for unbounded scenes.

Per ray: 256 stratified samples (uniform up to distance 1, then linear in disparity) feed the
first proposal network (a small hash-grid density field), whose weights place 96 samples for
the second, whose weights place the 48 samples the NeRF field evaluates (see
:mod:`turbonerf.samplers.proposal`). Loss: colour MSE + ``interlevel_mult`` x the interlevel
loss (each proposal's weights must bound the NeRF's; the NeRF's are detached) +
``distortion_mult`` x the distortion loss of the NeRF's weights, both in the normalised
coordinate s (:mod:`turbonerf.render.losses`).

Scenes (``scene_contraction``, resolved from the scene when training starts, see
:meth:`Nerfacto.config_for_scene`):

- Blender (bounded, white background) -> ``box``: the hash grids cover the scene box and space
  outside it is empty, so the white background is never painted into the volume; each ray's
  [near, far] (2, 6) is clipped to the box, so no sample lands where the density is zero.
  nerfstudio contracts space for Blender too; with everything in a known box, contraction only
  spends grid resolution and samples on empty space.
- LLFF -> ``box`` in NDC: the parser maps rays to NDC (the box [-1, 1]^3 then holds the whole
  frustum, infinity included), which is already the contraction that suits forward-facing
  captures and keeps the comparison with the other methods like for like. In NDC (t in [0, 1],
  near 0) the initial sampler is uniform, which is uniform in disparity.
- transforms.json captures (unbounded, no background colour) -> ``contract``: points are
  normalised so the scene box is [-1, 1]^3 and contracted (L-inf) into [-2, 2]^3; rays run to
  ``contract_far`` (nerfstudio: 1000) rather than to the box's far corner.

Appearance embeddings (``n_images``, resolved with the contraction): one per training image for
captures, whose exposure and white balance change between photos; none for Blender and LLFF
scenes, whose images share one appearance: there an embedding per image only lets each training
view absorb its own noise, and a test view, which has no embedding of its own, gets the mean.
Measured at 5 minutes (one core, 64 / 32 / 24 samples; BENCHMARKS.md): without embeddings
lego 28.73 dB against 27.33 (a pilot earlier that day), fern 21.59 against 20.45 (the same core,
one after the other). nerfstudio keeps them on for every scene.

Inference renders chunks of ``render_chunk_rays`` rays without jitter, annealing or the
embedding of a training image (evaluation views use the mean appearance embedding).

Activation-based sampling (Radl et al. 2024; ``eval --sampler activation``): the ReLU activations
of the first proposal network's hidden layer at its bins, averaged over the 16 units and
transformed along the ray, replace that network's density; its weights go through the same draw,
and the second proposal network and the field run as always (the ``CoarseToFine`` stages below).
Only the upsampled pass (``--upsample``) saves time: the hash encoding, the cost of a proposal
network, is needed for the activations too. It holds its quality only with enough second-level
samples, and not because of the estimate (BENCHMARKS.md, "nerfacto with 128 / 96 / 24 samples"):
with 96 (the defaults, or 128 / 96 / 24) it is 1.3-1.4x faster at -0.1 to -0.4 dB, but uniform
weights in place of any estimate lose as little (``benchmarks/nerfacto_uniform_control.py``; the
estimates' weights overlap the field's less than uniform weights do); with 32 (64 / 32 / 24) it
loses 2.6-4.4 dB.

Proposal updates: as nerfstudio's ``proposal_update_every=5`` / ``proposal_warmup=5000``, the
proposal networks get a gradient on the first 10 steps, then whenever more than k steps have
passed since they last did, k growing from 1 to 5 over 5000 steps; on the other steps their
densities run without a graph. ``--set proposal_update_every=0`` trains them on every step.
Not ported: nerfstudio's camera-pose optimiser and its "last sample" background colour (the
scene's background is used).

CPU cost: the hash-grid kernels dominate (the field's 16 levels on ``n_samples`` points, the
proposals' 5 levels on the proposal samples). The defaults stay nerfstudio's (256 / 96 / 48, 400
evaluations per ray); on a CPU fewer samples pay. Measured at 15 minutes on lego (200x200) and fern
(252x189) against Instant-NGP (BENCHMARKS.md, "nerfacto with 128 / 96 / 24 samples" and
"nerfacto without appearance embeddings"): the defaults are 1.1 dB behind on lego; ``--set
proposal_samples_1=128 --set proposal_samples_2=96 --set n_samples=24`` is 0.35 dB behind on lego,
0.51 dB ahead on fern and keeps activation sampling (above); ``64 / 32 / 24`` is level on lego
and 0.78 dB ahead on fern but loses activation sampling.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import Tensor, nn

from turbonerf.data.scene import Scene
from turbonerf.errors import TurboNerfError
from turbonerf.fields.nerfacto_field import NerfactoField, ProposalDensityField
from turbonerf.methods.base import Method, adam, linear_flops
from turbonerf.rays import RayBundle, packed_from_dense
from turbonerf.render.losses import distortion_loss, interlevel_loss
from turbonerf.render.volrend import composite, render_weight_dense
from turbonerf.samplers.base import SamplerUpdate
from turbonerf.samplers.occupancy import ray_aabb_intersect
from turbonerf.samplers.proposal import ProposalSampler, s_to_t

CONTRACTIONS = ("auto", "box", "contract")


@dataclass
class NerfactoConfig:
    """nerfacto hyper-parameters (defaults: nerfstudio's ``nerfacto`` config)."""

    scene_contraction: str = "auto"
    """auto (box for Blender / white-background and NDC scenes, contract otherwise; resolved when
    training starts), box (grids cover the scene box, empty outside) or contract (L-inf scene contraction)"""
    contract_far: float = 1000.0
    """with contraction, rays are sampled up to max(scene far, this) (nerfstudio: 1000)"""
    n_images: int = -1
    """appearance embeddings (one per training image); -1 (auto, resolved when training starts):
    none for Blender / white-background and NDC (LLFF) scenes, whose photos share one exposure,
    one per training image otherwise (captures); 0: no embeddings"""
    appearance_dim: int = 32
    """size of each appearance embedding"""
    n_levels: int = 16
    """hash-grid levels of the NeRF field"""
    log2_table_size: int = 19
    """log2 of the entries per hashed level of the NeRF field"""
    base_resolution: int = 16
    """coarsest grid resolution of the NeRF field"""
    max_resolution: int = 2048
    """finest grid resolution of the NeRF field"""
    hidden: int = 64
    """width of the density MLP"""
    density_layers: int = 1
    """hidden layers of the density MLP"""
    geo_features: int = 15
    """geometry features passed from the density MLP to the colour MLP"""
    color_hidden: int = 64
    """width of the colour MLP"""
    color_layers: int = 2
    """hidden layers of the colour MLP"""
    sh_degree: int = 4
    """spherical-harmonics bands of the view-direction encoding (4 -> 16 coefficients)"""
    proposal_levels: int = 5
    """hash-grid levels of each proposal network"""
    proposal_log2_table_size: int = 17
    """log2 of the entries per hashed level of each proposal network"""
    proposal_max_resolution_1: int = 128
    """finest grid resolution of the first proposal network"""
    proposal_max_resolution_2: int = 256
    """finest grid resolution of the second proposal network"""
    proposal_hidden: int = 16
    """hidden width of the proposal MLPs (one hidden layer)"""
    proposal_samples_1: int = 256
    """samples per ray of the first proposal network (initial uniform / disparity samples)"""
    proposal_samples_2: int = 96
    """samples per ray of the second proposal network"""
    n_samples: int = 48
    """samples per ray evaluated by the NeRF field"""
    anneal_steps: int = 1000
    """steps over which the proposal weights' exponent rises from 0 to 1"""
    anneal_slope: float = 10.0
    """slope of the annealing curve"""
    proposal_update_every: int = 5
    """after warm-up the proposal networks learn once every this many (+1) steps (0: every step)"""
    proposal_update_warmup: int = 5000
    """steps over which the proposal update interval grows from 1 to proposal_update_every"""
    histogram_padding: float = 0.01
    """added to every bin weight before resampling"""
    interlevel_mult: float = 1.0
    """weight of the interlevel (proposal) loss"""
    distortion_mult: float = 0.002
    """weight of the distortion loss"""
    hash_backend: str = "auto"
    """hash encoding kernel: auto (numba on CPU), numba or torch"""
    render_chunk_rays: int = 4096
    """rays rendered at once at inference"""
    lr: float = 1e-2
    """Adam learning rate (fields and proposal networks)"""
    adam_eps: float = 1e-15
    """Adam epsilon"""
    lr_final: float = 1e-4
    """the learning rate decays exponentially to this at lr_decay_steps"""
    lr_decay_steps: int = 200_000
    """steps of the exponential learning-rate decay (nerfstudio: 200000)"""


class Nerfacto(Method):
    """Proposal networks + hash field with appearance embeddings (see the module docstring)."""

    def __init__(self, config: NerfactoConfig, aabb: Tensor):
        super().__init__()
        self.config = c = config
        if c.scene_contraction not in CONTRACTIONS:
            raise ValueError(f"scene_contraction must be one of {', '.join(CONTRACTIONS)}")
        self.contract = c.scene_contraction == "contract"
        aabb = aabb.detach().float().reshape(2, 3)
        self.field = NerfactoField(
            aabb,
            self.contract,
            n_images=max(c.n_images, 0),
            appearance_dim=c.appearance_dim,
            n_levels=c.n_levels,
            log2_table_size=c.log2_table_size,
            base_resolution=c.base_resolution,
            max_resolution=c.max_resolution,
            hidden=c.hidden,
            density_layers=c.density_layers,
            geo_features=c.geo_features,
            color_hidden=c.color_hidden,
            color_layers=c.color_layers,
            sh_degree=c.sh_degree,
            hash_backend=c.hash_backend,
        )
        self.proposals = nn.ModuleList(
            ProposalDensityField(
                aabb,
                self.contract,
                n_levels=c.proposal_levels,
                log2_table_size=c.proposal_log2_table_size,
                max_resolution=res,
                hidden=c.proposal_hidden,
                hash_backend=c.hash_backend,
            )
            for res in (c.proposal_max_resolution_1, c.proposal_max_resolution_2)
        )
        self.sampler = ProposalSampler(
            [p.density for p in self.proposals],
            n_proposal_samples=(c.proposal_samples_1, c.proposal_samples_2),
            n_samples=c.n_samples,
            anneal_steps=c.anneal_steps,
            anneal_slope=c.anneal_slope,
            update_every=c.proposal_update_every,
            update_warmup=c.proposal_update_warmup,
            histogram_padding=c.histogram_padding,
        )

    @classmethod
    def config_for_scene(cls, config: NerfactoConfig, scene: Scene) -> NerfactoConfig:
        """Resolve ``scene_contraction="auto"`` (box for NDC and white-background scenes such
        as Blender, contract otherwise) and ``n_images=-1`` (no appearance embeddings for those
        same scenes, one per training image for captures)."""
        changes = {}
        curated = scene.ndc or scene.white_background  # Blender / LLFF: bounded (or NDC) and one exposure
        if config.scene_contraction == "auto":
            changes["scene_contraction"] = "box" if curated else "contract"
        if config.n_images < 0:
            changes["n_images"] = len(scene.split("train")) if ("train" in scene.splits and not curated) else 0
        return replace(config, **changes)

    def _ray_interval(self, rays: RayBundle) -> RayBundle:
        """The interval the proposals sample: with contraction [near, max(far, contract_far)];
        in a box, [near, far] clipped to the box (a ray that misses it gets an empty interval at
        far), so that no sample is spent where the density is zero by construction."""
        near, far = rays.near, rays.far
        if self.contract:
            far = far.clamp(min=self.config.contract_far)
        else:
            t_enter, t_exit = ray_aabb_intersect(rays.origins, rays.directions, self.field.aabb)
            clipped_near, clipped_far = torch.maximum(near, t_enter), torch.minimum(far, t_exit)
            hit = clipped_near < clipped_far
            near = torch.where(hit, clipped_near, far)
            far = torch.where(hit, clipped_far, far)
        return RayBundle(rays.origins, rays.directions, rays.viewdirs, near, far, rays.radii, rays.camera_indices)

    def _appearance(self, rays: RayBundle, ray_indices: Tensor, train: bool) -> Tensor | None:
        """[S, appearance_dim] per-sample embedding: the ray's training image when training, the
        mean embedding otherwise."""
        f = self.field
        if f.appearance_dim == 0 or not train:
            return None
        if rays.camera_indices is None:
            raise TurboNerfError("nerfacto trains per-image appearance embeddings: the rays carry no camera index")
        idx = rays.camera_indices.long()
        if len(idx) and int(idx.max()) >= f.n_images:
            raise TurboNerfError(f"camera index {int(idx.max())} but this nerfacto model has {f.n_images} appearance embeddings (set n_images)")
        return f.appearance(idx)[ray_indices]

    def forward(self, rays: RayBundle, background: Tensor, train: bool = False) -> dict:
        """Proposal sampling, the NeRF field on ``n_samples`` samples per ray, compositing.
        background: [3] (or [R, 3]). Training also returns what the losses need."""
        if not train:
            return self._render(rays, background)
        rays = self._ray_interval(rays)
        prop = self.sampler.propose(rays, train=True)
        samples = prop.samples
        sigma, rgb = self.field(samples.positions(rays), samples.viewdirs(rays), self._appearance(rays, samples.ray_indices, True))
        out = composite(samples.t_starts, samples.t_ends, sigma, rgb, samples.ray_indices, samples.n_rays, background)
        out["s_edges"] = prop.s_edges
        out["proposal_s_edges"] = prop.proposal_s_edges
        out["proposal_weights"] = prop.proposal_weights
        out["stats"] = {"anneal": self.sampler.anneal, "proposals_learn": float(self.sampler.proposals_learn)}
        return out

    @torch.no_grad()
    def _render(self, rays: RayBundle, background: Tensor) -> dict:
        c = self.config
        parts = []
        for r0 in range(0, len(rays), c.render_chunk_rays):
            chunk = self._ray_interval(rays[r0 : r0 + c.render_chunk_rays])
            bg = background[r0 : r0 + c.render_chunk_rays] if background.dim() == 2 else background
            samples = self.sampler.propose(chunk, train=False).samples
            sigma, rgb = self.field(samples.positions(chunk), samples.viewdirs(chunk), None)
            out = composite(samples.t_starts, samples.t_ends, sigma, rgb, samples.ray_indices, samples.n_rays, bg)
            parts.append(out)
        if not parts:
            z = rays.origins.new_zeros(0)
            return {"rgb": rays.origins.new_zeros(0, 3), "depth": z, "opacity": z}
        return {k: torch.cat([p[k] for p in parts]) for k in ("rgb", "depth", "opacity")}

    # The stages of activation-based sampling (a :class:`~turbonerf.methods.base.CoarseToFine`
    # method; :mod:`turbonerf.eval.activation_eval`): the "coarse" pass is the first proposal
    # network on its proposal_samples_1 bins, the "fine" pass the second proposal network and
    # the field. Inference only; together they are the model's own render.

    @property
    def n_coarse(self) -> int:
        return self.config.proposal_samples_1

    @property
    def n_fine(self) -> int:
        return self.config.n_samples

    def initial_edges(self, rays: RayBundle, n: int | None = None) -> Tensor:
        """[R, n + 1] distances of the first proposal level's bins (uniform in s over the ray's
        interval; n: proposal_samples_1)."""
        r = self._ray_interval(rays)
        return s_to_t(ProposalSampler.initial_s_edges(r.near, self.n_coarse if n is None else n), r.near, r.far)

    def coarse_stage(self, rays: RayBundle, background: Tensor, train: bool = False) -> tuple[Tensor, Tensor, dict]:
        """The first proposal network: (edges [R, n_coarse + 1], weights [R, n_coarse], {})."""
        edges = self.initial_edges(rays)
        return edges, render_weight_dense(edges, self.bin_density(rays, edges, "coarse")), {}

    def fine_edges(self, rays: RayBundle, edges: Tensor, weights: Tensor, train: bool = False, padding: float | None = None) -> Tensor:
        """[R, n_samples + 1] the field's bins: the first level's draw from ``weights`` [R,
        n_coarse] (of the bins ``edges``, which must be :meth:`initial_edges`) padded by
        ``padding`` (default histogram_padding), the second proposal network, its draw."""
        if edges.shape[1] != self.n_coarse + 1:
            raise ValueError(f"nerfacto's first level has {self.n_coarse} bins, got {edges.shape[1] - 1}")
        return self.sampler.propose(self._ray_interval(rays), train, first_weights=weights, padding=padding).t_edges

    def fine_stage(self, rays: RayBundle, background: Tensor, fine_edges: Tensor, train: bool = False) -> dict:
        """The field on the bins ``fine_edges`` [R, S + 1] (mean appearance), composited."""
        p = packed_from_dense(fine_edges)
        sigma, rgb = self.field(p.positions(rays), p.viewdirs(rays), None)
        return composite(p.t_starts, p.t_ends, sigma, rgb, p.ray_indices, p.n_rays, background)

    def _net(self, net: str):
        return {"coarse": self.proposals[0], "fine": self.field}[net]

    def trunk_depth(self, net: str) -> int:
        """Hidden layers of the first proposal network's MLP (``"coarse"``) or of the field's density MLP."""
        return self._net(net).trunk_depth

    def trunk_activations(self, rays: RayBundle, edges: Tensor, layer: int, net: str) -> Tensor:
        """[R * S, hidden] activations of hidden layer ``layer`` at the midpoints of ``edges`` [R, S + 1]."""
        return self._net(net).trunk_features(packed_from_dense(edges).positions(rays), upto=layer)

    def bin_density(self, rays: RayBundle, edges: Tensor, net: str) -> Tensor:
        """[R, S] density of ``net`` at the midpoints of the bins ``edges`` [R, S + 1]."""
        return self._net(net).density(packed_from_dense(edges).positions(rays)).float().reshape(edges.shape[0], -1)

    def loss(self, outputs: dict, target: Tensor):
        c = self.config
        mse = torch.mean((outputs["rgb"].float() - target) ** 2)
        r = target.shape[0]
        weights = outputs["weights"].reshape(r, -1)
        s_edges = outputs["s_edges"]
        inter = interlevel_loss(s_edges, weights, outputs["proposal_s_edges"], outputs["proposal_weights"])
        dist = distortion_loss(s_edges, weights)
        loss = mse + c.interlevel_mult * inter + c.distortion_mult * dist
        return loss, {"mse": float(mse.detach()), "interlevel": float(inter.detach()), "distortion": float(dist.detach())}

    def callbacks(self) -> list:
        """The proposal sampler's annealing and update schedule, before every step."""
        return [SamplerUpdate(self.sampler, self.field.density)]

    def samples_per_ray(self) -> float:
        """Network evaluations per ray: both proposal levels and the NeRF field."""
        c = self.config
        return float(c.proposal_samples_1 + c.proposal_samples_2 + c.n_samples)

    def flops_per_ray(self) -> float:
        """Linear layers of the proposal MLPs and of the field's MLPs on every evaluation (hash
        lookups, which dominate on a CPU, are not counted)."""
        c = self.config
        prop = linear_flops(self.proposals[0]) * c.proposal_samples_1 + linear_flops(self.proposals[1]) * c.proposal_samples_2
        field = (linear_flops(self.field.density_mlp) + linear_flops(self.field.color_mlp)) * c.n_samples
        return float(prop + field)

    def baking_field(self) -> nn.Module:
        """The NeRF field (baked with the mean appearance embedding). Not for contracted scenes:
        the field is trained only where the proposal networks place samples, and elsewhere in
        contracted space it holds dense fog (a 5-minute model of the fern capture, baked over
        [-2, 2]^3 as Instant-NGP is, scored 10-13 dB against 21 for the model; BENCHMARKS.md)."""
        if self.field.contract:
            raise TurboNerfError(
                "a nerfacto of an unbounded (contracted) scene cannot be baked: its field is dense fog wherever its "
                "proposal networks never sample; bake an Instant-NGP of the capture instead"
            )
        return self.field

    def make_optimizer(self):
        c = self.config
        opt = adam(self.parameters(), c.lr, (0.9, 0.999), c.adam_eps)

        def lr_factor(step: int) -> float:
            frac = min(max(step, 0), c.lr_decay_steps) / max(c.lr_decay_steps, 1)
            return (c.lr_final / c.lr) ** frac

        return opt, lr_factor
