import math

import numpy as np
import pytest
import torch

from turbonerf.cameras import Cameras
from turbonerf.rays import image_ray_bundle
from turbonerf.viewer.camera import (
    ViewPose, c2w_from_pose, frame_size, full_size, matrix_to_quat, pose_from_cameras, quat_to_matrix, scene_up, view_cameras,
)


def random_rotation(seed: int) -> np.ndarray:
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(3, 3)))
    return q * np.sign(np.linalg.det(q))


@pytest.mark.parametrize("seed", range(6))
def test_quaternion_round_trip(seed):
    rot = random_rotation(seed)
    assert np.allclose(quat_to_matrix(matrix_to_quat(rot)), rot, atol=1e-9)


def one_camera(c2w: np.ndarray, w=40, h=30, f=35.0) -> Cameras:
    t = lambda v: torch.tensor([float(v)])  # noqa: E731
    return Cameras(torch.from_numpy(c2w).float()[None], t(f), t(f), t(w / 2), t(h / 2), w, h)


def test_pose_of_a_camera_gives_back_its_rays():
    """turbonerf camera -> viser pose (OpenCV) -> view camera: the same rays."""
    c2w = np.concatenate([random_rotation(3), [[0.5], [-1.0], [2.0]]], axis=1)
    cams = one_camera(c2w)
    pose = pose_from_cameras(cams, 0)
    assert pose.aspect == pytest.approx(40 / 30)
    assert pose.fov == pytest.approx(2 * math.atan(15 / 35.0))
    assert np.allclose(c2w_from_pose(pose), c2w, atol=1e-6)
    back = view_cameras(pose, 30, 40)
    a, b = image_ray_bundle(cams, 0, 0.1, 5.0), image_ray_bundle(back, 0, 0.1, 5.0)
    assert torch.allclose(a.origins, b.origins, atol=1e-5) and torch.allclose(a.directions, b.directions, atol=1e-5)


def test_opencv_forward_is_opengl_minus_z():
    pose = ViewPose(wxyz=(1.0, 0.0, 0.0, 0.0), position=(0.0, 0.0, 0.0), fov=1.0, aspect=1.0)
    c2w = c2w_from_pose(pose)
    assert np.allclose(-c2w[:, 2], [0, 0, 1])  # viser's identity camera looks down +z
    assert np.allclose(c2w[:, 1], [0, -1, 0])  # and its image 'up' is -y


def test_ndc_view_keeps_the_training_focal_ratio():
    pose = ViewPose((1.0, 0.0, 0.0, 0.0), (0.0, 0.0, 0.0), fov=0.3, aspect=2.0)
    cam = view_cameras(pose, 50, 100, ndc_focal=(0.8, 1.1))
    assert float(cam.fx[0]) == pytest.approx(80.0) and float(cam.fy[0]) == pytest.approx(55.0)


def test_frame_sizes():
    h, w = frame_size(10_000, 1.0, 512)
    assert (h, w) == (100, 100)
    h, w = frame_size(1e9, 2.0, 400)
    assert w == 400 and h == 200
    assert frame_size(1, 1.0, 512, min_side=16) == (16, 16)
    assert full_size(0.5, 400) == (400, 200)


def test_scene_up_is_the_mean_camera_up():
    c2w = np.concatenate([np.eye(3), np.zeros((3, 1))], axis=1)
    assert np.allclose(scene_up(one_camera(c2w)), [0, 1, 0])
