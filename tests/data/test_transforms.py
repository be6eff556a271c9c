"""instant-ngp / nerfstudio transforms.json parser on tiny procedural scenes, and bad inputs."""

from __future__ import annotations

import dataclasses
import json
import math
import re
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import torch

from turbonerf.cameras import camera_rays, distort_opencv, undistort_opencv
from turbonerf.data.formats import load_scene, scene_info
from turbonerf.data.synthetic import write_tiny_transforms_scene
from turbonerf.errors import TurboNerfError

DISTORTION = (0.05, -0.01, 0.001, -0.002)


def edit_json(root: Path, fn) -> None:
    path = root / "transforms.json"
    data = json.loads(path.read_text())
    fn(data)
    path.write_text(json.dumps(data))


def _error(path: Path, **kwargs) -> str:
    with pytest.raises(TurboNerfError) as err:
        load_scene(path, **kwargs)
    return str(err.value)


@pytest.fixture
def basic(tmp_path: Path) -> Path:
    return write_tiny_transforms_scene(tmp_path / "basic", n_frames=10, size=(20, 16))


def test_basic_load(basic: Path) -> None:
    scene = load_scene(basic)
    assert scene.format == "transforms" and not scene.ndc and not scene.white_background
    train, test = scene.split("train"), scene.split("test")
    assert len(train) == 8 and len(test) == 2
    assert [p.name for p in test.paths] == ["frame_000.png", "frame_008.png"]  # sorted by file_path
    assert train.images.shape == (8, 16, 20, 3)
    cams = train.cameras
    assert (cams.width, cams.height) == (20, 16) and cams.distortion is None
    assert torch.allclose(cams.fx, torch.full((8,), 24.0)) and torch.allclose(cams.fy, torch.full((8,), 25.2))
    assert torch.allclose(cams.cx, torch.full((8,), 10.5)) and torch.allclose(cams.cy, torch.full((8,), 7.75))
    data = json.loads((basic / "transforms.json").read_text())
    by_name = {f["file_path"]: f["transform_matrix"] for f in data["frames"]}
    expected = torch.tensor([by_name[f"images/{p.name}"] for p in test.paths])[:, :3]
    assert torch.allclose(test.cameras.c2w, expected.float())
    assert (train.images[:, 0, 0] == 0).all()  # RGB images: black background
    # bounds: origin-centred box, far reaches the farthest corner from every camera
    assert scene.aabb.tolist() == [[-1.5] * 3, [1.5] * 3]
    centres = torch.cat([train.cameras.c2w[:, :, 3], test.cameras.c2w[:, :, 3]])
    corners = torch.tensor([[x, y, z] for x in (-1.5, 1.5) for y in (-1.5, 1.5) for z in (-1.5, 1.5)])
    assert scene.far == pytest.approx(torch.cdist(centres, corners).max().item(), rel=1e-5)
    assert 0 < scene.near < 1.0  # cameras at radius 4 around a unit sphere


def test_info_matches_load(basic: Path) -> None:
    info = scene_info(basic)
    scene = load_scene(basic, splits=("test",))
    assert info.format == "transforms" and info.splits == {"train": 8, "test": 2}
    assert (info.width, info.height) == (20, 16)
    assert [info.fx, info.fy, info.cx, info.cy] == pytest.approx([24.0, 25.2, 10.5, 7.75])
    assert (info.near, info.far) == (scene.near, scene.far)
    assert info.distortion is None and info.white_background is False
    assert info.aabb == scene.aabb.tolist()
    json.dumps(info.to_json())


def test_downscale(basic: Path) -> None:
    scene = load_scene(basic, downscale=2, splits=("train",))
    assert list(scene.splits) == ["train"]
    cams = scene.split("train").cameras
    assert scene.split("train").images.shape == (8, 8, 10, 3)
    assert (cams.width, cams.height) == (10, 8)
    assert torch.allclose(cams.fx, torch.full((8,), 12.0)) and torch.allclose(cams.cx, torch.full((8,), 5.25))


def test_per_frame_intrinsics(tmp_path: Path) -> None:
    root = write_tiny_transforms_scene(tmp_path / "pf", n_frames=10, size=16, per_frame_intrinsics=True)
    data = json.loads((root / "transforms.json").read_text())
    assert "fl_x" not in data and "fl_x" in data["frames"][0]
    scene = load_scene(root)
    by_name = {Path(f["file_path"]).name: f for f in data["frames"]}
    for split in scene.splits.values():
        for i, path in enumerate(split.paths):
            frame = by_name[path.name]
            for key, attr in (("fl_x", "fx"), ("fl_y", "fy"), ("cx", "cx"), ("cy", "cy")):
                assert getattr(split.cameras, attr)[i].item() == pytest.approx(frame[key], rel=1e-6)
    assert len(set(scene.split("train").cameras.fx.tolist())) == 8  # really per frame


def test_frame_keys_override_scene_keys(basic: Path) -> None:
    edit_json(basic, lambda d: [f.update(fl_x=30.0) for f in d["frames"] if f["file_path"].endswith("008.png")])
    test = load_scene(basic, splits=("test",)).split("test")
    assert test.cameras.fx.tolist() == [24.0, 30.0]


def test_camera_angle_only(tmp_path: Path) -> None:
    root = write_tiny_transforms_scene(tmp_path / "angle", n_frames=3, size=(20, 16), camera_angle_only=True)
    data = json.loads((root / "transforms.json").read_text())
    assert set(data) == {"camera_angle_x", "frames"}
    cams = load_scene(root).split("train").cameras
    assert torch.allclose(cams.fx, torch.full((2,), 24.0)) and torch.allclose(cams.fy, cams.fx)
    assert (cams.cx[0].item(), cams.cy[0].item()) == (10.0, 8.0)
    edit_json(root, lambda d: d.update(camera_angle_y=2 * math.atan(0.5 * 16 / 30.0)))
    assert load_scene(root).split("train").cameras.fy[0].item() == pytest.approx(30.0, rel=1e-5)


