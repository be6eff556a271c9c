"""Image quality metrics: PSNR and SSIM (pure torch); LPIPS is in :mod:`turbonerf.eval.lpips`.

All functions take images as [H, W, C] (or [H, W]) float tensors with values in [0, 1]
and return plain Python floats, ready for ``results.json``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

def _as_hwc(img: Tensor, name: str) -> Tensor:
    """[H, W, C] or [H, W] tensor (or array) -> float64 [H, W, C]."""
    img = torch.as_tensor(img).detach()
    if img.ndim == 2:
        img = img[..., None]
    if img.ndim != 3:
        raise ValueError(f"{name}: expected an [H, W, C] or [H, W] image, got shape {tuple(img.shape)}")
    return img.to(torch.float64)


def _check_pair(pred: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    pred, target = _as_hwc(pred, "pred"), _as_hwc(target, "target").to(pred.device)
    if pred.shape != target.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")
    return pred, target


def psnr(pred: Tensor, target: Tensor) -> float:
    """Peak signal-to-noise ratio in dB for images in [0, 1] (data range 1).

    Args:
        pred, target: [H, W, 3] (or [H, W]) float tensors in [0, 1].
    Returns:
        -10 log10(MSE); ``inf`` for identical images.
    """
    pred, target = _check_pair(pred, target)
    mse = torch.mean((pred - target) ** 2).item()
    return math.inf if mse == 0.0 else -10.0 * math.log10(mse)


def gaussian_kernel1d(sigma: float = 1.5, radius: int = 5, dtype=torch.float64, device=None) -> Tensor:
    """Normalised 1D Gaussian taps [2 * radius + 1] (scipy.ndimage's kernel)."""
    x = torch.arange(-radius, radius + 1, dtype=dtype, device=device)
    w = torch.exp(-0.5 * (x / sigma) ** 2)
    return w / w.sum()


def ssim(
    pred: Tensor,
    target: Tensor,
    win_size: int = 11,
    sigma: float = 1.5,
    k1: float = 0.01,
    k2: float = 0.03,
    data_range: float = 1.0,
) -> float:
    """Structural similarity (Wang et al. 2004) with a Gaussian window.

    Matches ``skimage.metrics.structural_similarity(pred, target, gaussian_weights=True, sigma=1.5,
    use_sample_covariance=False, channel_axis=-1, data_range=1.0)``: local statistics come from a
    separable depthwise Gaussian filter evaluated only where the window fits in the image (the
    "valid" region skimage keeps after cropping), and the SSIM map is averaged over pixels and channels.

    Args:
        pred, target: [H, W, C] (or [H, W]) float tensors in [0, 1]; H, W >= ``win_size``.
        win_size: odd window width (11 <-> sigma 1.5 with skimage's truncate of 3.5).
    Returns:
        mean SSIM, 1.0 for identical images.
    """
    pred, target = _check_pair(pred, target)
    h, w, c = pred.shape
    if win_size % 2 != 1 or h < win_size or w < win_size:
        raise ValueError(f"ssim needs an odd window no larger than the image; got {win_size} for {h}x{w}")
    # Filtering runs in float32 (float64 convolutions are ~8x slower on a CPU); subtracting each
    # channel's mean first keeps the variances free of cancellation error, so the result still
    # agrees with skimage's float64 to ~1e-6.
    x = pred.permute(2, 0, 1)  # [C, H, W]
    y = target.permute(2, 0, 1)
    mx = x.mean(dim=(1, 2), keepdim=True)
    my = y.mean(dim=(1, 2), keepdim=True)
    xc = (x - mx).to(torch.float32)
    yc = (y - my).to(torch.float32)
    # Five statistics per channel as the channels of one depthwise (grouped) convolution: [1, 5C, H, W].
    stats = torch.cat([xc, yc, xc * xc, yc * yc, xc * yc]).unsqueeze(0)
    g = gaussian_kernel1d(sigma, win_size // 2, dtype=torch.float32, device=stats.device)
    k = 5 * c
    filt = F.conv2d(stats, g.view(1, 1, -1, 1).expand(k, 1, -1, 1).contiguous(), groups=k)  # valid, along H
    filt = F.conv2d(filt, g.view(1, 1, 1, -1).expand(k, 1, 1, -1).contiguous(), groups=k)  # then along W
    fx, fy, fxx, fyy, fxy = filt.to(torch.float64).reshape(5, c, h - win_size + 1, w - win_size + 1)
    ux, uy = fx + mx, fy + my
    vx = fxx - fx * fx
    vy = fyy - fy * fy
    vxy = fxy - fx * fy
    c1 = (k1 * data_range) ** 2
    c2 = (k2 * data_range) ** 2
    num = (2 * ux * uy + c1) * (2 * vxy + c2)
    den = (ux * ux + uy * uy + c1) * (vx + vy + c2)
    return (num / den).mean().item()
