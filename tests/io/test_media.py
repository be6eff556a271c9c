"""PNG, depth colourisation and video writers."""

import imageio.v3 as iio
import numpy as np
import pytest
import torch

from turbonerf.errors import TurboNerfError
from turbonerf.io.media import depth_to_png, save_png, write_video


def test_png_round_trip(tmp_path):
    img = torch.rand(17, 23, 3, generator=torch.Generator().manual_seed(0))
    out = save_png(tmp_path / "sub" / "img.png", img)
    back = iio.imread(out)
    assert back.shape == (17, 23, 3) and back.dtype == np.uint8
    assert np.abs(back.astype(np.float64) / 255.0 - img.numpy()).max() <= 0.5 / 255 + 1e-6
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["img.png"]  # no temporary left behind


def test_png_clamps_and_greyscale(tmp_path):
    img = np.array([[-1.0, 0.5], [2.0, np.nan]], dtype=np.float32)
    back = iio.imread(save_png(tmp_path / "g.png", img))
    assert back.tolist() == [[0, 128], [255, 0]]


def test_depth_to_png_black_where_transparent(tmp_path):
    depth = torch.linspace(1, 5, 20 * 30).reshape(20, 30)
    opacity = torch.ones(20, 30)
    opacity[:, :5] = 0.0
    rgb = depth_to_png(depth, opacity)
    assert rgb.shape == (20, 30, 3) and rgb.dtype == np.uint8
    assert (rgb[:, :5] == 0).all()
    assert rgb[:, 5:].max() > 0
    assert not np.array_equal(rgb[0, 10], rgb[-1, 10])  # depth varies -> colour varies
    save_png(tmp_path / "d.png", rgb)
    assert depth_to_png(np.full((4, 4), np.inf)).max() == 0  # nothing valid: all black, no crash


def test_video_writes_non_empty_file(tmp_path):
    frames = [np.full((31, 45, 3), i * 20, dtype=np.uint8) for i in range(8)]
    out = write_video(tmp_path / "v.mp4", frames, fps=10)
    assert out.suffix in (".mp4", ".gif")
    assert out.is_file() and out.stat().st_size > 0
    assert [p.name for p in tmp_path.iterdir()] == [out.name]


def test_video_falls_back_to_gif(tmp_path, monkeypatch):
    import turbonerf.io.media as media

    def broken(path, frames, fps):
        path.write_bytes(b"partial")
        raise RuntimeError("no ffmpeg")

    monkeypatch.setattr(media, "_write_mp4", broken)
    frames = [np.random.default_rng(i).random((20, 24, 3)) for i in range(4)]  # float frames are accepted
    out = write_video(tmp_path / "v.mp4", frames, fps=5)
    assert out == tmp_path / "v.gif"
    assert iio.imread(out).shape == (4, 20, 24, 3)
    assert [p.name for p in tmp_path.iterdir()] == ["v.gif"]  # the half-written mp4 is gone


def test_failed_write_leaves_previous_file(tmp_path, monkeypatch):
    target = tmp_path / "a.png"
    save_png(target, np.zeros((4, 4, 3)))
    before = target.read_bytes()

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(iio, "imwrite", boom)
    with pytest.raises(TurboNerfError, match="disk full"):
        save_png(target, np.ones((4, 4, 3)))
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["a.png"]
