"""How much of an image's error is a checkerboard: the share of the error's spectral energy at
the frequencies an upsampler of total stride s leaves its artifacts on.

A 2D upsampler that multiplies the resolution by s (e.g. three stride-2 transposed convolutions:
s = 8) repeats its kernel every s output pixels, and uneven kernel overlap leaves a pattern with
period s (and its divisors) along rows and columns (Odena et al., "Deconvolution and Checkerboard
Artifacts", 2016). In the 2D Fourier transform of the error (prediction - target, averaged over
the colour channels) such a pattern puts its energy on the lattice of frequencies (k_y H/s,
k_x W/s) for k = 0..s-1 in each axis. The metric is the energy on that lattice (DC excluded)
over all non-DC energy:

    share = sum_{lattice \\ DC} |E(f)|^2 / sum_{f != DC} |E(f)|^2

For white noise it is about (s^2 - 1) / (H W - 1) (:func:`white_noise_share`), for a pure
period-2 checkerboard 1, for a smooth error close to 0. When H or W is not a multiple of s the
lattice is rounded to the nearest frequency bins.
"""

from __future__ import annotations

import numpy as np
from torch import Tensor


def lattice_mask(height: int, width: int, stride: int) -> np.ndarray:
    """bool [H, W]: the FFT bins of frequencies k H / stride (rows) x k W / stride (columns),
    k = 0..stride-1, without the DC bin."""
    rows = {int(round(k * height / stride)) % height for k in range(stride)}
    cols = {int(round(k * width / stride)) % width for k in range(stride)}
    mask = np.zeros((height, width), dtype=bool)
    mask[np.ix_(sorted(rows), sorted(cols))] = True
    mask[0, 0] = False
    return mask


def checkerboard_share(pred: Tensor | np.ndarray, target: Tensor | np.ndarray, stride: int) -> float:
    """pred, target: [H, W, 3] (or [H, W]) in [0, 1]. The share of the error's non-DC spectral
    energy at the stride's lattice (see the module docstring); 0 for an error without non-DC energy."""
    err = np.asarray(pred, dtype=np.float64) - np.asarray(target, dtype=np.float64)
    if err.ndim == 3:
        err = err.mean(axis=-1)
    power = np.abs(np.fft.fft2(err)) ** 2
    power[0, 0] = 0.0
    total = power.sum()
    if total <= 0:
        return 0.0
    return float(power[lattice_mask(*err.shape, stride)].sum() / total)


def white_noise_share(height: int, width: int, stride: int) -> float:
    """The expected share for an error without structure: the lattice's fraction of the non-DC bins."""
    return float(lattice_mask(height, width, stride).sum() / (height * width - 1))


__all__ = ["checkerboard_share", "lattice_mask", "white_noise_share"]
