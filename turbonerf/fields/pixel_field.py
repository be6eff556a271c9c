"""pixelNeRF's image-conditioned field (Yu et al., CVPR 2021): an image encoder, the projection of
sample points into source views, the bilinear feature lookup there, and the residual MLP that
averages over source views after a few blocks.

Shapes: B scenes, S source views per scene, N points per scene, C feature channels, images
[B * S, 3, H, W] in [0, 1], feature maps [B * S, C, Hf, Wf] covering the same image area.
Cameras are OpenGL (:mod:`turbonerf.cameras`): a point at camera coordinates (x, y, z) lies at
depth -z and projects to u = fx x / -z + cx, v = -fy y / -z + cy (pixel (i, j) covers
[i, i + 1) x [j, j + 1)).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from turbonerf.encodings.frequency import FrequencyEncoding
from turbonerf.errors import TurboNerfError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class SourceViews:
    """The encoded source views of B scenes (S each).

    Attributes:
        features: [B * S, C, Hf, Wf] feature maps (scene-major: scene b's views are rows b S .. b S + S - 1).
        c2w: [B, S, 3, 4] OpenGL camera-to-world.
        focal: [B, S, 2] (fx, fy) in pixels; centre: [B, S, 2] (cx, cy) in pixels.
        width, height: the source images' size in pixels.
    """

    features: Tensor
    c2w: Tensor
    focal: Tensor
    centre: Tensor
    width: int
    height: int

    @property
    def n_scenes(self) -> int:
        return self.c2w.shape[0]

    @property
    def n_views(self) -> int:
        return self.c2w.shape[1]


# --------------------------------------------------------------------------------------------
# projection and lookup (stateless)
# --------------------------------------------------------------------------------------------


def world_to_views(points: Tensor, c2w: Tensor) -> Tensor:
    """points [B, N, 3] world -> [B, S, N, 3] in each source camera's frame (R^T (x - t))."""
    rel = points[:, None, :, :] - c2w[:, :, None, :3, 3]  # [B, S, N, 3]
    return rel @ c2w[:, :, :3, :3]  # row vectors: (R^T rel^T)^T = rel R


def project_to_pixels(local: Tensor, focal: Tensor, centre: Tensor) -> Tensor:
    """Camera-frame points [B, S, N, 3] -> pixel coordinates (u, v) [B, S, N, 2] (same formula as
    :func:`turbonerf.cameras.project_points`; points at depth <= 0 give meaningless pixels)."""
    depth = (-local[..., 2]).clamp_min(1e-6)
    u = focal[:, :, None, 0] * local[..., 0] / depth + centre[:, :, None, 0]
    v = -focal[:, :, None, 1] * local[..., 1] / depth + centre[:, :, None, 1]
    return torch.stack([u, v], dim=-1)


def sample_features(features: Tensor, uv: Tensor, width: int, height: int) -> Tensor:
    """Bilinear lookup (border padding) of feature maps [B * S, C, Hf, Wf] at pixel coordinates
    uv [B, S, N, 2] of the W x H source images -> [B, S, N, C]. The map covers the image area, so
    pixel coordinate u maps to 2 u / W - 1 with ``align_corners=False`` at any map resolution."""
    b, s, n, _ = uv.shape
    scale = torch.tensor([2.0 / width, 2.0 / height], device=uv.device, dtype=uv.dtype)
    grid = (uv * scale - 1.0).reshape(b * s, n, 1, 2)
    out = F.grid_sample(features, grid.to(features.dtype), mode="bilinear", padding_mode="border", align_corners=False)
    return out[..., 0].permute(0, 2, 1).reshape(b, s, n, -1)


# --------------------------------------------------------------------------------------------
# encoders
# --------------------------------------------------------------------------------------------


class BasicBlock(nn.Module):
    """ResNet basic block (two 3x3 convs, identity or 1x1 shortcut); ``norm`` builds a norm layer."""

    def __init__(self, c_in: int, c_out: int, stride: int, norm):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = norm(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = norm(c_out)
        self.downsample = None
        if stride != 1 or c_in != c_out:
            self.downsample = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), norm(c_out))

    def forward(self, x: Tensor) -> Tensor:
        y = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
        return F.relu(y + (x if self.downsample is None else self.downsample(x)))


