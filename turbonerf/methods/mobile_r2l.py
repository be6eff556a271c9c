"""mobile-r2l: MobileR2L (Cao et al., CVPR 2023; snap-research/MobileR2L), a neural light field
on a low-resolution ray grid with a super-resolution tail.

1. Every ``stride`` x ``stride`` block of the (padded) output is one ray through its centre
   (:func:`turbonerf.methods.image_student.grid_rays`). As in R2L, [near, far] is cut into
   ``n_points`` segments with one point in each (midpoints at test time, jittered in training
   unless ``jitter`` is off);
   the points are normalised to the scene box and frequency-encoded with the input
   (``pos_freqs`` octaves): 8 points x 3 x (2 * 6 + 1) = 312 channels per ray in the paper.
2. The ray image [312, h, w] goes through a 1x1 convolution to ``width`` channels and
   ``n_blocks`` residual blocks of two 1x1 convolutions: an MLP per ray, written as convolutions
   (the form that runs fast on mobile NPUs, and on CPUs as large matmuls).
3. A super-resolution tail of log2(stride) stages, each a stride-2 transposed convolution
   (kernel 4) and ``sr_blocks`` 3x3 residual blocks, with ``sr_channels`` channels, then a 3x3
   convolution to RGB and a sigmoid.

Presets (:func:`mobile_r2l_preset`): ``paper`` (width 256, 28 blocks, stride 8, SR channels
64-64-16: about 4.3 M parameters like the paper's) and ``cpu`` (see that function for why).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from turbonerf.cameras import Cameras
from turbonerf.encodings.frequency import FrequencyEncoding
from turbonerf.errors import TurboNerfError
from turbonerf.methods.image_student import (
    ImageStudent,
    ResBlock2d,
    StudentFrame,
    crop,
    floored_sigmoid,
    grid_rays,
    padded_size,
    to_hwc,
    upsampling_stages,
)
from turbonerf.methods.r2l import ray_points

PRESET_NAMES = ("cpu", "paper")


@dataclass
class MobileR2LConfig(StudentFrame):
    """MobileR2L hyper-parameters (defaults: the ``cpu`` preset; height / width / near / far /
    ndc: the scene's, set by ``turbonerf distill``)."""

    stride: int = 8
    """output pixels per ray along each axis (a power of 2; paper: 8, 100x100 -> 800x800)"""
    n_points: int = 8
    """points per ray (paper: 8)"""
    pos_freqs: int = 6
    """positional-encoding octaves per point, input included (paper: 6)"""
    jitter: bool = True
    """training moves each point to a random place in its segment (R2L's, and the paper's); False
    keeps the midpoints of inference, so the network sees at training exactly what it renders"""
    channels: int = 128
    """width of the per-ray 1x1-convolution body (paper: 256)"""
    n_blocks: int = 8
    """residual blocks of two 1x1 convolutions in the body (paper: 28)"""
    sr_channels: str = "64,32,16"
    """channels of the super-resolution stages, one per 2x stage, comma-separated (paper: 64,64,16)"""
    sr_blocks: int = 1
    """3x3 residual blocks after each transposed convolution (paper: 2)"""
    lr: float = 2e-3
    """Adam learning rate (paper: 5e-4 over a far longer schedule; measured on lego at 100x100,
    150 steps of 4 images: 5e-4 stayed at ~9.5 dB, 2e-3 reached 17.4 dB)"""
    lr_decay_steps: int = 20_000


def mobile_r2l_preset(name: str) -> MobileR2LConfig:
    """``paper`` (width 256, 28 blocks, SR 64-64-16 with 2 blocks each) or ``cpu`` (width 128,
    8 blocks, SR 64-32-16 with 1 block each, the defaults; chosen from the training throughput
    measured in ``benchmarks/image_students.py --throughput``, see BENCHMARKS.md)."""
    if name == "cpu":
        return MobileR2LConfig()
    if name == "paper":
        return dataclasses.replace(MobileR2LConfig(), channels=256, n_blocks=28, sr_channels="64,64,16", sr_blocks=2)
    raise TurboNerfError(f"unknown mobile-r2l preset '{name}' (choose from {', '.join(PRESET_NAMES)})")


def parse_channels(text: str, stages: int) -> list[int]:
    """'64,32,16' -> [64, 32, 16], checked to give one positive count per stage."""
    try:
        chans = [int(x) for x in str(text).split(",") if x.strip()]
    except ValueError:
        chans = []
    if len(chans) != stages or min(chans, default=0) < 1:
        raise TurboNerfError(f"sr_channels must list {stages} positive channel counts (one per 2x stage), got '{text}'")
    return chans


class MobileR2L(ImageStudent):
    """Rays of a low-resolution grid -> 1x1-conv residual body -> super-resolution tail."""

    def __init__(self, config: MobileR2LConfig, aabb: Tensor):
        super().__init__(aabb)
        c = self.config = config
        stages = upsampling_stages(c.stride, "mobile-r2l")
        if c.n_points < 1 or c.channels < 1:
            raise TurboNerfError("mobile-r2l needs n_points >= 1 and channels >= 1")
        self.encoding = FrequencyEncoding(c.pos_freqs)
        self.in_channels = c.n_points * self.encoding.out_dim(3)
        self.stem = nn.Conv2d(self.in_channels, c.channels, 1)
        self.body = nn.Sequential(*(ResBlock2d(c.channels, kernel=1) for _ in range(c.n_blocks)))
        chans = [c.channels] + parse_channels(c.sr_channels, stages)
        tail: list[nn.Module] = []
        for i in range(stages):
            tail += [nn.ConvTranspose2d(chans[i], chans[i + 1], 4, stride=2, padding=1), nn.ReLU()]
            tail += [ResBlock2d(chans[i + 1], kernel=3) for _ in range(c.sr_blocks)]
        self.tail = nn.Sequential(*tail)
        self.head = nn.Conv2d(chans[-1], 3, 3, padding=1)

    def ray_image(self, cameras: Cameras, train: bool) -> Tensor:
        """[N, n_points * 3 * (2L + 1), h, w]: the encoded points of every low-resolution ray."""
        c = self.config
        h, w = padded_size(cameras.height, cameras.width, c.stride)
        rays = grid_rays(cameras, c.stride, c.near, c.far, c.ndc)
        pts = (ray_points(rays, c.n_points, jitter=train and c.jitter) - self.centre) / self.scale  # [R, K, 3]
        r, k, _ = pts.shape
        x = self.encoding(pts.reshape(r * k, 3)).reshape(len(cameras), h, w, -1)
        return x.permute(0, 3, 1, 2)

    def render_views(self, cameras: Cameras, train: bool = False) -> Tensor:
        """N cameras -> rgb [N, H, W, 3] at the cameras' own size."""
        x = self.ray_image(cameras, train)
        h = torch.relu(self.stem(x.to(self.stem.weight.dtype)))
        rgb = floored_sigmoid(self.head(self.tail(self.body(h) + h)), train)
        return to_hwc(crop(rgb, cameras.height, cameras.width))
