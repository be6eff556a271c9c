"""LLFF parser: the real fern scene, a tiny procedural scene, the reference pose pipeline, bad inputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from turbonerf.data.images import read_image
from turbonerf.data.llff import average_pose
from turbonerf.data.formats import load_scene, scene_info
from turbonerf.data.synthetic import write_tiny_llff_scene
from turbonerf.errors import TurboNerfError

REPO = Path(__file__).resolve().parents[2]
FERN = REPO.parent / "shared" / "data" / "nerf_llff_data" / "fern"
FERN_FOCAL = 3260.5263328805895


def assert_valid_poses(c2w: torch.Tensor) -> None:
    """[N, 3, 4] finite, with orthonormal right-handed rotations."""
    assert torch.isfinite(c2w).all()
    rot = c2w[:, :, :3].double()
    assert torch.allclose(rot @ rot.transpose(1, 2), torch.eye(3, dtype=torch.float64).expand_as(rot), atol=1e-4)
    assert torch.allclose(torch.linalg.det(rot), torch.ones(len(rot), dtype=torch.float64), atol=1e-4)


def reference_poses(poses_arr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The NeRF authors' ``_load_data`` + ``load_llff_data`` pose steps, in their [3, 5, N] layout.

    Returns:
        poses: [N, 3, 4] recentered OpenGL camera-to-world; bounds: [N, 2] scaled.
    """

    def normalize(x):
        return x / np.linalg.norm(x)

    def viewmatrix(z, up, pos):
        vec2 = normalize(z)
        vec0 = normalize(np.cross(up, vec2))
        vec1 = normalize(np.cross(vec2, vec0))
        return np.stack([vec0, vec1, vec2, pos], 1)

    def poses_avg(poses):
        hwf = poses[0, :3, -1:]
        center = poses[:, :3, 3].mean(0)
        vec2 = normalize(poses[:, :3, 2].sum(0))
        up = poses[:, :3, 1].sum(0)
        return np.concatenate([viewmatrix(vec2, up, center), hwf], 1)

    def recenter_poses(poses):
        poses_ = poses + 0
        bottom = np.reshape([0, 0, 0, 1.0], [1, 4])
        c2w = np.concatenate([poses_avg(poses)[:3, :4], bottom], -2)
        bottom = np.tile(np.reshape(bottom, [1, 1, 4]), [poses.shape[0], 1, 1])
        poses = np.concatenate([poses[:, :3, :4], bottom], -2)
        poses = np.linalg.inv(c2w) @ poses
        poses_[:, :3, :4] = poses[:, :3, :4]
        return poses_

    poses = poses_arr[:, :-2].reshape([-1, 3, 5]).transpose([1, 2, 0])
    bds = poses_arr[:, -2:].transpose([1, 0])
    poses = np.concatenate([poses[:, 1:2, :], -poses[:, 0:1, :], poses[:, 2:, :]], 1)
    poses = np.moveaxis(poses, -1, 0).astype(np.float32)
    bds = np.moveaxis(bds, -1, 0).astype(np.float32)
    sc = 1.0 / (bds.min() * 0.75)
    poses[:, :3, 3] *= sc
    bds *= sc
    return recenter_poses(poses)[:, :3, :4], bds


# ---------------------------------------------------------------------------- real data


@pytest.fixture(scope="module")
def fern() -> Path:
    if not (FERN / "poses_bounds.npy").is_file():
        pytest.skip(f"{FERN} not found")
    return FERN


def test_fern_info(fern: Path) -> None:
    info = scene_info(fern)
    assert info.format == "llff" and info.ndc and not info.white_background
    assert info.splits == {"train": 17, "test": 3}
    assert (info.width, info.height) == (4032, 3024)
    assert info.fx == pytest.approx(FERN_FOCAL)
    assert (info.cx, info.cy) == (2016.0, 1512.0)
    assert (info.near, info.far) == (0.0, 1.0)
    assert info.aabb == [[-1.0] * 3, [1.0] * 3]
    assert info.extra["image_folders"] == ["images_4", "images_8"]
    assert info.to_json()["image_folders"] == ["images_4", "images_8"]


