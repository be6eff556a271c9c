"""Real spherical harmonics: known values, the addition theorem, orthonormality."""

import math

import pytest
import torch

from turbonerf.encodings.sh import MAX_SH_DEGREE, eval_sh, sh_basis


@pytest.mark.parametrize("degree", range(1, MAX_SH_DEGREE + 1))
def test_shapes_and_dtype(degree):
    d = torch.nn.functional.normalize(torch.randn(5, 7, 3, dtype=torch.float64), dim=-1)
    out = sh_basis(d, degree)
    assert out.shape == (5, 7, degree**2) and out.dtype == torch.float64


def test_known_values():
    z = sh_basis(torch.tensor([[0.0, 0.0, 1.0]]), 4)[0]
    x = sh_basis(torch.tensor([[1.0, 0.0, 0.0]]), 4)[0]
    y00 = 0.5 / math.sqrt(math.pi)
    y10 = math.sqrt(3.0 / (4.0 * math.pi))
    assert z[0] == pytest.approx(y00)
    assert z[2] == pytest.approx(y10) and z[1] == 0.0 and z[3] == 0.0
    assert z[6] == pytest.approx(math.sqrt(5.0 / (16.0 * math.pi)) * 2.0)  # Y_2^0 = c (3 z^2 - 1)
    assert z[12] == pytest.approx(math.sqrt(7.0 / (16.0 * math.pi)) * 2.0)  # Y_3^0 = c (5 z^3 - 3 z)
    assert x[3] == pytest.approx(-y10)  # Condon-Shortley sign, as in PlenOctrees
    assert x[8] == pytest.approx(0.25 * math.sqrt(15.0 / math.pi))  # Y_2^2 = c (x^2 - y^2)
    assert x[6] == pytest.approx(-math.sqrt(5.0 / (16.0 * math.pi)))


def test_addition_theorem_every_band():
    # sum_m Y_lm(d)^2 = (2l + 1) / (4 pi) for every unit direction d
    d = torch.nn.functional.normalize(torch.randn(1000, 3, dtype=torch.float64), dim=-1)
    b = sh_basis(d, MAX_SH_DEGREE)
    for l in range(MAX_SH_DEGREE):
        band = b[:, l * l : (l + 1) ** 2].pow(2).sum(-1)
        torch.testing.assert_close(band, torch.full_like(band, (2 * l + 1) / (4 * math.pi)))


def test_orthonormal_by_monte_carlo():
    g = torch.Generator().manual_seed(0)
    d = torch.nn.functional.normalize(torch.randn(400_000, 3, generator=g, dtype=torch.float64), dim=-1)
    b = sh_basis(d, MAX_SH_DEGREE)
    gram = 4 * math.pi * (b.T @ b) / len(d)
    torch.testing.assert_close(gram, torch.eye(b.shape[1], dtype=torch.float64), rtol=0, atol=0.03)


def test_eval_sh_is_the_expansion():
    d = torch.nn.functional.normalize(torch.randn(10, 3), dim=-1)
    coeffs = torch.randn(10, 3, 9)
    expect = (coeffs * sh_basis(d, 3)[:, None, :]).sum(-1)
    torch.testing.assert_close(eval_sh(coeffs, d), expect)
    with pytest.raises(ValueError):
        eval_sh(torch.randn(10, 3, 8), d)
    with pytest.raises(ValueError):
        sh_basis(d, 6)
