import dataclasses
import json
import math

import numpy as np
import pytest
import torch

from turbonerf.cameras import Cameras
from turbonerf.data.synthetic import look_at, ring_poses
from turbonerf.distill import pseudo_data as pd
from turbonerf.errors import TurboNerfError


def _cameras(c2w: np.ndarray, size: int = 8) -> Cameras:
    n = len(c2w)
    f = torch.full((n,), 10.0)
    c = torch.full((n,), size / 2)
    return Cameras(torch.from_numpy(c2w).float(), f, f, c, c, size, size)


def _ring(n=8):
    return _cameras(ring_poses(n))


def _fake_teacher(rays, background):
    """An analytic 'teacher': colour from the ray direction and origin (deterministic)."""
    rgb = torch.sigmoid(rays.directions * 3.0 + 0.1 * rays.origins)
    n = rgb.shape[0]
    return {"rgb": rgb, "depth": torch.zeros(n), "opacity": torch.ones(n)}


def _spec(mode="sphere", seed=3, per_chunk=2, size=8):
    return pd.PseudoDataSpec(seed=seed, pose_mode=mode, height=size, width=size, images_per_chunk=per_chunk,
                             near=2.0, far=6.0, ndc=False, teacher="fake")


def test_interrupted_and_resumed_generation_reads_back_identically(tmp_path):
    cams, spec, bg = _ring(), _spec(), torch.ones(3)
    full = pd.generate_pseudo_data(tmp_path / "full", _fake_teacher, cams, spec, 10, bg, progress=False)
    assert full.images == 10 and full.rays == 10 * 64 and not full.stopped_early and full.rays_per_s > 0

    calls = {"n": 0}

    def dies_in_third_chunk(rays, background):
        calls["n"] += 1
        if calls["n"] == 5:  # images 1-4 (chunks 0 and 1) complete, chunk 2 dies mid-way
            raise KeyboardInterrupt
        return _fake_teacher(rays, background)

    with pytest.raises(KeyboardInterrupt):
        pd.generate_pseudo_data(tmp_path / "resumed", dies_in_third_chunk, cams, spec, 10, bg, chunk_rays=64, progress=False)
    manifest = json.loads((tmp_path / "resumed" / pd.MANIFEST).read_text())
    assert [c["index"] for c in manifest["chunks"]] == [0, 1]
    assert sorted(p.name for p in (tmp_path / "resumed").iterdir()) == [
        "chunk_000000_rays.npy", "chunk_000000_rgb.npy", "chunk_000001_rays.npy", "chunk_000001_rgb.npy", pd.MANIFEST]
    partial = pd.PseudoRays(tmp_path / "resumed")
    assert len(partial) == 4 * 64

    calls["n"] = -1000
    res = pd.generate_pseudo_data(tmp_path / "resumed", dies_in_third_chunk, cams, spec, 10, bg, chunk_rays=64, progress=False)
    assert res.new_images == 6 and res.images == 10

    a, b = pd.PseudoRays(tmp_path / "full"), pd.PseudoRays(tmp_path / "resumed")
    ra, ca = a.read_all()
    rb, cb = b.read_all()
    assert np.array_equal(ra, rb) and np.array_equal(ca, cb)
    assert ra.dtype == np.float32 and ra.shape == (640, 6) and ca.dtype == np.float16 and ca.shape == (640, 3)
    assert isinstance(a.chunk(0)[0], np.memmap)  # read back memory-mapped, not loaded
    # the stored colour is what the teacher says for the stored ray
    d = torch.from_numpy(ra[:, 3:6])
    o = torch.from_numpy(ra[:, 0:3])
    expect = torch.sigmoid(d * 3.0 + 0.1 * o).numpy()
    assert np.abs(ca.astype(np.float32) - expect).max() < 2e-3


