"""The multi-scene readers (SRN, NMR) on fixtures written here in each format, the SRN camera
convention round trip, and the fixed choice of source views."""

import json

import numpy as np
import pytest
import torch

from turbonerf.cameras import project_points
from turbonerf.data.multiscene import (
    choose_source_views,
    detect_multiscene,
    load_multiscene,
    opencv_to_opengl_c2w,
    opengl_to_opencv_c2w,
    object_boxes,
)
from turbonerf.errors import TurboNerfError
from turbonerf.io.media import save_png


def random_rotation(rng) -> np.ndarray:
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    return q * np.sign(np.linalg.det(q))


def opencv_pixel(w2c: np.ndarray, f: float, cx: float, cy: float, x: np.ndarray) -> tuple[float, float]:
    """The OpenCV pinhole: camera coordinates R x + t (z forward, y down); pixel centres at +0.5."""
    xc = w2c[:3, :3] @ x + w2c[:3, 3]
    return f * xc[0] / xc[2] + cx, f * xc[1] / xc[2] + cy


def write_srn(root, split, name, poses_cv, f, size, intr_size, rng):
    obj = root / split / name
    for i, pose in enumerate(poses_cv):
        save_png(obj / "rgb" / f"{i:06d}.png", rng.integers(0, 255, (size, size, 3), dtype=np.uint8))
        (obj / "pose").mkdir(parents=True, exist_ok=True)
        (obj / "pose" / f"{i:06d}.txt").write_text(" ".join(str(v) for v in pose.reshape(-1)))
    (obj / "intrinsics.txt").write_text(f"{f} {intr_size / 2} {intr_size / 2} 0.\n0. 0. 0.\n1.\n{intr_size} {intr_size}\n")
    return obj


def srn_poses(rng, n):
    """OpenCV camera-to-world poses of cameras 2 units from the origin looking at it."""
    poses = []
    for _ in range(n):
        eye = rng.normal(size=3)
        eye = 2.0 * eye / np.linalg.norm(eye)
        fwd = -eye / 2.0
        right = np.cross(fwd, [0.0, 0.0, 1.0])
        right /= np.linalg.norm(right)
        down = np.cross(fwd, right)
        pose = np.eye(4)
        pose[:3, :3] = np.stack([right, down, fwd], 1)
        pose[:3, 3] = eye
        poses.append(pose)
    return poses


def test_srn_reader_parses_fixture_and_keeps_the_camera_model(tmp_path):
    rng = np.random.default_rng(0)
    poses = srn_poses(rng, 3)
    write_srn(tmp_path, "train", "obj_b", poses, 40.0, 16, 32, rng)  # intrinsics given for 32x32, images 16x16
    write_srn(tmp_path, "train", "obj_a", poses[:2], 40.0, 16, 32, rng)
    (tmp_path / "multiscene.json").write_text(json.dumps({"near": 1.0, "far": 3.0}))
    assert detect_multiscene(tmp_path) == "srn"
    data = load_multiscene(tmp_path, "train")
    assert [s.name for s in data.scenes] == ["obj_a", "obj_b"] and (data.near, data.far) == (1.0, 3.0)
    obj = data.scene("obj_b")
    assert obj.images.shape == (3, 16, 16, 3) and obj.images.dtype == torch.uint8
    assert float(obj.cameras.fx[0]) == pytest.approx(20.0) and float(obj.cameras.cx[0]) == pytest.approx(8.0)
    x = np.array([0.1, -0.2, 0.15])
    for i, pose in enumerate(poses):
        u_cv, v_cv = opencv_pixel(np.linalg.inv(pose), 20.0, 8.0, 8.0, x)
        u, v, depth = project_points(obj.cameras, i, torch.tensor(x, dtype=torch.float32)[None])
        assert float(u) == pytest.approx(u_cv, abs=1e-3) and float(v) == pytest.approx(v_cv, abs=1e-3) and float(depth) > 0


def test_srn_split_folder_may_carry_a_prefix(tmp_path):
    rng = np.random.default_rng(1)
    write_srn(tmp_path, "cars_test", "x", srn_poses(rng, 2), 30.0, 8, 8, rng)
    data = load_multiscene(tmp_path, "test")
    assert len(data) == 1 and (data.near, data.far) == (0.8, 1.8)
    with pytest.raises(TurboNerfError, match="no 'train' split"):
        load_multiscene(tmp_path, "train")


