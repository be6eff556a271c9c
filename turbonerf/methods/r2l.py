"""R2L (Wang et al., ECCV 2022): a neural light field that maps a ray straight to a colour.

A ray is represented by K points along it: [near, far] is cut into K equal segments and one
point is taken in each (the segment's midpoint at test time, a uniform random position inside
the segment in training). The points are positional-encoded (L octaves, the input included) and
concatenated into one vector of K * 3 * (2L + 1) numbers (1008 for K=16, L=10, as in R2L), which
a deep residual MLP maps to RGB:

    h0 = relu(stem(x));  h = h0;  h = h + fc2(relu(fc1(h)))  (n_blocks times);  rgb = sigmoid(head(h + h0))

``depth`` counts every Linear layer (stem + 2 per block + head), so the paper's D88 is 43 blocks.
One network evaluation per pixel: :meth:`R2L.samples_per_ray` is 1.

The student learns the colour *as composited on the scene background* (teacher renders and real
images already include it), so ``render`` ignores its ``background`` argument. It has no notion of
geometry: ``depth`` is returned as zeros and ``opacity`` as ones (placeholders, documented as not
available, so that eval/render code that expects the keys keeps working).

Presets (:func:`r2l_preset`):

- ``paper``: W256 D88 (43 residual blocks), K=16, L=10: ~5.9 M parameters, ~11.8 MFLOPs per ray.
- ``cpu``: W128 D16 (7 residual blocks), K=16, L=10: ~0.36 M parameters, ~0.72 MFLOPs per ray.

Why W128 D16 for the CPU: rays/s measured on the development CPU (bf16 autocast, batches of 4096
rays, 1 thread while the other core ran another job; best of 3 one-second windows):

=========  ==============================  ==================
network    forward+backward+Adam (rays/s)  forward (rays/s)
=========  ==============================  ==================
W64  D16   ~110 k                          ~170 k
W128 D8    ~100-125 k                      ~170-220 k
W128 D16   ~70-90 k                        ~135-150 k
W128 D32   ~40-45 k                        ~100 k
W256 D16   ~27-31 k                        ~68 k
W256 D88   ~6 k                            ~20-27 k
=========  ==============================  ==================

The paper network trains ~12-15x slower than W128 D16 here, so in a CPU budget of minutes it sees
too few rays. Going narrower than W128 buys little (the positional encoding, ~15 ms per 4096 rays,
and the 1008-wide stem are fixed costs: the encoding is about half of the forward time of this
preset), while D16 keeps 7 residual blocks (R2L found depth to matter) at ~1.4x the cost of D8.
No quality sweep over these sizes was run on a real scene; ``benchmarks/distill_r2l.py`` is the
place to do it. (With the other core busy, 2 torch threads were 2-5x *slower* than 1 on that
machine: see ``DistillOptions.threads``.)
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from turbonerf.encodings.frequency import FrequencyEncoding
from turbonerf.errors import TurboNerfError
from turbonerf.methods.base import Method, adam, linear_flops
from turbonerf.rays import RayBundle

PRESET_NAMES = ("cpu", "paper")


@dataclass
class R2LConfig:
    """R2L student hyper-parameters (defaults: the ``cpu`` preset; see :func:`r2l_preset`)."""

    width: int = 128
    """hidden width W of the residual MLP"""
    depth: int = 16
    """Linear layers D in all (stem + 2 per residual block + head); even, >= 2 (paper: 88)"""
    n_points: int = 16
    """K, points per ray (paper: 16)"""
    pos_freqs: int = 10
    """positional-encoding octaves L for each point (paper: 10)"""
    normalize_points: bool = True
    """centre points on the scene box and divide by its largest half-extent before encoding
    (R2L encodes raw coordinates; normalising makes the encoding independent of the scene's units)"""
    lr: float = 5e-4
    """peak Adam learning rate (paper: 5e-4)"""
    warmup_steps: int = 200
    """linear warm-up from ``warmup_lr`` to ``lr`` over this many steps (paper: 200)"""
    warmup_lr: float = 1e-4
    """learning rate at step 0 (paper: 1e-4)"""
    lr_decay_steps: int = 500_000
    """after the warm-up the learning rate falls by 10x every this many steps (paper: 500k)"""

    @property
    def n_blocks(self) -> int:
        return (self.depth - 2) // 2


def r2l_preset(name: str) -> R2LConfig:
    """The named R2L configuration: ``cpu`` (W128 D16) or ``paper`` (W256 D88); see the module docstring."""
    if name == "cpu":
        return R2LConfig()
    if name == "paper":
        return dataclasses.replace(R2LConfig(), width=256, depth=88)
    raise TurboNerfError(f"unknown R2L preset '{name}' (choose from {', '.join(PRESET_NAMES)})")


def ray_point_ts(near: Tensor, far: Tensor, k: int, jitter: bool, generator: torch.Generator | None = None) -> Tensor:
    """Where the K points of each ray lie, in units of t.

    [near, far] is cut into K equal segments; point i sits at the midpoint of segment i
    (``jitter=False``) or uniformly inside it (``jitter=True``), so it never leaves its segment.

    Args:
        near, far: [R].
    Returns:
        [R, K] increasing t values.
    """
    r = near.shape[0]
    if jitter:
        u = torch.rand((r, k), device=near.device, generator=generator)
    else:
        u = torch.full((r, k), 0.5, device=near.device)
    idx = torch.arange(k, device=near.device, dtype=near.dtype)
    return near[:, None] + (far - near)[:, None] * (idx + u) / k


def ray_points(rays: RayBundle, k: int, jitter: bool, generator: torch.Generator | None = None) -> Tensor:
    """[R, K, 3] sample-space positions of the K points of each ray (see :func:`ray_point_ts`)."""
    t = ray_point_ts(rays.near, rays.far, k, jitter, generator)
    return rays.origins[:, None, :] + t[..., None] * rays.directions[:, None, :]


class ResidualBlock(nn.Module):
    """h -> h + fc2(relu(fc1(h))), both layers W x W (R2L's ResMLP, no output activation)."""

    def __init__(self, width: int):
        super().__init__()
        self.fc1 = nn.Linear(width, width)
        self.fc2 = nn.Linear(width, width)

    def forward(self, h: Tensor) -> Tensor:
        return h + self.fc2(torch.relu(self.fc1(h)))


class R2L(Method):
    """The NeLF student: rays in, colours out, one MLP evaluation per ray."""

    def __init__(self, config: R2LConfig, aabb: Tensor):
        super().__init__()
        c = config
        if c.depth < 2 or c.depth % 2:
            raise TurboNerfError(f"R2L depth must be an even number >= 2 (stem + 2 per block + head), got {c.depth}")
        if c.n_points < 1 or c.width < 1:
            raise TurboNerfError("R2L needs n_points >= 1 and width >= 1")
        self.config = c
        aabb = torch.as_tensor(aabb, dtype=torch.float32).reshape(2, 3)
        centre = 0.5 * (aabb[0] + aabb[1])
        half = 0.5 * float((aabb[1] - aabb[0]).max())
        if not c.normalize_points:
            centre, half = torch.zeros(3), 1.0
        self.register_buffer("centre", centre, persistent=False)
        self.inv_scale = 1.0 / max(half, 1e-6)
        self.encoding = FrequencyEncoding(c.pos_freqs)
        self.in_dim = c.n_points * self.encoding.out_dim(3)
        self.stem = nn.Linear(self.in_dim, c.width)
        self.blocks = nn.ModuleList(ResidualBlock(c.width) for _ in range(c.n_blocks))
        self.head = nn.Linear(c.width, 3)

    def encode(self, points: Tensor) -> Tensor:
        """[R, K, 3] points -> [R, K * 3 * (2L + 1)] network input."""
        r, k, _ = points.shape
        x = (points - self.centre) * self.inv_scale
        return self.encoding(x.reshape(r * k, 3)).reshape(r, -1)

    def mlp(self, x: Tensor) -> Tensor:
        """[R, in_dim] encoded rays -> [R, 3] colours in (0, 1)."""
        h0 = torch.relu(self.stem(x))
        h = h0
        for block in self.blocks:
            h = block(h)
        return torch.sigmoid(self.head(h + h0))

    def colours(self, rays: RayBundle, jitter: bool) -> Tensor:
        """[R, 3] colours of R rays (points jittered inside their segments when ``jitter``)."""
        return self.mlp(self.encode(ray_points(rays, self.config.n_points, jitter)))

    def forward(self, rays: RayBundle, background: Tensor, train: bool = False) -> dict:
        """rgb [R, 3]; depth [R] zeros and opacity [R] ones (placeholders: a light field has no
        geometry). ``background`` is ignored: the student learned colours already composited on it."""
        rgb = self.colours(rays, jitter=train).float()
        n = rgb.shape[0]
        return {"rgb": rgb, "depth": torch.zeros(n, device=rgb.device), "opacity": torch.ones(n, device=rgb.device)}

    def loss(self, outputs: dict, target: Tensor):
        mse = torch.mean((outputs["rgb"] - target) ** 2)
        return mse, {"mse": mse.item()}

    def samples_per_ray(self) -> int:
        """Network evaluations per rendered ray: one (the point of a light field)."""
        return 1

    def flops_per_ray(self) -> float:
        """Every Linear layer once."""
        return float(linear_flops(self))

    def make_optimizer(self):
        c = self.config
        return adam(self.parameters(), c.lr), lambda step: r2l_lr_factor(step, c)


def r2l_lr_factor(step: int, c: R2LConfig) -> float:
    """Learning-rate multiplier of ``c.lr`` at ``step``: linear warm-up from ``warmup_lr``, then
    exponential decay by 10x every ``lr_decay_steps`` (R2L's schedule)."""
    if step < c.warmup_steps:
        start = c.warmup_lr / c.lr
        return start + (1.0 - start) * step / c.warmup_steps
    return 0.1 ** ((step - c.warmup_steps) / c.lr_decay_steps)