def test_resume_refuses_other_settings_and_sample_draws_from_many_chunks(tmp_path):
    cams, bg = _ring(), torch.ones(3)
    pd.generate_pseudo_data(tmp_path / "p", _fake_teacher, cams, _spec(per_chunk=1), 12, bg, progress=False)
    with pytest.raises(TurboNerfError, match="other settings"):
        pd.generate_pseudo_data(tmp_path / "p", _fake_teacher, cams, _spec(seed=4, per_chunk=1), 12, bg, progress=False)
    data = pd.PseudoRays(tmp_path / "p")
    rays, rgb = data.sample(100, torch.Generator().manual_seed(0), chunks_per_batch=4)
    assert rays.shape == (100, 6) and rgb.shape == (100, 3) and rays.dtype == torch.float32
    # each pseudo image has its own camera centre: 4 chunks -> 4 distinct origins
    assert len({tuple(r) for r in rays[:, :3].numpy().round(5).tolist()}) == 4


def test_time_budget_stops_generation_early(tmp_path):
    res = pd.generate_pseudo_data(tmp_path / "p", _fake_teacher, _ring(), _spec(), 10, torch.ones(3), max_seconds=0.0, progress=False)
    assert res.stopped_early and res.images == 0 and len(pd.PseudoRays(tmp_path / "p")) == 0


def test_sphere_cameras_look_at_the_centre_from_the_training_ring():
    c2w = torch.from_numpy(ring_poses(8)).float()
    assert pd.resolve_pose_mode("auto", c2w, ndc=False) == "sphere"
    assert pd.resolve_pose_mode("auto", c2w, ndc=True) == "box"
    torch.testing.assert_close(pd.convergence_point(c2w), torch.zeros(3), atol=1e-4, rtol=0)
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        pose = pd.sample_sphere_pose(c2w, g)
        o = pose[:, 3]
        assert o.norm() == pytest.approx(4.0, abs=1e-4)  # the ring's radius
        assert o[2] == pytest.approx(2.0, abs=1e-4)  # and its elevation (30 degrees)
        forward = -pose[:, 2]
        torch.testing.assert_close(forward, -o / o.norm(), atol=1e-5, rtol=0)
        torch.testing.assert_close(pose[:, :3].T @ pose[:, :3], torch.eye(3), atol=1e-5, rtol=0)


def _elevations(poses: list[torch.Tensor]) -> np.ndarray:
    return np.degrees([math.asin(float(p[2, 3] / p[:, 3].norm())) for p in poses])


def test_sphere_elevations_spread_like_cameras_on_the_sphere():
    # training cameras from 0 to 90 degrees of elevation: a band whose area is half below 30
    c2w = torch.from_numpy(np.concatenate([ring_poses(6, elevation_deg=e) for e in (0.0, 45.0, 89.9)])).float()
    g = torch.Generator().manual_seed(0)
    area = _elevations([pd.sample_sphere_pose(c2w, g, "area") for _ in range(2000)])
    angle = _elevations([pd.sample_sphere_pose(c2w, g, "angle") for _ in range(2000)])
    assert area.min() >= -1e-3 and area.max() <= 89.9 + 1e-3
    assert np.mean(area < 30.0) == pytest.approx(0.5, abs=0.04)  # sin(30) = 0.5 of the band's area
    assert np.mean(angle < 30.0) == pytest.approx(1 / 3, abs=0.04)  # the older rule: a third of the angle
    with pytest.raises(TurboNerfError, match="elevation rule"):
        pd.sample_sphere_pose(c2w, g, "poles")


def test_a_store_written_before_the_elevation_rule_reads_its_cameras_back(tmp_path):
    cams, bg = _cameras(np.concatenate([ring_poses(6, elevation_deg=e) for e in (10.0, 60.0)])), torch.ones(3)
    old = dataclasses.replace(_spec(per_chunk=1), elevation="angle")
    pd.generate_pseudo_data(tmp_path / "p", _fake_teacher, cams, old, 3, bg, progress=False)
    manifest = json.loads((tmp_path / "p" / pd.MANIFEST).read_text())
    del manifest["spec"]["elevation"]  # as written before the field existed
    (tmp_path / "p" / pd.MANIFEST).write_text(json.dumps(manifest))
    store = pd.PseudoRays(tmp_path / "p")
    assert store.spec.elevation == "angle"
    for i in range(3):
        rays = np.load(tmp_path / "p" / f"chunk_{i:06d}_rays.npy")
        eye = pd.pseudo_cameras(cams, store.spec, i).c2w[0, :, 3].numpy()
        np.testing.assert_allclose(rays[:, :3], np.broadcast_to(eye, rays[:, :3].shape), atol=1e-5)
    new = pd.pseudo_cameras(cams, _spec(per_chunk=1), 0).c2w[0, :, 3].numpy()
    assert not np.allclose(new, np.load(tmp_path / "p" / "chunk_000000_rays.npy")[0, :3], atol=1e-3)  # the rules differ
    # continued with today's default spec, the store keeps its own rule
    res = pd.generate_pseudo_data(tmp_path / "p", _fake_teacher, cams, _spec(per_chunk=1), 5, bg, progress=False)
    assert res.new_images == 2 and pd.PseudoRays(tmp_path / "p").spec.elevation == "angle"
    rays = np.load(tmp_path / "p" / "chunk_000004_rays.npy")
    eye = pd.pseudo_cameras(cams, dataclasses.replace(_spec(per_chunk=1), elevation="angle"), 4).c2w[0, :, 3].numpy()
    np.testing.assert_allclose(rays[:, :3], np.broadcast_to(eye, rays[:, :3].shape), atol=1e-5)