def test_alpha_images_on_white(tmp_path: Path) -> None:
    root = write_tiny_transforms_scene(tmp_path / "rgba", n_frames=4, alpha=True, aabb_scale=4)
    scene = load_scene(root)
    assert scene.white_background and scene_info(root).white_background
    assert (scene.split("train").images[:, 0, 0] == 255).all()
    assert scene.aabb.tolist() == [[-6.0] * 3, [6.0] * 3]
    assert scene_info(root).extra["aabb_scale"] == 4


def test_single_frame_is_train_only(tmp_path: Path) -> None:
    root = write_tiny_transforms_scene(tmp_path / "one", n_frames=1)
    scene = load_scene(root)
    assert list(scene.splits) == ["train"] and len(scene.split("train")) == 1
    assert scene_info(root).splits == {"train": 1, "test": 0}


def test_distortion(tmp_path: Path) -> None:
    root = write_tiny_transforms_scene(tmp_path / "dist", n_frames=4, size=(20, 16), distortion=DISTORTION)
    assert scene_info(root).distortion == pytest.approx(list(DISTORTION))
    cams = load_scene(root).split("train").cameras
    assert cams.distortion is not None and cams.distortion.shape == (3, 4)
    assert torch.allclose(cams.distortion, torch.tensor(DISTORTION).expand(3, 4))
    # rays with distortion differ from ideal pinhole rays, most at the image corners
    v, u = torch.meshgrid(torch.arange(16), torch.arange(20), indexing="ij")
    idx = torch.zeros(320, dtype=torch.long)
    _, d_dist = camera_rays(cams, idx, u.reshape(-1), v.reshape(-1))
    _, d_pin = camera_rays(dataclasses.replace(cams, distortion=None), idx, u.reshape(-1), v.reshape(-1))
    diff = (d_dist - d_pin).norm(dim=-1)
    assert diff.max() > 1e-3 and diff[0] > diff[8 * 20 + 10]
    # undistort then distort returns the original normalized coordinates
    xd = (u.reshape(-1) + 0.5 - cams.cx[0]) / cams.fx[0]
    yd = (v.reshape(-1) + 0.5 - cams.cy[0]) / cams.fy[0]
    dist = cams.distortion[idx]
    x, y = undistort_opencv(xd, yd, dist)
    xr, yr = distort_opencv(x, y, dist)
    assert torch.allclose(xr, xd, atol=1e-5) and torch.allclose(yr, yd, atol=1e-5)


def test_zero_distortion_is_none(basic: Path) -> None:
    edit_json(basic, lambda d: d.update(k1=0.0, k2=0.0, p1=0, p2=0))
    assert load_scene(basic, splits=("test",)).split("test").cameras.distortion is None


# ---------------------------------------------------------------------------- bad inputs


def test_size_disagrees_with_json(basic: Path) -> None:
    edit_json(basic, lambda d: d.update(w=24))
    msg = _error(basic)
    assert re.search(r"frame_00\d\.png: image is 20x16 but 24x16 was expected", msg)


def test_frames_of_different_sizes(basic: Path) -> None:
    def fn(d):
        d["frames"][0]["w"] = 40

    edit_json(basic, fn)
    msg = _error(basic)
    assert "transforms.json" in msg and "40x16" in msg and "20x16" in msg


def test_missing_image_skips_its_frame_with_one_warning(basic: Path, capsys) -> None:
    n = len(json.loads((basic / "transforms.json").read_text())["frames"])
    (basic / "images" / "frame_003.png").unlink()
    scene = load_scene(basic)
    assert sum(len(s) for s in scene.splits.values()) == n - 1
    err = capsys.readouterr().err
    assert "1 frame(s) skipped" in err and "frame_003" in err
    assert scene_info(basic).to_json()["skipped_frames"] == 1


def test_corrupt_image(basic: Path) -> None:
    (basic / "images" / "frame_005.png").write_bytes(np.random.default_rng(0).bytes(300))
    assert "frame_005.png" in _error(basic)


def test_invalid_json(basic: Path) -> None:
    (basic / "transforms.json").write_text("{'single': 'quotes'}")
    msg = _error(basic)
    assert "transforms.json" in msg and "invalid JSON" in msg


def test_nan_pose(basic: Path) -> None:
    def fn(d):
        d["frames"][2]["transform_matrix"][1][1] = float("inf")

    edit_json(basic, fn)
    msg = _error(basic)
    assert "transforms.json" in msg and "NaN or inf" in msg and "frame_007" in msg  # frames are stored reversed


def test_empty_frames(basic: Path) -> None:
    edit_json(basic, lambda d: d.update(frames=[]))
    msg = _error(basic)
    assert "transforms.json" in msg and "no frames" in msg


def test_no_focal(basic: Path) -> None:
    edit_json(basic, lambda d: d.pop("fl_x"))
    assert "fl_x" in _error(basic)


def test_unsupported_distortion(basic: Path) -> None:
    edit_json(basic, lambda d: d.update(k3=0.1))
    assert "k3" in _error(basic)
    edit_json(basic, lambda d: d.update(k3=0.0, camera_model="OPENCV_FISHEYE"))
    assert "OPENCV_FISHEYE" in _error(basic)


def test_grayscale_images(basic: Path) -> None:
    for p in (basic / "images").glob("*.png"):
        iio.imwrite(p, iio.imread(p)[:, :, 1])
    img = load_scene(basic, splits=("test",)).split("test").images
    assert img.shape == (2, 16, 20, 3) and (img[..., 0] == img[..., 2]).all()
