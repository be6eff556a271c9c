"""LPIPS v0.1 (Zhang et al. 2018) in plain torch: AlexNet and VGG-16 backbones with linear heads.

Semantics of the official ``lpips`` package (``LPIPS(net=..., version="0.1")``, inputs in [-1, 1]):
  1. scaling layer: x <- (x - shift) / scale, shift = [-.030, -.088, -.188], scale = [.458, .448, .450];
  2. backbone features at five taps (AlexNet: relu1..relu5; VGG-16: relu1_2, relu2_2, relu3_3,
     relu4_3, relu5_3);
  3. each tap normalised to unit length over channels: f / (||f||_2 + 1e-10);
  4. squared difference, weighted over channels by a non-negative 1x1 linear head;
  5. mean over space, summed over the five taps.

Weights come from :mod:`turbonerf.eval.lpips_weights` (converted once, offline, to safetensors in
:func:`lpips_weights_dir`); nothing here downloads anything. Everything runs in float32 on the CPU.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from turbonerf.eval.lpips_weights import lpips_weights_dir, weights_file

__all__ = ["LpipsNet", "LpipsScorer", "build_lpips", "load_lpips", "lpips_weights_dir"]

SHIFT = (-0.030, -0.088, -0.188)
SCALE = (0.458, 0.448, 0.450)
EPS = 1e-10


@dataclass(frozen=True)
class BackboneSpec:
    """A plain conv/ReLU/max-pool stack.

    convs: (in, out, kernel, stride, padding) per conv, each followed by a ReLU.
    pool_before: {conv index: (kernel, stride)} max-pools applied before that conv.
    taps: conv indices whose ReLU output is an LPIPS feature (five of them).
    min_size: smallest image side the stack accepts.
    """

    convs: tuple[tuple[int, int, int, int, int], ...]
    pool_before: dict[int, tuple[int, int]]
    taps: tuple[int, ...]
    min_size: int


def _vgg16_convs() -> tuple[tuple[int, int, int, int, int], ...]:
    widths = [64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512]
    ins = [3] + widths[:-1]
    return tuple((i, o, 3, 1, 1) for i, o in zip(ins, widths))


SPECS: dict[str, BackboneSpec] = {
    # torchvision AlexNet ``features`` up to relu5 (the last max-pool is unused by LPIPS)
    "alexnet": BackboneSpec(
        convs=((3, 64, 11, 4, 2), (64, 192, 5, 1, 2), (192, 384, 3, 1, 1), (384, 256, 3, 1, 1), (256, 256, 3, 1, 1)),
        pool_before={1: (3, 2), 2: (3, 2)},
        taps=(0, 1, 2, 3, 4),
        min_size=31,
    ),
    # torchvision VGG-16 ``features`` up to relu5_3
    "vgg16": BackboneSpec(
        convs=_vgg16_convs(),
        pool_before={2: (2, 2), 4: (2, 2), 7: (2, 2), 10: (2, 2)},
        taps=(1, 3, 6, 9, 12),
        min_size=16,
    ),
}
NETS = {"alex": "alexnet", "vgg": "vgg16"}


class LpipsNet(nn.Module):
    """LPIPS distance network; parameter names match the converted safetensors files.

    Parameters:
        backbone.{i}.weight [out, in, k, k], backbone.{i}.bias [out]
        lin.{k}.weight [1, C_k, 1, 1] (non-negative, no bias)
    """

    def __init__(self, spec: BackboneSpec):
        super().__init__()
        self.spec = spec
        self.backbone = nn.ModuleList(nn.Conv2d(i, o, k, stride=s, padding=p) for i, o, k, s, p in spec.convs)
        self.lin = nn.ModuleList(nn.Conv2d(spec.convs[t][1], 1, 1, bias=False) for t in spec.taps)
        self.register_buffer("shift", torch.tensor(SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(SCALE).view(1, 3, 1, 1), persistent=False)

    def features(self, x: Tensor) -> list[Tensor]:
        """[N, 3, H, W] in [-1, 1] -> five ReLU maps [N, C_k, H_k, W_k]."""
        x = (x - self.shift) / self.scale
        taps = []
        for i, conv in enumerate(self.backbone):
            if i in self.spec.pool_before:
                k, s = self.spec.pool_before[i]
                x = F.max_pool2d(x, k, s)
            x = F.relu(conv(x))
            if i in self.spec.taps:
                taps.append(x)
        return taps

    def forward(self, x0: Tensor, x1: Tensor) -> Tensor:
        """x0, x1: [N, 3, H, W] in [-1, 1] -> LPIPS distance [N]."""
        f0, f1 = self.features(x0), self.features(x1)
        total = x0.new_zeros(x0.shape[0])
        for lin, a, b in zip(self.lin, f0, f1):
            diff = (unit_normalize(a) - unit_normalize(b)) ** 2  # [N, C, h, w]
            total = total + lin(diff).mean(dim=(1, 2, 3))  # [N, 1, h, w] -> [N]
        return total


def unit_normalize(feat: Tensor, eps: float = EPS) -> Tensor:
    """[N, C, H, W] -> same, divided by the channel-wise L2 norm (+ eps) at each pixel."""
    return feat / (feat.pow(2).sum(dim=1, keepdim=True).sqrt() + eps)


def build_lpips(net: str) -> LpipsNet:
    """An untrained LPIPS network: ``net`` is "alexnet" or "vgg16"."""
    return LpipsNet(SPECS[net])


def load_lpips(net: str, directory: Path | None = None) -> LpipsNet:
    """LPIPS network with weights from ``DIR/{net}.safetensors``, in eval mode, float32, CPU, frozen.

    Raises:
        FileNotFoundError: the weights file is missing.
        RuntimeError / ValueError: the file is unreadable or its tensors do not fit the network.
    """
    from safetensors.torch import load_file  # noqa: PLC0415

    path = weights_file(net, directory)
    if not path.is_file():
        raise FileNotFoundError(path)
    model = build_lpips(net)
    model.load_state_dict(load_file(str(path), device="cpu"), strict=True)
    model.eval().requires_grad_(False)
    return model


def _to_batch(img: Tensor, name: str) -> Tensor:
    """[H, W, 3] float in [0, 1] (tensor or array) -> [1, 3, H, W] float32 CPU in [-1, 1]."""
    img = torch.as_tensor(img).detach()
    if img.ndim != 3 or img.shape[-1] != 3:
        raise ValueError(f"{name}: expected an [H, W, 3] image, got shape {tuple(img.shape)}")
    img = img.to("cpu", torch.float32).clamp(0.0, 1.0)
    return img.permute(2, 0, 1).unsqueeze(0) * 2.0 - 1.0


class LpipsScorer:
    """LPIPS-Alex and LPIPS-VGG (v0.1) from the offline weights cache.

    Each network is loaded on its first use and kept for the life of this scorer. When it cannot
    be used (weights not installed, a broken file, an image too small for the backbone) the
    ``score_*`` methods return None and ``reason`` says why, in one line.

    Attributes:
        weights_dir: where ``alexnet.safetensors`` / ``vgg16.safetensors`` are read from.
        reason: None while LPIPS works (or has not been tried yet), else why a score was None.
    """

    def __init__(self, weights_dir: Path | None = None):
        self.weights_dir = Path(weights_dir) if weights_dir is not None else lpips_weights_dir()
        self.reason: str | None = None
        self._nets: dict[str, LpipsNet | None] = {}

    def _net(self, net: str) -> LpipsNet | None:
        """The loaded network ("alexnet" / "vgg16"), or None (with ``reason`` set); tried once."""
        if net not in self._nets:
            try:
                self._nets[net] = load_lpips(net, self.weights_dir)
            except FileNotFoundError:
                self._nets[net] = None
                self.reason = f"LPIPS weights not found in {self.weights_dir}; run `turbonerf setup-lpips`"
            except Exception as err:  # noqa: BLE001  (corrupt file, wrong shapes)
                self._nets[net] = None
                first = (str(err).strip().splitlines() or [""])[0]
                path = weights_file(net, self.weights_dir)
                self.reason = (f"{path}: unusable LPIPS weights ({type(err).__name__}: {first}); "
                               "run `turbonerf setup-lpips --force`")
        return self._nets[net]

    def available(self, net: str = "alex") -> bool:
        """True when the "alex" / "vgg" network can be used (loads it on first call)."""
        return self._net(NETS[net]) is not None

    @torch.no_grad()
    def _score(self, net: str, pred: Tensor, target: Tensor) -> float | None:
        model = self._net(net)
        if model is None:
            return None
        x0, x1 = _to_batch(pred, "pred"), _to_batch(target, "target")
        if x0.shape != x1.shape:
            raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")
        h, w = x0.shape[-2:]
        if min(h, w) < model.spec.min_size:
            self.reason = f"image {h}x{w} is smaller than the {model.spec.min_size}px LPIPS-{net} needs"
            return None
        return float(model(x0, x1).item())

    def score_alex(self, pred: Tensor, target: Tensor) -> float | None:
        """LPIPS-Alex v0.1 (lower is better) between [H, W, 3] images in [0, 1], or None."""
        return self._score("alexnet", pred, target)

    def score_vgg(self, pred: Tensor, target: Tensor) -> float | None:
        """LPIPS-VGG v0.1 (lower is better) between [H, W, 3] images in [0, 1], or None."""
        return self._score("vgg16", pred, target)