def test_box_cameras_stay_in_the_boxes_of_the_training_cameras():
    eyes = [(x, y, 3.0) for x in (-1.0, 0.0, 1.0) for y in (-0.5, 0.5)]
    c2w = torch.from_numpy(np.stack([look_at(e, (0.2 * e[0], 0.0, 0.0), up=(0, 1, 0)) for e in eyes])).float()
    assert pd.resolve_pose_mode("box", c2w, ndc=False) == "box"
    g = torch.Generator().manual_seed(0)
    centres, fwd = c2w[:, :, 3], -c2w[:, :, 2]
    lo, hi = centres.min(0).values, centres.max(0).values
    half = 0.5 * (hi - lo) * (1 + pd.BOX_MARGIN)
    mid = 0.5 * (lo + hi)
    for _ in range(50):
        pose = pd.sample_box_pose(c2w, g)
        assert torch.all(pose[:, 3] >= mid - half - 1e-5) and torch.all(pose[:, 3] <= mid + half + 1e-5)
        f = -pose[:, 2]
        assert f.norm() == pytest.approx(1.0, abs=1e-5)
        assert f[2] < -0.9  # looks the way the training cameras look
        assert pose[:, 1] @ torch.tensor([0.0, 1.0, 0.0]) > 0.9  # and is not rolled
    assert math.isclose(float(pd._azimuth_arc(torch.tensor([0.0, 0.1, 0.2]))[1]), 0.2, abs_tol=1e-6)
    assert pd._azimuth_arc(torch.linspace(0, 6, 12))[1] == pytest.approx(2 * math.pi)


