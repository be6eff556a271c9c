"""Mip-NeRF's frustum Gaussian and integrated positional encoding against Monte-Carlo estimates
over points drawn uniformly inside a conical frustum."""

import math

import pytest
import torch

from turbonerf.encodings.frequency import FrequencyEncoding
from turbonerf.encodings.ipe import conical_frustum_to_gaussian, frustum_moments, integrated_pos_enc, ipe_dim

ORIGIN = torch.tensor([0.3, -0.2, 0.1], dtype=torch.float64)
AXIS = torch.nn.functional.normalize(torch.tensor([0.6, -0.3, 0.75], dtype=torch.float64), dim=0)


def frustum_points(t0: float, t1: float, radius: float, n: int, seed: int = 0) -> torch.Tensor:
    """[n, 3] points uniform in volume inside the frustum [t0, t1] of the cone ORIGIN + t AXIS with
    radius ``radius`` * t: t has density ~ t^2, the cross-section is a uniform disc."""
    g = torch.Generator().manual_seed(seed)
    u, v, w = torch.rand(3, n, generator=g, dtype=torch.float64)
    t = (t0**3 + u * (t1**3 - t0**3)) ** (1.0 / 3.0)
    rho = radius * t * torch.sqrt(v)
    theta = 2.0 * math.pi * w
    e1 = torch.nn.functional.normalize(torch.linalg.cross(AXIS, torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)), dim=0)
    e2 = torch.linalg.cross(AXIS, e1)
    return ORIGIN + t[:, None] * AXIS + rho[:, None] * (torch.cos(theta)[:, None] * e1 + torch.sin(theta)[:, None] * e2)


def gaussian(t0: float, t1: float, radius: float):
    t = lambda x: torch.tensor([[x]], dtype=torch.float64)  # noqa: E731
    means, cov = conical_frustum_to_gaussian(ORIGIN[None], AXIS[None], torch.tensor([radius], dtype=torch.float64), t(t0), t(t1))
    return means[0, 0], cov[0, 0]


@pytest.mark.parametrize("t0,t1,radius", [(2.0, 2.5, 0.05), (0.5, 3.0, 0.2), (4.0, 4.01, 0.001)])
def test_frustum_mean_and_variance_match_monte_carlo(t0, t1, radius):
    n = 1_000_000
    pts = frustum_points(t0, t1, radius, n)
    mean, cov = gaussian(t0, t1, radius)
    mc_mean, mc_var = pts.mean(0), pts.var(0)
    # 5 standard errors: of a mean, sqrt(var / n); of a variance, about var * sqrt(2 / n) (the
    # fourth moment of these bounded distributions is below 3 var^2)
    assert torch.all((mean - mc_mean).abs() <= 5 * torch.sqrt(mc_var / n)), (mean, mc_mean)
    assert torch.all((cov - mc_var).abs() <= 5 * mc_var * math.sqrt(3.0 / n)), (cov, mc_var)


def test_frustum_moments_equal_the_direct_formulas():
    # the stable forms equal the textbook moments of t ~ t^2 on [t0, t1] (the official "unstable" path)
    t0, t1, r = torch.tensor(1.3, dtype=torch.float64), torch.tensor(2.1, dtype=torch.float64), 0.3
    t_mean, t_var, r_var = frustum_moments(t0, t1, torch.tensor(r, dtype=torch.float64))
    m1 = 3 * (t1**4 - t0**4) / (4 * (t1**3 - t0**3))
    m2 = 3 * (t1**5 - t0**5) / (5 * (t1**3 - t0**3))
    assert float(t_mean) == pytest.approx(float(m1), rel=1e-12)
    assert float(t_var) == pytest.approx(float(m2 - m1**2), rel=1e-9)
    assert float(r_var) == pytest.approx(r * r * float(m2) / 4, rel=1e-12)


def test_ipe_matches_monte_carlo_expectation_for_low_degrees():
    # frustum [2, 2.5], radius 0.05: axis std ~0.14, radial std ~0.06. For degrees 0..2 (scales
    # 1, 2, 4) the Gaussian approximation of E[sin] is within ~1e-3 (e.g. a uniform interval's
    # sinc factor vs exp(-k^2 var / 2)); 1e6 samples give a standard error <= 7e-4
    t0, t1, radius = 2.0, 2.5, 0.05
    pts = frustum_points(t0, t1, radius, 1_000_000, seed=1)
    mean, cov = gaussian(t0, t1, radius)
    deg = 3
    enc = integrated_pos_enc(mean[None], cov[None], 0, deg)[0]
    scales = 2.0 ** torch.arange(deg, dtype=torch.float64)
    y = (pts[:, None, :] * scales[:, None]).reshape(len(pts), -1)
    mc = torch.cat([torch.sin(y).mean(0), torch.cos(y).mean(0)])
    assert enc.shape == (ipe_dim(0, deg),) == (18,)
    assert torch.allclose(enc, mc, atol=5e-3), (enc - mc).abs().max()
    # the attenuation is what makes it match: the plain encoding of the mean misses by far more
    plain = FrequencyEncoding(deg, include_input=False)(mean[None].float())[0].double()
    assert (plain - mc).abs().max() > 0.05


def test_ipe_fades_high_frequencies_of_wide_frustums_and_is_the_plain_encoding_of_a_point():
    x = torch.tensor([[0.4, -1.2, 0.7]])
    pe = FrequencyEncoding(16)(x)[0, 3:]  # without the appended input
    assert torch.allclose(integrated_pos_enc(x, torch.zeros_like(x), 0, 16)[0], pe, atol=1e-5)
    narrow = integrated_pos_enc(x, torch.full_like(x, 1e-4), 0, 16)[0].reshape(2, 16, 3)
    wide = integrated_pos_enc(x, torch.full_like(x, 1e-2), 0, 16)[0].reshape(2, 16, 3)
    assert torch.allclose(narrow[:, :3], pe.reshape(2, 16, 3)[:, :3], atol=1e-3)  # low degrees barely change
    assert wide[:, 8:].abs().max() < 1e-6 and narrow[:, 6].abs().max() > 0.1  # 4^8 * 1e-2 / 2 >> 1


def test_cylinder_gaussian_matches_monte_carlo():
    from turbonerf.encodings.ipe import cylinder_to_gaussian

    g = torch.Generator().manual_seed(2)
    n, t0, t1, radius = 1_000_000, 1.0, 1.6, 0.1
    u, v, w = torch.rand(3, n, generator=g, dtype=torch.float64)
    t = t0 + u * (t1 - t0)
    rho, theta = radius * torch.sqrt(v), 2.0 * math.pi * w
    e1 = torch.nn.functional.normalize(torch.linalg.cross(AXIS, torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)), dim=0)
    e2 = torch.linalg.cross(AXIS, e1)
    pts = ORIGIN + t[:, None] * AXIS + rho[:, None] * (torch.cos(theta)[:, None] * e1 + torch.sin(theta)[:, None] * e2)
    tt = lambda x: torch.tensor([[x]], dtype=torch.float64)  # noqa: E731
    mean, cov = cylinder_to_gaussian(ORIGIN[None], AXIS[None], torch.tensor([radius], dtype=torch.float64), tt(t0), tt(t1))
    mc_mean, mc_var = pts.mean(0), pts.var(0)
    assert torch.all((mean[0, 0] - mc_mean).abs() <= 5 * torch.sqrt(mc_var / n))
    assert torch.all((cov[0, 0] - mc_var).abs() <= 5 * mc_var * math.sqrt(3.0 / n))
