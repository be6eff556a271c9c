"""What the image-space students share: the whole-image contract, camera vectors, padded
low-resolution grids and the 2D building blocks (residual blocks, upsamplers, pose decoder).

The students of the "Faster NeRFs" report (Kraut & Schmidt) and MobileR2L (Cao et al. 2023) do
not render a ray at a time: one network call maps a camera to a whole H x W image. They fulfil
the :class:`turbonerf.methods.base.Method` contract with ``image_space = True``:

- ``render_views(cameras, train) -> rgb [N, H, W, 3]`` for N cameras of one size (the training
  images' size, or any other: every student builds its output from a grid padded to its stride
  and crops it, so the pixels stay aligned with the camera's);
- ``image_loss(cameras, images) -> (loss, stats)`` on whole images [N, H, W, 3] in [0, 1]
  (``turbonerf distill`` trains them on batches of teacher renders and real images);
- ``forward(rays, ...)`` is refused with a one-line error: a ray alone has no image to come from.
  Evaluation and rendering go through :meth:`turbonerf.app.runs.RunRenderer.render_view`.

Like R2L, the students learn colours already composited on the scene background; they have no
geometry, so depth is zeros and opacity ones (placeholders).
"""

from __future__ import annotations

import math
from abc import abstractmethod
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from turbonerf.cameras import Cameras
from turbonerf.encodings.frequency import FrequencyEncoding
from turbonerf.errors import TurboNerfError
from turbonerf.methods.base import Method, adam
from turbonerf.rays import RayBundle, make_rays

@dataclass
class StudentFrame:
    """The frame every image-space student's config starts with: the training images' size and
    the scene's ray range, which ``turbonerf distill`` sets from the teacher's scene."""

    height: int = 200
    width: int = 200
    near: float = 2.0
    far: float = 6.0
    ndc: bool = False


CAMERA_VECTOR_DIM = 16
"""rotation (9) + translation (3) + intrinsics (4)"""
SIGMOID_GRADIENT_FLOOR = 0.01
"""added to the output sigmoid's derivative in training (the image is unchanged): lego's white
background drives every logit up in the first steps, and once all of them saturate the sigmoid
passes no gradient and the student stays a white image (3 of 7 MobileR2L runs of 5-30 minutes on
lego did, at 9.6 dB)"""


def camera_vector(cameras: Cameras, centre: Tensor, scale: float) -> Tensor:
    """[N, 16] what a pose-conditioned student sees of a camera: the rotation's 9 entries, the
    centre relative to the scene centre divided by ``scale`` (so about unit size), and the
    intrinsics relative to the image size (fx / W, fy / H, cx / W, cy / H)."""
    c2w = cameras.c2w.float()
    n = c2w.shape[0]
    rot = c2w[:, :3, :3].reshape(n, 9)
    trans = (c2w[:, :3, 3] - centre.to(c2w.device)) / scale
    w, h = float(cameras.width), float(cameras.height)
    intr = torch.stack([cameras.fx.float() / w, cameras.fy.float() / h, cameras.cx.float() / w, cameras.cy.float() / h], dim=-1)
    return torch.cat([rot, trans, intr.to(c2w.device)], dim=-1)


def upsampling_stages(stride: int, who: str) -> int:
    """log2(stride): the 2x stages that take a low-resolution grid to the output; a stride that
    is not a power of 2 is a one-line error naming ``who``."""
    stages = int(round(math.log2(stride))) if stride >= 1 else -1
    if stages < 0 or 2**stages != stride:
        raise TurboNerfError(f"{who} stride must be a power of 2, got {stride}")
    return stages


def padded_size(height: int, width: int, stride: int) -> tuple[int, int]:
    """(h, w) of the low-resolution grid whose ``stride``-times upsampling covers H x W."""
    return math.ceil(height / stride), math.ceil(width / stride)


def lowres_cameras(cameras: Cameras, stride: int) -> Cameras:
    """The cameras of the low-resolution grid: the image is padded on the right and bottom to a
    multiple of ``stride`` (principal point and focal length unchanged, so the first H x W pixels
    of the upsampled output are the camera's own), then every ``stride`` x ``stride`` block
    becomes one pixel whose ray passes through the block's centre."""
    h, w = padded_size(cameras.height, cameras.width, stride)
    s = 1.0 / stride
    return Cameras(cameras.c2w, cameras.fx * s, cameras.fy * s, cameras.cx * s, cameras.cy * s, w, h)


def grid_rays(cameras: Cameras, stride: int, near: float, far: float, ndc: bool) -> RayBundle:
    """The rays of the low-resolution grids of N cameras (:func:`lowres_cameras`), camera by
    camera, row-major: N * h * w rays."""
    low = lowres_cameras(cameras, stride)
    n, h, w = len(low), low.height, low.width
    dev = low.c2w.device
    v, u = torch.meshgrid(torch.arange(h, device=dev), torch.arange(w, device=dev), indexing="ij")
    idx = torch.arange(n, device=dev).repeat_interleave(h * w)
    return make_rays(low, idx, u.reshape(-1).repeat(n), v.reshape(-1).repeat(n), near, far, ndc)


