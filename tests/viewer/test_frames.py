import math

import numpy as np
import pytest
import torch

from turbonerf.viewer.camera import ViewPose
from turbonerf.viewer.frames import FrameJob, PixelRate, Resolution, SceneBounds, ViewState, colorize, lattice

POSE = ViewPose((1.0, 0.0, 0.0, 0.0), (0.0, 0.0, -3.0), fov=0.8, aspect=1.0)
BOUNDS = SceneBounds(near=0.5, far=6.0, ndc=False, background=torch.ones(3))


class CountingRenderer:
    """A render function that colours each ray by its direction and counts its calls and rays."""

    def __init__(self):
        self.calls = 0
        self.rays = 0

    def __call__(self, rays, background):
        self.calls += 1
        n = len(rays)
        self.rays += n
        return {"rgb": (rays.directions * 0.5 + 0.5).clamp(0, 1), "depth": torch.full((n,), 2.0), "opacity": torch.ones(n)}


def test_a_frame_renders_in_chunks_and_can_stop_between_them():
    fn = CountingRenderer()
    job = FrameJob(fn, POSE, (20, 20), BOUNDS, chunk=256, device=torch.device("cpu"), bf16=False)
    assert not job.advance(stop=lambda: fn.calls >= 1)  # abandoned after the first chunk
    assert fn.calls == 1 and not job.finished
    assert job.advance()  # resumed: the remaining chunks
    assert fn.calls == math.ceil(400 / 256)
    img = job.image("rgb")
    assert img.shape == (20, 20, 3) and img.dtype == np.uint8
    assert job.image("opacity").min() == 255


def test_a_deadline_spreads_a_frame_over_calls():
    fn = CountingRenderer()
    job = FrameJob(fn, POSE, (32, 32), BOUNDS, chunk=256, device=torch.device("cpu"), bf16=False)
    calls = 0
    while not job.advance(deadline=0.0):  # a past deadline: one chunk per call
        calls += 1
    assert calls == 3 and fn.calls == 4


def test_lattice_takes_the_nearest_full_pixels_in_order():
    assert torch.equal(lattice(400, 400), torch.arange(400))
    assert torch.equal(lattice(400, 200), 2 * torch.arange(200) + 1)
    for full, n in ((400, 311), (288, 17), (7, 3)):
        idx = lattice(full, n)
        assert len(idx) == n and bool((idx[1:] > idx[:-1]).all())  # distinct, in order
        centres = (torch.arange(n, dtype=torch.float64) + 0.5) / n
        assert float(((idx.double() + 0.5) / full - centres).abs().max()) <= 0.5 / full + 1e-12  # within half a full pixel


def test_a_full_frame_reuses_the_pixels_of_its_moving_frame():
    fn = CountingRenderer()
    whole = FrameJob(fn, POSE, (20, 24), BOUNDS, chunk=256, device=torch.device("cpu"))
    assert whole.advance()
    moving = FrameJob(CountingRenderer(), POSE, (13, 9), BOUNDS, chunk=256, device=torch.device("cpu"), grid=(20, 24))
    assert moving.advance()
    rows, cols = lattice(20, 13), lattice(24, 9)
    expected = whole.outputs()["rgb"].reshape(20, 24, 3)[rows][:, cols]
    assert torch.equal(moving.outputs()["rgb"].reshape(13, 9, 3), expected)  # the moving frame is full-frame pixels
    fn_full = CountingRenderer()
    full = FrameJob(fn_full, POSE, (20, 24), BOUNDS, chunk=256, device=torch.device("cpu"), full=True, reuse=moving)
    assert full.advance()
    assert fn_full.rays == 20 * 24 - 13 * 9  # only the pixels the moving frame lacks
    for k, v in whole.outputs().items():
        assert torch.equal(full.outputs()[k], v)
    assert np.array_equal(full.image("rgb"), whole.image("rgb"))
    other = ViewPose(POSE.wxyz, (0.0, 0.1, -3.0), POSE.fov, POSE.aspect)
    fn_other = CountingRenderer()
    FrameJob(fn_other, other, (20, 24), BOUNDS, chunk=256, device=torch.device("cpu"), reuse=moving).advance()
    assert fn_other.rays == 20 * 24  # another camera: nothing to reuse
    with pytest.raises(ValueError):
        FrameJob(fn, POSE, (21, 24), BOUNDS, chunk=256, device=torch.device("cpu"), grid=(20, 24))


def test_colorize_outputs():
    out = {"rgb": torch.rand(12, 3), "depth": torch.linspace(1, 2, 12), "opacity": torch.full((12,), 0.5)}
    for name in ("rgb", "depth", "opacity"):
        assert colorize(out, name, 3, 4).shape == (3, 4, 3)
    assert colorize(out, "opacity", 3, 4).max() == 128


def test_moving_resolution_follows_the_measured_speed():
    rate = PixelRate()
    rate.update(100_000, 1.0)  # 100k pixels per second
    res = Resolution(max_res=512, target_fps=10)
    h, w = res.moving(rate.rate, 1.0)
    assert abs(h * w - 10_000) < 300  # 100k / 10 fps
    assert res.still(1.0) == (512, 512)
    rate.update(400_000, 1.0)
    assert rate.rate == pytest.approx(0.7 * 100_000 + 0.3 * 400_000)


def test_moving_frames_leave_room_for_the_frames_fixed_cost():
    """A frame that costs 40 ms besides its rays gets the pixels of the other 60 ms at 10 FPS;
    an overhead beyond the frame time still leaves a quarter of it."""
    res = Resolution(max_res=4096, target_fps=10)
    rate = PixelRate()
    for _ in range(30):
        rate.update_overhead(0.04)
    assert rate.overhead == pytest.approx(0.04, rel=1e-3)
    h, w = res.moving(1_000_000, 1.0, rate.overhead)
    assert abs(h * w - 60_000) < 1000
    h, w = res.moving(1_000_000, 1.0, 0.5)
    assert abs(h * w - 25_000) < 500


def test_view_state_plans_moving_frames_then_the_full_frame():
    s = ViewState()
    assert s.plan(0.0, 0.2)[0] is None  # no camera yet
    for i in range(20):  # the browser sends updates every 40 ms while the camera moves
        s.set_pose(POSE, now=10.0 + 0.04 * i)
    now = s.changed_at
    assert s.plan(now + 0.01, 0.2)[0] == "moving"
    v = s.version
    s.set_pose(POSE, now=now + 0.04)  # the camera moved while that frame rendered
    s.sent(v, False, now + 0.05)
    assert s.plan(now + 0.05, 0.2)[0] == "moving"  # the newest camera first gets its moving frame
    s.sent(s.version, False, now + 0.07)
    assert s.plan(now + 0.07, 0.2) == ("full", 0.0)  # then its full frame at once, not after a pause
    s.sent(s.version, True, now + 0.2)
    assert s.plan(now + 1.0, 0.2) == (None, math.inf)
    s.set_pose(POSE, now=now + 2.0)
    assert s.plan(now + 2.3, 0.2)[0] == "full"  # a change left unrendered for still_seconds: full at once
    s.sent(s.version, True, now + 2.4)
    s.invalidate()  # e.g. another output: the still camera gets a full frame at once
    assert s.plan(now + 3.0, 0.2)[0] == "full"
    assert s.fps(now + 2.5) == 1.0  # frames sent in the last second