def group_norm(c: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(8, c), c)


def pyramid(maps: list[Tensor], size: tuple[int, int]) -> Tensor:
    """Feature maps of several resolutions, bilinearly resized to ``size`` and concatenated on channels."""
    return torch.cat([F.interpolate(m, size=size, mode="bilinear", align_corners=False) if m.shape[-2:] != size else m
                      for m in maps], dim=1)


class SmallEncoder(nn.Module):
    """A ResNet-like pyramid sized for a CPU: a stride-2 stem, then one basic block per stage
    (stage k at stride 2^(k+1)), every stage's output resized to H/2 and concatenated
    (pixelNeRF's pyramid, with GroupNorm so that batches of a few images train well).

    Args:
        widths: channels of the stem and of each stage; the feature has sum(widths) channels.
    """

    def __init__(self, widths: tuple[int, ...]):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, widths[0], 5, 2, 2, bias=False), group_norm(widths[0]), nn.ReLU())
        stages, c = [], widths[0]
        for i, w in enumerate(widths[1:]):
            stages.append(BasicBlock(c, w, 1 if i == 0 else 2, group_norm))
            c = w
        self.stages = nn.ModuleList(stages)
        self.out_channels = sum(widths)

    def forward(self, images: Tensor) -> Tensor:
        """images [M, 3, H, W] in [0, 1] -> [M, C, H/2, W/2]."""
        x = self.stem((images - 0.5) * 2.0)
        maps = [x]
        for stage in self.stages:
            x = stage(x)
            maps.append(x)
        return pyramid(maps, maps[0].shape[-2:])


class ResNet34Encoder(nn.Module):
    """pixelNeRF's encoder: ResNet-34's conv1 (after BN + ReLU) and layer1..3, each resized to H/2
    and concatenated (64 + 64 + 128 + 256 = 512 channels). Parameter names follow torchvision's
    ``resnet34`` state dict, so ImageNet weights load from a local safetensors file
    (:meth:`load_weights`). BatchNorm layers use their running statistics (frozen, as in
    pixelNeRF's pretrained setting)."""

    LAYERS = ((64, 3, 1), (128, 4, 2), (256, 6, 2))

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        c = 64
        for i, (w, n, stride) in enumerate(self.LAYERS):
            blocks = [BasicBlock(c, w, stride, nn.BatchNorm2d)] + [BasicBlock(w, w, 1, nn.BatchNorm2d) for _ in range(n - 1)]
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
            c = w
        self.out_channels = 64 + 64 + 128 + 256
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def train(self, mode: bool = True):
        super().train(mode)
        for m in self.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.eval()
        return self

    def forward(self, images: Tensor) -> Tensor:
        """images [M, 3, H, W] in [0, 1] -> [M, 512, H/2, W/2]."""
        x = F.relu(self.bn1(self.conv1((images - self.mean) / self.std)))
        maps = [x]
        x = F.max_pool2d(x, 3, 2, 1)
        for name in ("layer1", "layer2", "layer3"):
            x = getattr(self, name)(x)
            maps.append(x)
        return pyramid(maps, maps[0].shape[-2:])

    def load_weights(self, path: Path) -> int:
        """Load torchvision-named ResNet-34 tensors (``conv1.weight``, ``layer1.0.bn1.running_mean``,
        ...; ``layer4`` and ``fc`` are ignored) from a safetensors file. Returns tensors loaded."""
        from safetensors.torch import load_file

        path = Path(path)
        if not path.is_file():
            raise TurboNerfError("encoder weights not found", path)
        try:
            tensors = load_file(str(path))
        except Exception as err:  # noqa: BLE001 - safetensors raises several types
            raise TurboNerfError(f"cannot read encoder weights ({err})", path) from None
        own = self.state_dict()
        wanted = {k: v for k, v in tensors.items() if k in own}
        missing = [k for k in own if k not in wanted and not k.endswith("num_batches_tracked")]
        if missing:
            raise TurboNerfError(f"not a ResNet-34 state dict: {len(missing)} tensors missing (e.g. {missing[0]})", path)
        for k, v in wanted.items():
            if v.shape != own[k].shape:
                raise TurboNerfError(f"tensor {k} has shape {tuple(v.shape)}, expected {tuple(own[k].shape)}", path)
        self.load_state_dict(wanted, strict=False)
        return len(wanted)