def fit_size(images: Tensor, height: int, width: int) -> Tensor:
    """[N, C, H', W'] -> [N, C, H, W] bilinearly resized (a student asked for another size than
    the one it was trained at renders at its own and resizes)."""
    if images.shape[-2:] == (height, width):
        return images
    return F.interpolate(images, size=(height, width), mode="bilinear", align_corners=False)


def crop(images: Tensor, height: int, width: int) -> Tensor:
    """[N, C, H', W'] -> [N, C, H, W], the top-left part (H' >= H, W' >= W)."""
    return images[:, :, :height, :width]


def to_hwc(images: Tensor) -> Tensor:
    """[N, 3, H, W] -> [N, H, W, 3] float32."""
    return images.permute(0, 2, 3, 1).float()


class ResBlock2d(nn.Module):
    """x -> x + conv(relu(conv(x))), both convolutions C -> C with a k x k kernel (k = 1: MobileR2L's
    per-pixel blocks, k = 3: the upsampler's)."""

    def __init__(self, channels: int, kernel: int = 3):
        super().__init__()
        pad = kernel // 2
        self.conv1 = nn.Conv2d(channels, channels, kernel, padding=pad)
        self.conv2 = nn.Conv2d(channels, channels, kernel, padding=pad)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv2(torch.relu(self.conv1(x)))


UPSAMPLERS = ("transposed", "bilinear")


class Upsample2x(nn.Module):
    """One 2x upsampling stage C_in -> C_out: a stride-2 transposed convolution (kernel 4, the
    classic decoder, prone to checkerboard artifacts where kernel and stride overlap unevenly),
    or bilinear upsampling followed by a 3x3 convolution (Odena et al. 2016's fix, the report's
    second upsampler). Then ReLU."""

    def __init__(self, c_in: int, c_out: int, mode: str):
        super().__init__()
        if mode not in UPSAMPLERS:
            raise TurboNerfError(f"unknown upsampler '{mode}' (choose from {', '.join(UPSAMPLERS)})")
        self.mode = mode
        if mode == "transposed":
            self.conv = nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1)
        else:
            self.conv = nn.Conv2d(c_in, c_out, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        """[N, C_in, h, w] -> [N, C_out, 2h, 2w]."""
        if self.mode == "bilinear":
            x = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)
        return torch.relu(self.conv(x))


def floored_sigmoid(logits: Tensor, train: bool) -> Tensor:
    """sigmoid(logits) (any shape); with ``train`` its derivative is at least
    :data:`SIGMOID_GRADIENT_FLOOR`, so saturated logits still learn (the values are unchanged)."""
    rgb = torch.sigmoid(logits)
    if train:
        rgb = rgb + SIGMOID_GRADIENT_FLOOR * (logits - logits.detach())
    return rgb


class RgbSkipUpsampler(nn.Module):
    """GIRAFFE's neural renderer: a feature image [N, C, h, w] -> rgb [N, 3, 2^k h, 2^k w].

    An RGB image is predicted from the features at the lowest scale; at each of the k stages the
    features are upsampled (:class:`Upsample2x`), and the RGB image is upsampled bilinearly and
    added to a new prediction from the upsampled features (the "RGB skip"), so every scale
    refines the colour rather than re-creating it. Channels halve at each stage (at least
    ``min_channels``)."""

    def __init__(self, channels: int, stages: int, mode: str, min_channels: int = 16):
        super().__init__()
        chans = [channels] + [max(channels >> (i + 1), min_channels) for i in range(stages)]
        self.ups = nn.ModuleList(Upsample2x(chans[i], chans[i + 1], mode) for i in range(stages))
        self.to_rgb = nn.ModuleList(nn.Conv2d(c, 3, 3, padding=1) for c in chans)

    def forward(self, x: Tensor, train: bool = False) -> Tensor:
        """[N, C, h, w] -> [N, 3, 2^k h, 2^k w] in (0, 1) (``train``: :func:`floored_sigmoid`'s gradient)."""
        rgb = self.to_rgb[0](x)
        for up, to_rgb in zip(self.ups, self.to_rgb[1:]):
            x = up(x)
            rgb = F.interpolate(rgb, scale_factor=2.0, mode="bilinear", align_corners=False) + to_rgb(x)
        return floored_sigmoid(rgb, train)