def test_fern_downscale8(fern: Path) -> None:
    scene = load_scene(fern, downscale=8)
    train, test = scene.split("train"), scene.split("test")
    assert train.images.shape == (17, 378, 504, 3) and test.images.shape == (3, 378, 504, 3)
    assert [p.name for p in test.paths] == ["image000.png", "image008.png", "image016.png"]
    assert train.cameras.fx[0].item() == pytest.approx(FERN_FOCAL / 8, rel=1e-5)
    assert train.cameras.fy[0].item() == pytest.approx(FERN_FOCAL / 8, rel=1e-5)
    assert (train.cameras.cx[0].item(), train.cameras.cy[0].item()) == (252.0, 189.0)
    assert scene.ndc and (scene.near, scene.far) == (0.0, 1.0)
    assert scene.depth_bounds[0] == pytest.approx(1 / 0.75)
    assert scene.depth_bounds[1] > scene.depth_bounds[0]
    assert_valid_poses(train.cameras.c2w)
    assert_valid_poses(test.cameras.c2w)
    # poses follow the NeRF reference pipeline exactly
    ref, ref_bounds = reference_poses(np.load(fern / "poses_bounds.npy"))
    all_c2w = torch.zeros(20, 3, 4)
    all_c2w[[i for i in range(20) if i % 8]] = train.cameras.c2w
    all_c2w[[0, 8, 16]] = test.cameras.c2w
    assert np.allclose(all_c2w.numpy(), ref, atol=1e-5)
    assert scene.depth_bounds[1] == pytest.approx(float(ref_bounds.max()), rel=1e-5)
    # the recentered average pose is the identity
    assert np.allclose(average_pose(all_c2w.double().numpy()), np.eye(3, 4), atol=1e-5)


def test_fern_resize_from_finer_folder(fern: Path) -> None:
    scene = load_scene(fern, downscale=16, splits=("test",))
    assert list(scene.splits) == ["test"]
    test = scene.split("test")
    assert test.images.shape == (3, 189, 252, 3)
    assert test.cameras.fx[0].item() == pytest.approx(FERN_FOCAL / 16, rel=1e-5)
    assert test.cameras.cx[0].item() == 126.0


def test_fern_missing_folder_for_downscale(fern: Path) -> None:
    with pytest.raises(TurboNerfError) as err:
        load_scene(fern, downscale=2)
    msg = str(err.value)
    assert "images_2" in msg and "images_4" in msg and "fern" in msg


# ---------------------------------------------------------------------------- tiny scene


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    return write_tiny_llff_scene(tmp_path / "tiny", n_images=10, width=32, height=24, factors=(2,))


def test_tiny_llff(tiny: Path) -> None:
    scene = load_scene(tiny, downscale=2)
    assert scene.format == "llff"
    assert len(scene.split("train")) == 8 and len(scene.split("test")) == 2
    cams = scene.split("train").cameras
    assert (cams.width, cams.height) == (16, 12)
    assert cams.fx[0].item() == pytest.approx(16.0)
    # every synthetic camera looks down -z with +y up: after recentering the rotations are the identity
    assert torch.allclose(cams.c2w[:, :, :3], torch.eye(3).expand(8, 3, 3), atol=1e-6)
    ref, _ = reference_poses(np.load(tiny / "poses_bounds.npy"))
    assert np.allclose(scene.split("test").cameras.c2w.numpy(), ref[[0, 8]], atol=1e-5)
    assert scene.split("train").images.float().mean() > 5  # the sphere is visible


def test_tiny_llff_resized_matches_block_average(tiny: Path) -> None:
    scene = load_scene(tiny, downscale=4, splits=("test",))
    img = scene.split("test").images[0].float()
    src = read_image(tiny / "images_2" / "image000.png") * 255
    expected = torch.from_numpy(src).reshape(6, 2, 8, 2, 3).mean((1, 3))
    assert img.shape == (6, 8, 3)
    assert (img - expected).abs().max() <= 0.5 + 1e-4
    assert scene.split("test").cameras.fx[0].item() == pytest.approx(8.0)


def test_image_count_mismatch(tiny: Path) -> None:
    (tiny / "images_2" / "image009.png").unlink()
    with pytest.raises(TurboNerfError) as err:
        load_scene(tiny, downscale=2)
    msg = str(err.value)
    assert "images_2" in msg and "9 images" in msg and "10 poses" in msg


def test_nan_in_poses_bounds(tiny: Path) -> None:
    arr = np.load(tiny / "poses_bounds.npy")
    arr[3, 3] = np.inf
    np.save(tiny / "poses_bounds.npy", arr)
    with pytest.raises(TurboNerfError, match=r"poses_bounds\.npy.*frame 3"):
        load_scene(tiny, downscale=2)


def test_bad_poses_bounds_shape(tiny: Path) -> None:
    np.save(tiny / "poses_bounds.npy", np.zeros((10, 15)))
    with pytest.raises(TurboNerfError, match=r"poses_bounds\.npy.*\[N, 17\]"):
        scene_info(tiny)


def test_corrupt_image(tiny: Path) -> None:
    (tiny / "images_2" / "image001.png").write_bytes(b"not a png at all")
    with pytest.raises(TurboNerfError, match="image001.png"):
        load_scene(tiny, downscale=2)


def test_aspect_mismatch(tiny: Path) -> None:
    arr = np.load(tiny / "poses_bounds.npy")
    arr[:, 4] = 32  # claim square full-resolution images
    np.save(tiny / "poses_bounds.npy", arr)
    with pytest.raises(TurboNerfError, match="image000.png.*aspect"):
        load_scene(tiny, downscale=2)