def test_two_ranks_share_the_chunks_and_write_the_store_one_process_writes(tmp_path):
    """Two ranks (threads here, with a gather built on a barrier) render alternate chunks; rank 0's
    manifest lists them all and the store reads back as one process's does."""
    import threading

    cams, spec, bg = _ring(), _spec(per_chunk=1), torch.ones(3)
    pd.generate_pseudo_data(tmp_path / "one", _fake_teacher, cams, spec, 5, bg, progress=False)
    slots: list = [None, None]
    barrier = threading.Barrier(2)
    rendered: dict[int, int] = {}
    calls = {0: 0, 1: 0}

    def run(rank: int) -> None:
        def gather(obj):
            slots[rank] = obj
            barrier.wait()
            out = list(slots)
            barrier.wait()
            return out

        def teacher(rays, background):
            calls[rank] += 1  # one call per chunk here (64 rays)
            return _fake_teacher(rays, background)

        res = pd.generate_pseudo_data(tmp_path / "two", teacher, cams, spec, 5, bg, progress=False, rank=rank, world_size=2, gather=gather)
        rendered[rank] = res.images

    threads = [threading.Thread(target=run, args=(r,)) for r in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert rendered == {0: 5, 1: 5}  # both ranks know of every chunk
    assert calls == {0: 3, 1: 2}  # chunks 0, 2, 4 and 1, 3
    manifest = json.loads((tmp_path / "two" / pd.MANIFEST).read_text())
    assert [c["index"] for c in manifest["chunks"]] == [0, 1, 2, 3, 4]
    ra, ca = pd.PseudoRays(tmp_path / "one").read_all()
    rb, cb = pd.PseudoRays(tmp_path / "two").read_all()
    assert np.array_equal(ra, rb) and np.array_equal(ca, cb)


def test_the_store_read_as_images_gives_each_image_with_its_camera(tmp_path):
    """Image j of a chunk is the teacher's render of the recomputed camera j: the rays of that
    camera are the rows stored for it, and its pixels are the stored colours, row-major."""
    cams, spec, bg = _ring(), _spec(per_chunk=3), torch.ones(3)
    pd.generate_pseudo_data(tmp_path, _fake_teacher, cams, spec, 6, bg, progress=False)
    rays_store = pd.PseudoRays(tmp_path)
    images = pd.PseudoImages(tmp_path, cams)
    assert len(images) == 6
    all_rays, all_rgb = rays_store.read_all()
    for i in (0, 4, 5):
        cam, rgb = images.images([i])
        assert rgb.shape == (1, 8, 8, 3)
        rows = slice(i * 64, (i + 1) * 64)
        expect = pd.image_ray_bundle(cam, 0, spec.near, spec.far, spec.ndc)
        assert np.allclose(all_rays[rows, :3], expect.origins.numpy(), atol=1e-5)
        assert np.allclose(all_rays[rows, 3:], expect.directions.numpy(), atol=1e-5)
        assert np.array_equal(rgb[0].reshape(-1, 3).numpy(), all_rgb[rows].astype(np.float32))
    cam, rgb = images.sample(5, torch.Generator().manual_seed(0))
    assert len(cam) == 5 and rgb.shape == (5, 8, 8, 3)


def test_pseudo_rays_maps_a_bounded_number_of_chunks(tmp_path, monkeypatch):
    """A store of many chunks is read with at most MAX_OPEN_CHUNKS of them mapped at once (each map
    holds a file descriptor: a 10,000-image store ran out of them), and reads the same data."""
    spec = pd.PseudoDataSpec(seed=0, pose_mode="box", height=4, width=4, images_per_chunk=1, near=0.1, far=5.0, ndc=False, teacher="t")
    root = tmp_path / "store"
    root.mkdir()
    for i in range(6):
        rays_path, rgb_path = pd.chunk_paths(root, i)
        np.save(rays_path, np.full((16, 6), i, np.float32))
        np.save(rgb_path, np.full((16, 3), i / 10, np.float16))
    pd._write_manifest(root, spec, {i: {"rays": 16} for i in range(6)})
    monkeypatch.setattr(pd, "MAX_OPEN_CHUNKS", 2)
    store = pd.PseudoRays(root)
    rays, rgb = store.read_all()
    assert rays.shape == (96, 6) and np.array_equal(rays[::16, 0], np.arange(6, dtype=np.float32))
    assert len(store._maps) == 2
    r, c = store.sample(48, torch.Generator().manual_seed(0), chunks_per_batch=6)
    assert r.shape == (48, 6) and len(store._maps) == 2
    assert torch.allclose(c[:, 0], r[:, 0] / 10, atol=1e-3)  # each ray's colour from its own chunk


def test_manifest_is_rewritten_at_most_every_manifest_seconds_and_always_at_the_end(tmp_path, monkeypatch):
    """A 10,000-chunk store rewrote its growing manifest after every chunk; now the rewrites are
    timed, and the last one lists every chunk."""
    writes = []
    real_write = pd._write_manifest
    monkeypatch.setattr(pd, "_write_manifest", lambda root, spec, chunks: (writes.append(len(chunks)), real_write(root, spec, chunks)))
    cams, spec, bg = _ring(), _spec(per_chunk=1), torch.ones(3)
    pd.generate_pseudo_data(tmp_path / "slow", _fake_teacher, cams, spec, 6, bg, progress=False, manifest_seconds=1e9)
    assert writes == [0, 6]  # the empty store at the start, then all six chunks at the end
    writes.clear()
    pd.generate_pseudo_data(tmp_path / "every", _fake_teacher, cams, spec, 6, bg, progress=False, manifest_seconds=0.0)
    assert writes == [0, 1, 2, 3, 4, 5, 6]
    assert len(pd.PseudoRays(tmp_path / "slow")) == len(pd.PseudoRays(tmp_path / "every")) == 6 * 64