class PoseDecoder(nn.Module):
    """A camera vector [N, 16] -> rgb [N, 3, 2^k h0, 2^k w0]: the "pose -> image" network.

    The camera vector is frequency-encoded (``pose_freqs`` octaves, input included), an MLP
    (``mlp_layers`` x ``code_dim``) makes a code, a linear layer spreads it over a ``channels`` x
    h0 x w0 seed, and k stages of (2x upsampling, 3x3 residual block) with halving channels decode
    it (:class:`RgbSkipUpsampler` adds an RGB output at every scale)."""

    def __init__(self, h0: int, w0: int, stages: int, channels: int, code_dim: int, mlp_layers: int, pose_freqs: int, upsampler: str):
        super().__init__()
        self.h0, self.w0, self.channels = h0, w0, channels
        self.encoding = FrequencyEncoding(pose_freqs)
        layers: list[nn.Module] = []
        d = self.encoding.out_dim(CAMERA_VECTOR_DIM)
        for _ in range(mlp_layers):
            layers += [nn.Linear(d, code_dim), nn.ReLU()]
            d = code_dim
        self.mlp = nn.Sequential(*layers)
        self.code_dim = d
        self.seed = nn.Linear(d, channels * h0 * w0)
        self.decoder = RgbSkipUpsampler(channels, stages, upsampler)

    def code(self, camvec: Tensor) -> Tensor:
        """[N, 16] -> [N, code_dim] the pose code (shared with a NeRF branch in the shared-backbone student)."""
        return self.mlp(self.encoding(camvec))

    def decode(self, code: Tensor, train: bool = False) -> Tensor:
        """[N, code_dim] -> [N, 3, 2^k h0, 2^k w0] in (0, 1)."""
        x = torch.relu(self.seed(code)).reshape(-1, self.channels, self.h0, self.w0)
        return self.decoder(x, train)


class ImageStudent(Method):
    """Base of the image-space students (see the module docstring). Subclasses set
    ``self.config`` (with ``height``, ``width``, ``lr``, ``lr_decay_steps``) and implement
    :meth:`render_views`."""

    image_space = True

    def __init__(self, aabb: Tensor):
        super().__init__()
        aabb = torch.as_tensor(aabb, dtype=torch.float32).reshape(2, 3)
        self.register_buffer("centre", 0.5 * (aabb[0] + aabb[1]), persistent=False)
        self.scale = max(0.5 * float((aabb[1] - aabb[0]).max()), 1e-6)

    @abstractmethod
    def render_views(self, cameras: Cameras, train: bool = False) -> Tensor:
        """N cameras of one size -> rgb [N, H, W, 3] in [0, 1] (float32)."""
        ...

    def camera_vectors(self, cameras: Cameras) -> Tensor:
        """[N, 16] (:func:`camera_vector` about the scene box's centre and half-size)."""
        return camera_vector(cameras, self.centre, self.scale)

    def image_loss(self, cameras: Cameras, images: Tensor) -> tuple[Tensor, dict[str, float]]:
        """Mean squared error of ``render_views(cameras, train=True)`` against ``images`` [N, H, W, 3]."""
        mse = torch.mean((self.render_views(cameras, train=True) - images) ** 2)
        return mse, {"mse": mse.item()}

    def forward(self, rays: RayBundle, background: Tensor, train: bool = False) -> dict:
        raise TurboNerfError(f"{type(self).__name__} renders whole images from cameras, not single rays (use render_views)")

    def loss(self, outputs: dict, target: Tensor):
        mse = torch.mean((outputs["rgb"] - target) ** 2)
        return mse, {"mse": mse.item()}

    def samples_per_ray(self) -> float:
        """Network evaluations per output pixel that sample 3D space: none for a pure image
        network (the hybrid student overrides it)."""
        return 0.0

    def flops_per_frame(self, height: int | None = None, width: int | None = None) -> float:
        """FLOPs of one H x W frame (default: the training size), counted by torch's
        ``FlopCounterMode`` (matmuls and convolutions, a multiply-add = 2 FLOPs), batch 1."""
        from torch.utils.flop_counter import FlopCounterMode

        h, w = height or self.config.height, width or self.config.width
        cam = example_camera(h, w, self.centre, self.scale)
        counter = FlopCounterMode(display=False)
        with torch.no_grad(), counter:
            self.render_views(cam.to(self.centre.device))
        return float(counter.get_total_flops())

    def flops_per_ray(self) -> float:
        """FLOPs per output pixel at the training size (frame FLOPs / pixels; see :meth:`flops_per_frame`)."""
        return self.flops_per_frame() / (self.config.height * self.config.width)

    def make_optimizer(self):
        c = self.config
        return adam(self.parameters(), c.lr), lambda step: 0.1 ** (step / c.lr_decay_steps)


def example_camera(height: int, width: int, centre: Tensor, scale: float) -> Cameras:
    """A camera at 2 ``scale`` from ``centre`` looking at it (FLOP counts and latency timings)."""
    c2w = torch.eye(4)[:3].clone()
    c2w[:, 3] = centre.cpu().float() + torch.tensor([0.0, 0.0, 2.0 * scale])
    f = torch.tensor([1.2 * width])
    return Cameras(c2w[None], f, f.clone(), torch.tensor([width / 2.0]), torch.tensor([height / 2.0]), width, height)
