"""A loaded scene written as a transforms.json capture reads back as the same cameras and views;
the real forward-facing fern, written this way, is the unbounded capture Instant-NGP trains on
with contraction."""

import json

import numpy as np
import torch

from conftest import shared_scene
from turbonerf.data.export import forward_centre, write_transforms
from turbonerf.data.formats import load_scene


def test_written_capture_reads_back_with_the_same_views(tiny_scene, tmp_path):
    scene = load_scene(tiny_scene)
    centre = np.array([0.1, -0.2, 0.3])
    path = write_transforms(scene, tmp_path / "capture", aabb_scale=4, centre=centre, scale=2.0)
    back = load_scene(path.parent)
    assert back.format == "transforms" and float(back.aabb[1, 0]) == 6.0
    n = sum(len(s) for s in scene.splits.values())
    assert sum(len(s) for s in back.splits.values()) == n
    frames = json.loads(path.read_text())["frames"]
    order = sorted((str(p), name, i) for name, split in scene.splits.items() for i, p in enumerate(split.paths))
    for frame, (_, name, i) in zip(frames, order):
        src = scene.splits[name]
        c2w = np.asarray(frame["transform_matrix"])
        np.testing.assert_allclose(c2w[:3, :3], src.cameras.c2w[i, :3, :3].numpy(), atol=1e-6)
        np.testing.assert_allclose(c2w[:3, 3], (src.cameras.c2w[i, :3, 3].numpy() - centre) * 2.0, atol=1e-5)
    first = back.split("train")
    src_imgs = [scene.splits[name].images[i] for _, name, i in order]
    for p, img in zip(first.paths, first.images):
        assert torch.equal(img, src_imgs[int(p.stem)])
    assert (tmp_path / "capture").is_dir()


def test_fern_as_an_unbounded_capture_trains_contracted(tmp_path):
    from turbonerf.app.train import TrainOptions, train
    from turbonerf.app.runs import load_trained

    scene = load_scene(shared_scene("nerf_llff_data", "fern"), downscale=8)
    capture = write_transforms(scene, tmp_path / "fern", aabb_scale=16, centre=forward_centre(scene, 1.5 * scene.depth_bounds[0])).parent
    back = load_scene(capture, downscale=4)
    assert not back.ndc and float(back.aabb[1, 0]) == 24.0 and len(back.split("test")) == len(scene.split("test"))
    run = tmp_path / "run"
    tiny = ["n_levels=4", "log2_table_size=12", "max_resolution=64", "hidden=16", "grid_resolution=32", "max_batch_samples=4096"]
    res = train(TrainOptions(method="instant-ngp", data=capture, out=run, downscale=4, max_steps=3, batch_rays=64,
                             overrides=tiny, progress=False))
    assert res.step == 3
    model, _, _ = load_trained(run, torch.device("cpu"))
    assert model.contracted
    frac = float(model.grid.allowed.float().mean())
    assert 0.0 < frac < 0.6  # the cells no camera sees are gone before the first step
    assert torch.equal(model.grid.occupied & ~model.grid.allowed, torch.zeros_like(model.grid.allowed))
