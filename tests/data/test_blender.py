"""NeRF-synthetic parser: the real lego scene, tiny procedural scenes, the shipped demo scene, bad inputs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import torch

import turbonerf
from turbonerf.data.formats import load_scene, scene_info
from turbonerf.data.synthetic import write_tiny_blender_scene
from turbonerf.errors import TurboNerfError

REPO = Path(__file__).resolve().parents[2]
LEGO = REPO.parent / "shared" / "data" / "nerf_synthetic" / "lego"
DEMO = Path(turbonerf.__file__).parent / "assets" / "lego_100"


def assert_valid_poses(c2w: torch.Tensor) -> None:
    """[N, 3, 4] finite, with orthonormal right-handed rotations."""
    assert torch.isfinite(c2w).all()
    rot = c2w[:, :, :3].double()
    eye = torch.eye(3, dtype=torch.float64).expand_as(rot)
    assert torch.allclose(rot @ rot.transpose(1, 2), eye, atol=1e-4)
    assert torch.allclose(torch.linalg.det(rot), torch.ones(len(rot), dtype=torch.float64), atol=1e-4)


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    return write_tiny_blender_scene(tmp_path / "tiny", n_train=4, n_test=2, size=16)


# ---------------------------------------------------------------------------- real data


@pytest.fixture(scope="module")
def lego() -> Path:
    if not (LEGO / "transforms_train.json").is_file():
        pytest.skip(f"{LEGO} not found")
    return LEGO


def test_lego_info(lego: Path) -> None:
    info = scene_info(lego)
    assert info.format == "blender"
    assert info.splits == {"train": 100, "test": 200}
    assert (info.width, info.height) == (800, 800)
    assert info.fx == pytest.approx(1111.111, abs=1e-2) and info.fy == info.fx
    assert (info.cx, info.cy) == (400.0, 400.0)
    assert info.white_background and not info.ndc and info.distortion is None
    assert (info.near, info.far) == (2.0, 6.0)
    assert info.aabb == [[-1.5] * 3, [1.5] * 3]
    json.dumps(info.to_json())


def test_lego_train_downscale8(lego: Path) -> None:
    scene = load_scene(lego, downscale=8, splits=("train",))
    assert list(scene.splits) == ["train"]
    split = scene.split("train")
    assert split.images.shape == (100, 100, 100, 3) and split.images.dtype == torch.uint8
    cams = split.cameras
    assert (cams.width, cams.height) == (100, 100)
    assert torch.allclose(cams.fx, torch.full((100,), 1111.111 / 8), atol=1e-3)
    assert torch.allclose(cams.cx, torch.full((100,), 50.0))
    assert cams.distortion is None
    assert_valid_poses(cams.c2w)
    assert (split.images[:, 0, 0] == 255).all()  # composited on white
    assert split.paths[0].name == "r_0.png"


# ---------------------------------------------------------------------------- tiny scenes


def test_tiny_blender_load(tiny: Path) -> None:
    scene = load_scene(tiny)
    assert scene.format == "blender" and set(scene.splits) == {"train", "test"}
    assert scene.split("train").images.shape == (4, 16, 16, 3)
    assert scene.split("test").images.shape == (2, 16, 16, 3)
    focal = 0.5 * 16 / math.tan(0.5 * 0.6911112070083618)
    assert scene.split("train").cameras.fx[0].item() == pytest.approx(focal, rel=1e-6)
    data = json.loads((tiny / "transforms_train.json").read_text())
    expected = torch.tensor([f["transform_matrix"] for f in data["frames"]])[:, :3]
    assert torch.allclose(scene.split("train").cameras.c2w, expected.float())
    assert_valid_poses(scene.split("test").cameras.c2w)
    img = scene.split("train").images
    assert (img[:, 0, 0] == 255).all() and (img[:, 8, 8] < 255).any()  # white corners, sphere in the middle


def test_tiny_blender_downscale_and_subset(tiny: Path) -> None:
    full = load_scene(tiny, splits=("test",))
    half = load_scene(tiny, downscale=2, splits=("test", "val"))  # val is not on disk: skipped
    assert set(half.splits) == {"test"}
    cams = half.split("test").cameras
    assert (cams.width, cams.height) == (8, 8)
    assert torch.allclose(cams.fx, full.split("test").cameras.fx / 2)
    assert torch.allclose(cams.cx, torch.full((2,), 4.0))
    # area averaging of the composited full-resolution image
    big = full.split("test").images.float().reshape(2, 8, 2, 8, 2, 3).mean((2, 4))
    assert (half.split("test").images.float() - big).abs().max() <= 1.0


def test_file_path_with_extension(tiny: Path) -> None:
    path = tiny / "transforms_train.json"
    data = json.loads(path.read_text())
    for f in data["frames"]:
        f["file_path"] += ".png"
    path.write_text(json.dumps(data))
    assert len(load_scene(tiny, splits=("train",)).split("train")) == 4


# ---------------------------------------------------------------------------- shipped demo scene


def test_shipped_demo_scene() -> None:
    scene = load_scene(DEMO)
    assert scene.format == "blender"
    assert scene.split("train").images.shape == (100, 100, 100, 3)
    assert scene.split("test").images.shape == (10, 100, 100, 3)
    assert scene.split("train").cameras.fx[0].item() == pytest.approx(1111.111 / 8, abs=1e-3)
    assert_valid_poses(scene.split("train").cameras.c2w)
    size = sum(p.stat().st_size for p in DEMO.rglob("*") if p.is_file())
    assert size < 3 * 2**20


# ---------------------------------------------------------------------------- bad inputs


def _error(path: Path, **kwargs) -> str:
    with pytest.raises(TurboNerfError) as err:
        load_scene(path, **kwargs)
    return str(err.value)


def test_missing_folder(tmp_path: Path) -> None:
    assert "no_such_scene" in _error(tmp_path / "no_such_scene")


def test_unrecognisable_folder(tmp_path: Path) -> None:
    folder = tmp_path / "random_stuff"
    folder.mkdir()
    (folder / "notes.txt").write_text("hello")
    msg = _error(folder)
    assert "random_stuff" in msg and "no scene found" in msg


def test_missing_image(tiny: Path) -> None:
    (tiny / "train" / "r_1.png").unlink()
    msg = _error(tiny)
    assert "r_1.png" in msg and "not found" in msg


def test_corrupt_image(tiny: Path) -> None:
    (tiny / "train" / "r_2.png").write_bytes(b"\x89PNG garbage " * 20)
    assert "r_2.png" in _error(tiny)


def test_truncated_image(tiny: Path) -> None:
    path = tiny / "train" / "r_3.png"
    path.write_bytes(path.read_bytes()[:60])  # header intact, data cut
    assert "r_3.png" in _error(tiny)


def test_invalid_json(tiny: Path) -> None:
    (tiny / "transforms_test.json").write_text('{"camera_angle_x": 0.69, "frames": [')
    msg = _error(tiny)
    assert "transforms_test.json" in msg and "invalid JSON" in msg
    with pytest.raises(TurboNerfError, match="transforms_test.json"):
        scene_info(tiny)


def test_image_size_mismatch(tiny: Path) -> None:
    iio.imwrite(tiny / "train" / "r_2.png", np.zeros((12, 12, 4), np.uint8))
    msg = _error(tiny)
    assert "r_2.png" in msg and "12x12" in msg and "16x16" in msg


def test_nan_pose(tiny: Path) -> None:
    path = tiny / "transforms_train.json"
    data = json.loads(path.read_text())
    data["frames"][1]["transform_matrix"][0][3] = float("nan")
    path.write_text(json.dumps(data))  # Python writes NaN, which json.loads accepts
    msg = _error(tiny)
    assert "transforms_train.json" in msg and "NaN" in msg and "r_1" in msg


def test_empty_split(tiny: Path) -> None:
    path = tiny / "transforms_test.json"
    path.write_text(json.dumps({"camera_angle_x": 0.69, "frames": []}))
    msg = _error(tiny)
    assert "transforms_test.json" in msg and "no frames" in msg


def test_missing_camera_angle(tiny: Path) -> None:
    path = tiny / "transforms_train.json"
    data = json.loads(path.read_text())
    del data["camera_angle_x"]
    path.write_text(json.dumps(data))
    assert "camera_angle_x" in _error(tiny)


def test_bad_downscale(tiny: Path) -> None:
    with pytest.raises(TurboNerfError, match="downscale"):
        load_scene(tiny, downscale=0)
    with pytest.raises(TurboNerfError, match="smaller than the downscale"):
        load_scene(tiny, downscale=32)
