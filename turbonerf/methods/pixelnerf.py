"""pixelNeRF (Yu et al., CVPR 2021; sxyu/pixel-nerf): a NeRF conditioned on 1-3 posed source
images, trained across many scenes, that renders unseen scenes with no optimisation.

A CNN encoder turns each source image into a feature pyramid; every sample point is projected
into each source view, the feature there (bilinear, border padding) conditions a residual MLP
that also sees the point and the viewing direction in that view's frame; the views are averaged
after ``combine_at`` blocks. Coarse (stratified) and fine (inverse-CDF) samples, one MLP each,
one shared encoder, an L2 loss on both.

It is a multi-scene method (``multi_scene = True``): ``turbonerf train`` feeds it batches of
scenes (:func:`turbonerf.app.train`), and a renderer first gives it its source views
(:meth:`PixelNeRF.condition`); ``forward(rays)`` then renders that one scene.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from turbonerf.cameras import Cameras
from turbonerf.errors import TurboNerfError
from turbonerf.fields.pixel_field import PixelMLP, ResNet34Encoder, SmallEncoder, SourceViews, conditioned_field
from turbonerf.methods.base import Method, adam, linear_flops
from turbonerf.rays import RayBundle, packed_from_dense
from turbonerf.render.volrend import composite
from turbonerf.samplers.pdf import merge_edges, sample_from_pdf
from turbonerf.samplers.uniform import stratified_edges

ENCODERS = ("small", "resnet34")


@dataclass
class PixelNeRFConfig:
    """pixelNeRF hyper-parameters. The paper: ResNet-34 encoder (512 channels), 5 blocks of width
    512, combine after 3, 64 coarse + 32 fine (+16 near the depth) samples, lr 1e-4; the defaults
    here are sized for a CPU; it computes in fp32 even under autocast (``fp32``). On a GPU a 4x
    wider model pays: width 256, encoder widths 32,64,64,128, 8 scenes per step, 32 + 16 samples,
    lr 5e-4 with ``--schedule budget`` trained 5.5 minutes on an H200 to 20.21 dB from 3 views on
    the generated objects, against 19.99 for the defaults after 185 CPU minutes, and, continued
    with ``--resume`` to 13 minutes, to 20.43 dB (+3.20 over the best per-object Instant-NGP;
    BENCHMARKS.md). Width 512 from scratch was behind after 7.5 minutes (19.97)."""

    encoder: str = "small"
    """"small" (a ResNet-like pyramid trained from scratch) or "resnet34" (the paper's)"""
    encoder_widths: str = "16,32,32,64"
    """small encoder: channels of the stem and of each stage (the feature is their sum)"""
    encoder_weights: str = ""
    """resnet34: a local safetensors file of torchvision-named ImageNet weights ("" = random init)"""
    width: int = 64
    """width of the residual MLP"""
    n_blocks: int = 5
    """residual blocks"""
    combine_at: int = 3
    """the source views are averaged before this block (the feature is added before each earlier one)"""
    pos_freqs: int = 6
    """positional-encoding octaves of the point (in each source view's frame)"""
    n_coarse: int = 24
    """stratified samples per ray (coarse MLP)"""
    n_fine: int = 16
    """extra inverse-CDF samples per ray (the fine MLP sees coarse + fine)"""
    max_source_views: int = 3
    """training picks 1..this many source views per step"""
    scenes_per_batch: int = 4
    """scenes per training step (``--batch-rays`` rays are split over them)"""
    box_share: float = 0.75
    """the share of each scene's training rays drawn inside the object's 2D bounding box in the
    target view (the rest anywhere in the image). The official code draws all of them there for
    its first 100k steps (``no_bbox_step``); a share keeps the background in every step"""
    lr: float = 1e-3
    """Adam learning rate"""
    lr_final_factor: float = 0.1
    """the learning rate decays exponentially by this factor every ``lr_decay_steps``"""
    lr_decay_steps: int = 20_000
    fp32: bool = True
    """compute in fp32 even under bf16 autocast (bf16 made training steps ~7x and rendering
    slower on the development CPU: small, 4-D matmuls)"""


def parse_widths(text: str) -> tuple[int, ...]:
    try:
        widths = tuple(int(x) for x in text.split(","))
    except ValueError:
        raise TurboNerfError(f"encoder_widths must be comma-separated integers, got '{text}'") from None
    if len(widths) < 2 or min(widths) < 1:
        raise TurboNerfError(f"encoder_widths needs at least two positive widths, got '{text}'")
    return widths


def stack_cameras(cameras: list[Cameras]) -> tuple[Tensor, Tensor, Tensor]:
    """B camera sets of S cameras each -> c2w [B, S, 3, 4], focal [B, S, 2], centre [B, S, 2]."""
    c2w = torch.stack([c.c2w for c in cameras])
    focal = torch.stack([torch.stack([c.fx, c.fy], -1) for c in cameras])
    centre = torch.stack([torch.stack([c.cx, c.cy], -1) for c in cameras])
    return c2w, focal, centre


class PixelNeRF(Method):
    """Image-conditioned coarse + fine NeRF (see the module docstring)."""

    multi_scene = True

    def __init__(self, config: PixelNeRFConfig, aabb: Tensor):
        super().__init__()
        self.config = c = config
        if c.encoder not in ENCODERS:
            raise TurboNerfError(f"unknown encoder '{c.encoder}' (choose from {', '.join(ENCODERS)})")
        if c.max_source_views < 1:
            raise TurboNerfError("max_source_views must be at least 1")
        if not 0.0 <= c.box_share <= 1.0:
            raise TurboNerfError(f"box_share must be between 0 and 1 (got {c.box_share})")
        if c.encoder == "small":
            self.encoder = SmallEncoder(parse_widths(c.encoder_widths))
        else:
            self.encoder = ResNet34Encoder()
            if c.encoder_weights:
                self.encoder.load_weights(c.encoder_weights)
        dim = self.encoder.out_channels
        self.coarse = PixelMLP(dim, c.pos_freqs, c.width, c.n_blocks, c.combine_at)
        self.fine = PixelMLP(dim, c.pos_freqs, c.width, c.n_blocks, c.combine_at) if c.n_fine > 0 else None
        self.n_coarse, self.n_fine = c.n_coarse, c.n_fine
        self.sources: SourceViews | None = None

    # ---- source views -------------------------------------------------------------------

    def encode(self, images: Tensor, cameras: list[Cameras]) -> SourceViews:
        """images [B, S, H, W, 3] (uint8, or float in [0, 1]) and B camera sets of S cameras ->
        the encoded source views (with gradients when the module trains)."""
        b, s, h, w, _ = images.shape
        x = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
        dev = x.device.type
        with torch.autocast(dev, enabled=not self.config.fp32 and torch.is_autocast_enabled(dev)):
            feats = self.encoder(x.reshape(b * s, h, w, 3).permute(0, 3, 1, 2).contiguous()).float()
        c2w, focal, centre = stack_cameras(cameras)
        dev = feats.device
        return SourceViews(feats, c2w.to(dev), focal.to(dev), centre.to(dev), w, h)

    @torch.no_grad()
    def condition(self, images: Tensor, cameras: Cameras) -> None:
        """Render one scene from now on, seen in its source ``images`` [S, H, W, 3] from ``cameras`` (S)."""
        dev = next(self.parameters()).device
        self.sources = self.encode(images[None].to(dev), [cameras.to(dev)])

    # ---- rendering ----------------------------------------------------------------------

    def _shade(self, mlp: PixelMLP, sources: SourceViews, rays: RayBundle, edges: Tensor, background: Tensor) -> dict:
        """The MLP at the midpoints of the bins ``edges`` [R, P + 1] of R = B * Rb scene-major rays."""
        b = sources.n_scenes
        samples = packed_from_dense(edges)
        pts = samples.positions(rays).reshape(b, -1, 3)
        dirs = samples.viewdirs(rays).reshape(b, -1, 3)
        sigma, rgb = conditioned_field(mlp, sources, pts, dirs)
        return composite(samples.t_starts, samples.t_ends, sigma.reshape(-1), rgb.reshape(-1, 3), samples.ray_indices,
                         samples.n_rays, background)

    def render_scenes(self, rays: RayBundle, sources: SourceViews, background: Tensor, train: bool) -> dict:
        """R = B * Rb rays (scene b's rays are rows b Rb .. b Rb + Rb - 1) through the B scenes of
        ``sources``: rgb [R, 3], depth [R], opacity [R], coarse_rgb [R, 3]."""
        dev = rays.origins.device.type
        if self.config.fp32:  # rays made under autocast may be bf16
            rays = RayBundle(*(t.float() if t is not None and t.is_floating_point() else t for t in rays._fields()))
        with torch.autocast(dev, enabled=not self.config.fp32 and torch.is_autocast_enabled(dev)):
            return self._render_scenes(rays, sources, background.float() if self.config.fp32 else background, train)

    def _render_scenes(self, rays: RayBundle, sources: SourceViews, background: Tensor, train: bool) -> dict:
        if len(rays) % sources.n_scenes:
            raise ValueError(f"{len(rays)} rays do not split evenly over {sources.n_scenes} scenes")
        edges = stratified_edges(rays.near, rays.far, self.n_coarse, jitter=train)
        coarse = self._shade(self.coarse, sources, rays, edges, background)
        if self.fine is None:
            return {**coarse, "coarse_rgb": coarse["rgb"]}
        w = coarse["weights"].detach().reshape(len(rays), self.n_coarse)
        fine_edges = merge_edges(edges, sample_from_pdf(edges, w, self.n_fine, deterministic=not train, eps=1e-5))
        out = self._shade(self.fine, sources, rays, fine_edges, background)
        out["coarse_rgb"] = coarse["rgb"]
        return out

    def forward(self, rays: RayBundle, background: Tensor, train: bool = False) -> dict:
        """Rays of the scene given to :meth:`condition`."""
        if self.sources is None:
            raise TurboNerfError("pixelNeRF renders a scene from its source views: condition() it first")
        return self.render_scenes(rays, self.sources, background, train)

    def loss(self, outputs: dict, target: Tensor):
        mse_f = torch.mean((outputs["rgb"] - target) ** 2)
        mse_c = torch.mean((outputs["coarse_rgb"] - target) ** 2)
        return mse_c + mse_f, {"mse": mse_f.item(), "mse_coarse": mse_c.item()}

    # ---- cost and optimisation ----------------------------------------------------------

    def samples_per_ray(self) -> float:
        """Network evaluations per ray and source view (coarse + fine)."""
        return float(self.n_coarse + (self.n_coarse + self.n_fine if self.fine is not None else 0))

    def flops_per_ray(self) -> float:
        """Linear layers per ray for one source view (the encoder's convolutions, once per source
        image, are not counted)."""
        fine = linear_flops(self.fine) * (self.n_coarse + self.n_fine) if self.fine is not None else 0
        return float(linear_flops(self.coarse) * self.n_coarse + fine)

    def make_optimizer(self):
        c = self.config
        return adam(self.parameters(), c.lr), lambda step: c.lr_final_factor ** (step / c.lr_decay_steps)
