"""Shared parser helpers: decoding, compositing, area downscaling, JSON errors."""

from __future__ import annotations

from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from turbonerf.data.images import (
    area_downscale,
    composite,
    image_header,
    load_image,
    load_images,
    load_json,
    read_image,
    resolve_image_path,
)
from turbonerf.errors import TurboNerfError


def test_area_downscale_matches_torch_area() -> None:
    img = np.random.default_rng(0).random((24, 32, 3), dtype=np.float32)
    ours = area_downscale(img, 4)
    ref = F.interpolate(torch.from_numpy(img).permute(2, 0, 1)[None], size=(6, 8), mode="area")[0].permute(1, 2, 0)
    assert np.allclose(ours, ref.numpy(), atol=1e-6)


def test_area_downscale_crops_partial_blocks() -> None:
    img = np.random.default_rng(1).random((10, 11, 4), dtype=np.float32)
    out = area_downscale(img, 3)
    assert out.shape == (3, 3, 4)
    assert np.allclose(out[2, 2], img[6:9, 6:9].mean((0, 1)), atol=1e-6)


def test_rgba_composited_before_downscale(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    rgba = rng.integers(0, 256, (16, 16, 4), dtype=np.uint8)
    iio.imwrite(tmp_path / "a.png", rgba)
    for bg in ((1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (0.2, 0.5, 0.9)):
        expected = area_downscale(composite(rgba / 255.0, bg), 4) * 255
        got = load_image(tmp_path / "a.png", bg, downscale=4)
        assert np.abs(got - expected).max() <= 0.5 + 1e-4


def test_grayscale_and_header(tmp_path: Path) -> None:
    gray = np.arange(48, dtype=np.uint8).reshape(6, 8)
    iio.imwrite(tmp_path / "g.png", gray)
    assert image_header(tmp_path / "g.png") == (8, 6, False)
    img = read_image(tmp_path / "g.png")
    assert img.shape == (6, 8, 3) and np.allclose(img[..., 0], gray / 255.0)
    iio.imwrite(tmp_path / "ga.png", np.stack([gray, np.full_like(gray, 255)], -1))
    assert image_header(tmp_path / "ga.png") == (8, 6, True)
    assert (load_image(tmp_path / "ga.png")[..., 1] == gray).all()


def test_load_images_parallel_and_size_check(tmp_path: Path) -> None:
    paths = []
    for i in range(5):
        paths.append(tmp_path / f"{i}.png")
        iio.imwrite(paths[-1], np.full((8, 6, 3), 10 * i, np.uint8))
    out = load_images(paths, (0, 0, 0), workers=2)
    assert out.shape == (5, 8, 6, 3) and out[:, 0, 0, 0].tolist() == [0, 10, 20, 30, 40]
    iio.imwrite(paths[3], np.zeros((6, 8, 3), np.uint8))
    with pytest.raises(TurboNerfError, match=r"3\.png.*8x6.*6x8"):
        load_images(paths, (0, 0, 0), workers=2)


def test_resolve_image_path(tmp_path: Path) -> None:
    (tmp_path / "r_0.png").write_bytes(b"")
    (tmp_path / "x.jpg").write_bytes(b"")
    assert resolve_image_path(tmp_path, "./r_0") == tmp_path / "r_0.png"
    assert resolve_image_path(tmp_path, "r_0.png") == tmp_path / "r_0.png"
    assert resolve_image_path(tmp_path, "x") == tmp_path / "x.jpg"
    assert resolve_image_path(tmp_path, "missing").name == "missing.png"


def test_load_json_errors(tmp_path: Path) -> None:
    with pytest.raises(TurboNerfError, match="nope.json: file not found"):
        load_json(tmp_path / "nope.json")
    (tmp_path / "bad.json").write_text("{,}")
    with pytest.raises(TurboNerfError, match="bad.json: invalid JSON"):
        load_json(tmp_path / "bad.json")
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(TurboNerfError, match="list.json: invalid JSON: expected an object"):
        load_json(tmp_path / "list.json")