def test_opencv_opengl_round_trip():
    rng = np.random.default_rng(2)
    c2w = np.concatenate([random_rotation(rng), rng.normal(size=(3, 1))], 1)
    back = opencv_to_opengl_c2w(opengl_to_opencv_c2w(c2w))
    assert np.allclose(back, c2w)
    cv = opengl_to_opencv_c2w(c2w)
    assert np.allclose(cv[:3, 2], -c2w[:3, 2]) and np.allclose(cv[:3, 1], -c2w[:3, 1])  # z forward, y down


def test_nmr_reader_parses_fixture(tmp_path):
    rng = np.random.default_rng(3)
    cat = tmp_path / "02691156"
    cams, w2cs = {}, []
    for name in ("o1", "o2"):
        obj = cat / name
        for i in range(2):
            save_png(obj / "image" / f"{i:04d}.png", rng.integers(0, 255, (16, 16, 3), dtype=np.uint8))
            w2c = np.linalg.inv(srn_poses(rng, 1)[0])
            w2cs.append(w2c)
            cams[f"world_mat_{i}"] = w2c[:3].astype(np.float32)
            cams[f"camera_mat_{i}"] = np.diag([2.1875, 2.1875, 1.0, 1.0]).astype(np.float32)
        np.savez(obj / "cameras.npz", **cams)
    (cat / "softras_train.lst").write_text("o1\n")
    (cat / "softras_test.lst").write_text("o2\n")
    assert detect_multiscene(tmp_path) == "nmr"
    data = load_multiscene(tmp_path, "test")
    assert [s.name for s in data.scenes] == ["02691156/o2"]
    obj = data.scenes[0]
    f = 2.1875 * 8
    x = np.array([0.2, 0.1, -0.1])
    for i, w2c in enumerate(w2cs[2:]):
        u_cv, v_cv = opencv_pixel(w2c, f, 8.0, 8.0, x)
        # turbonerf's world is NMR's turned by 180 degrees about x (y up), as in pixelNeRF
        u, v, _ = project_points(obj.cameras, i, torch.tensor(np.diag([1.0, -1.0, -1.0]) @ x, dtype=torch.float32)[None])
        assert float(u) == pytest.approx(u_cv, abs=1e-3) and float(v) == pytest.approx(v_cv, abs=1e-3)


def test_not_a_multiscene_folder(tmp_path):
    assert detect_multiscene(tmp_path) is None
    with pytest.raises(TurboNerfError, match="not a multi-scene set"):
        load_multiscene(tmp_path, "train")


def test_source_view_choice_is_fixed_nested_and_spread():
    from turbonerf.data.multiscene import pinhole_cameras
    from turbonerf.data.objects import sphere_cameras

    cams = pinhole_cameras(sphere_cameras(np.random.default_rng(0), 24), 50.0, 32.0, 32.0, 64, 64)
    three = choose_source_views(cams, 3, seed=5)
    assert three == choose_source_views(cams, 3, seed=5) and choose_source_views(cams, 1, seed=5) == three[:1]
    assert len(set(three)) == 3
    pos = cams.c2w[three, :, 3]
    assert torch.cdist(pos, pos)[~torch.eye(3, dtype=bool)].min() > 3.0  # spread over a sphere of radius 4


def test_object_boxes_bound_the_non_background_pixels():
    images = torch.full((3, 10, 12, 3), 255, dtype=torch.uint8)
    images[0, 2:5, 3:9] = 40  # an object
    images[1, 9, 0] = 200  # one dark pixel in a corner
    boxes = object_boxes(images, torch.ones(3))  # view 2 is all background: the whole image
    assert boxes.tolist() == [[2, 5, 3, 9], [9, 10, 0, 1], [0, 10, 0, 12]]
    near_white = torch.full((1, 4, 4, 3), 250, dtype=torch.uint8)
    assert object_boxes(near_white, torch.ones(3)).tolist() == [[0, 4, 0, 4]]