# --------------------------------------------------------------------------------------------
# the conditioned MLP
# --------------------------------------------------------------------------------------------


class ResBlock(nn.Module):
    """x + fc1(relu(fc0(relu(x)))) (pixelNeRF's ResnetBlockFC; fc1 starts at zero)."""

    def __init__(self, width: int):
        super().__init__()
        self.fc0 = nn.Linear(width, width)
        self.fc1 = nn.Linear(width, width)
        nn.init.zeros_(self.fc1.weight)
        nn.init.zeros_(self.fc1.bias)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.fc1(F.relu(self.fc0(F.relu(x))))


class PixelMLP(nn.Module):
    """pixelNeRF's ResnetFC: per source view, PE(point in the view's frame) and its viewing
    direction in that frame go in; the image feature is added (through its own linear map) before
    each of the first ``combine_at`` blocks; the views are averaged before block ``combine_at``;
    the remaining blocks and the output layer give (sigma, rgb).

    Args:
        feature_dim: C; pos_freqs: octaves of the positional encoding; width, n_blocks, combine_at.
    """

    def __init__(self, feature_dim: int, pos_freqs: int, width: int, n_blocks: int, combine_at: int):
        super().__init__()
        if not 0 < combine_at <= n_blocks:
            raise ValueError(f"combine_at must be in 1..n_blocks, got {combine_at}")
        self.pe = FrequencyEncoding(pos_freqs)
        self.lin_in = nn.Linear(self.pe.out_dim(3) + 3, width)
        self.lin_z = nn.ModuleList([nn.Linear(feature_dim, width) for _ in range(combine_at)])
        self.blocks = nn.ModuleList([ResBlock(width) for _ in range(n_blocks)])
        self.lin_out = nn.Linear(width, 4)
        self.combine_at = combine_at

    def forward(self, local: Tensor, dirs: Tensor, feats: Tensor) -> tuple[Tensor, Tensor]:
        """local, dirs: [B, S, N, 3] points and unit directions in each source view's frame;
        feats: [B, S, N, C]. Returns sigma [B, N] (softplus, > 0: a ReLU density can die for good on
        white-background data) and rgb [B, N, 3] in [0, 1]; both are
        invariant to the order of the S views (they are averaged)."""
        x = self.lin_in(torch.cat([self.pe(local), dirs], dim=-1))
        for i, block in enumerate(self.blocks):
            if i == self.combine_at:
                x = x.mean(dim=1)
            if i < self.combine_at:
                x = x + self.lin_z[i](feats)
            x = block(x)
        if self.combine_at == len(self.blocks):
            x = x.mean(dim=1)
        out = self.lin_out(F.relu(x)).float()
        return F.softplus(out[..., 0] - 1.0), torch.sigmoid(out[..., 1:])


def conditioned_field(mlp: PixelMLP, sources: SourceViews, points: Tensor, dirs: Tensor) -> tuple[Tensor, Tensor]:
    """(sigma [B, N], rgb [B, N, 3]) at world points [B, N, 3] seen along unit world directions
    [B, N, 3], conditioned on the source views."""
    local = world_to_views(points, sources.c2w)  # [B, S, N, 3]
    local_dirs = dirs[:, None, :, :] @ sources.c2w[:, :, :3, :3]
    uv = project_to_pixels(local, sources.focal, sources.centre)
    feats = sample_features(sources.features, uv, sources.width, sources.height)
    return mlp(local, local_dirs, feats.to(local.dtype))
