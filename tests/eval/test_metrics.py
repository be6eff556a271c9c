"""PSNR / SSIM / LPIPS metrics."""

import math

import pytest
import torch
from skimage.metrics import structural_similarity

from turbonerf.eval.metrics import psnr, ssim


def _skimage_ssim(a: torch.Tensor, b: torch.Tensor) -> float:
    return structural_similarity(
        a.numpy(), b.numpy(), gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
        channel_axis=-1, data_range=1.0,
    )


def _smooth(gen: torch.Generator, h: int, w: int) -> torch.Tensor:
    """A smooth colourful image [H, W, 3] in [0, 1]."""
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    phase = torch.rand(3, generator=gen) * 6.28
    freq = 1 + 4 * torch.rand(3, generator=gen)
    chans = [0.5 + 0.5 * torch.sin(freq[c] * (3 * xx + 2 * yy) + phase[c]) * torch.cos(freq[c] * yy) for c in range(3)]
    return torch.stack(chans, -1)


def test_psnr_known_mse():
    target = torch.full((16, 20, 3), 0.5)
    assert psnr(target + 0.1, target) == pytest.approx(20.0, abs=1e-4)
    assert psnr(target + 0.01, target) == pytest.approx(40.0, abs=1e-3)
    assert math.isinf(psnr(target, target))


def test_ssim_identical_is_one():
    img = torch.rand(32, 40, 3, generator=torch.Generator().manual_seed(0))
    assert ssim(img, img) == pytest.approx(1.0, abs=1e-9)


def _pairs():
    gen = torch.Generator().manual_seed(1)
    h, w = 64, 80
    rand_a, rand_b = torch.rand(h, w, 3, generator=gen), torch.rand(h, w, 3, generator=gen)
    smooth = _smooth(gen, h, w)
    noisy = (smooth + 0.05 * torch.randn(h, w, 3, generator=gen)).clamp(0, 1)
    very_noisy = (smooth + 0.3 * torch.randn(h, w, 3, generator=gen)).clamp(0, 1)
    shifted = torch.roll(smooth, shifts=(2, -3), dims=(0, 1))
    dark = smooth * 0.3
    flat = torch.full((h, w, 3), 0.9)
    near_flat = (flat + 1e-3 * torch.randn(h, w, 3, generator=gen), flat + 1e-3 * torch.randn(h, w, 3, generator=gen))
    return {
        "random": (rand_a, rand_b),
        "smooth_noisy": (noisy, smooth),
        "smooth_very_noisy": (very_noisy, smooth),
        "shifted": (shifted, smooth),
        "dark": (dark, smooth),
        "near_flat": near_flat,
        "odd_size": (noisy[:23, :37], smooth[:23, :37]),
        "grey": (noisy[..., 0], smooth[..., 0]),
    }


@pytest.mark.parametrize("name", list(_pairs()))
def test_ssim_matches_skimage(name):
    a, b = _pairs()[name]
    if a.ndim == 2:
        ref = structural_similarity(
            a.numpy(), b.numpy(), gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1.0
        )
    else:
        ref = _skimage_ssim(a, b)
    assert ssim(a, b) == pytest.approx(ref, abs=1e-3)
    assert ssim(a.to(torch.float32), b.to(torch.float32)) == pytest.approx(ref, abs=1e-3)


def test_ssim_rejects_tiny_or_mismatched_images():
    with pytest.raises(ValueError):
        ssim(torch.rand(8, 8, 3), torch.rand(8, 8, 3))
    with pytest.raises(ValueError):
        ssim(torch.rand(16, 16, 3), torch.rand(16, 17, 3))
