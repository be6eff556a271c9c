"""The generated object set: deterministic for a seed, readable by the SRN reader, and its
cameras match where pybullet's renderer draws."""

import hashlib

import numpy as np
import pytest
import torch

from turbonerf.cameras import project_points
from turbonerf.data.multiscene import load_multiscene, pinhole_cameras
from turbonerf.data.objects import (
    FOV_DEGREES,
    ObjectSetOptions,
    focal_pixels,
    generate_objects,
    principal_point,
    sphere_cameras,
)

pybullet = pytest.importorskip("pybullet")


def digest(root):
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(root)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def test_generator_is_deterministic_for_a_seed_and_readable(tmp_path):
    opts = dict(objects=3, test_objects=1, views=3, size=16)
    generate_objects(ObjectSetOptions(tmp_path / "a", seed=7, **opts))
    generate_objects(ObjectSetOptions(tmp_path / "b", seed=7, **opts))
    generate_objects(ObjectSetOptions(tmp_path / "c", seed=8, **opts))
    assert digest(tmp_path / "a") == digest(tmp_path / "b") != digest(tmp_path / "c")
    train, test = load_multiscene(tmp_path / "a", "train"), load_multiscene(tmp_path / "a", "test")
    assert len(train) == 2 and len(test) == 1 and train.scenes[0].images.shape == (3, 16, 16, 3)
    img = train.scenes[0].images
    assert (img == 255).all(-1).float().mean() > 0.3 and (img < 200).any()  # white background, an object


def test_cameras_match_the_renderer():
    """A small sphere off the centre is drawn where the cameras written by the generator project it."""
    size, point = 128, np.array([0.3, -0.2, 0.25])
    client = pybullet.connect(pybullet.DIRECT)
    try:
        shape = pybullet.createVisualShape(pybullet.GEOM_SPHERE, radius=0.12, physicsClientId=client)
        pybullet.createMultiBody(baseVisualShapeIndex=shape, basePosition=point.tolist(), physicsClientId=client)
        c2w = sphere_cameras(np.random.default_rng(0), 3)
        cams = pinhole_cameras(c2w, focal_pixels(size), *principal_point(size), size, size)
        proj = pybullet.computeProjectionMatrixFOV(FOV_DEGREES, 1.0, 0.01, 20.0)
        for i, cam in enumerate(c2w):
            world = np.eye(4)
            world[:3, :4] = cam
            seg = pybullet.getCameraImage(size, size, np.linalg.inv(world).T.reshape(-1).tolist(), proj,
                                          renderer=pybullet.ER_TINY_RENDERER, physicsClientId=client)[4]
            rows, cols = np.nonzero(np.asarray(seg).reshape(size, size) >= 0)
            u, v, _ = project_points(cams, i, torch.tensor(point, dtype=torch.float32)[None])
            assert abs(cols.mean() + 0.5 - float(u)) < 0.3 and abs(rows.mean() + 0.5 - float(v)) < 0.3
    finally:
        pybullet.disconnect(client)
