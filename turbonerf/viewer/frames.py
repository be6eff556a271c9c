"""Render scheduling, independent of viser: one frame rendered chunk by chunk (so it can be
abandoned or spread over training steps), the measured render speed, the adaptive resolution
rule and the per-client decision of what to render next.

The rule (nerfstudio's, plus the fixed cost of a frame): while the camera moves, a frame has
``pixels = pixels_per_second x (1 / target_fps - overhead)`` pixels, with the speed measured on
every rendered chunk and the overhead (making the frame's rays, colouring, JPEG encoding,
sending) on every frame sent;
the full-resolution frame is started as soon as the latest camera has its moving frame and no
newer camera came (:meth:`ViewState.plan`): the server does not wait to learn that the camera
stopped, it renders the full frame in the time it would otherwise wait for the next camera update,
and abandons it between chunks when the camera moves again.

A moving frame is made of pixels of the full frame (:func:`lattice`: the full frame's pixels nearest
to a smaller frame's pixel centres), so the full frame that follows it at the same camera renders
only the pixels the moving frame did not (``FrameJob(reuse=...)``).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from torch import Tensor

from turbonerf.engine import runtime
from turbonerf.io.media import depth_to_png, to_uint8
from turbonerf.rays import RayBundle, make_rays
from turbonerf.render.renderer import RenderFn
from turbonerf.viewer.camera import ViewPose, frame_size, full_size, view_cameras

OUTPUTS = ("rgb", "depth", "opacity")
DEFAULT_TARGET_FPS = 20.0
"""frame rate kept while the camera moves: on a baked lego tree 15 gave both fewer frames and a
later full frame than 20 (BENCHMARKS.md, the viewer and the browser's CPU share)"""


@dataclass(frozen=True)
class SceneBounds:
    """What turns a view camera into rays: near / far, NDC (and the training focal ratios that
    define it), the background colour."""

    near: float
    far: float
    ndc: bool
    background: Tensor
    """[3] in [0, 1]"""
    ndc_focal: tuple[float, float] | None = None


def colorize(outputs: dict[str, Tensor], output: str, height: int, width: int) -> np.ndarray:
    """Rendered rays -> uint8 [H, W, 3] image of ``output`` (rgb, depth through a colormap, or
    opacity as grey)."""
    if output == "rgb":
        return to_uint8(outputs["rgb"].reshape(height, width, 3).clamp(0, 1))
    opacity = outputs["opacity"].reshape(height, width)
    if output == "depth":
        return depth_to_png(outputs["depth"].reshape(height, width), opacity)
    grey = to_uint8(opacity.clamp(0, 1))
    return np.repeat(grey[..., None], 3, axis=-1)


def lattice(full: int, n: int) -> Tensor:
    """[n] (long) indices of the pixels, among ``full`` in a row or column, nearest to the
    centres of ``n <= full`` evenly spaced ones: the rows or columns of an n-pixel frame taken
    from a full-pixel frame of the same camera (off by at most half a full pixel)."""
    return ((torch.arange(n, dtype=torch.float64) + 0.5) * (full / n)).floor().long().clamp(0, full - 1)


class FrameJob:
    """One frame being rendered: the rays of a view camera, rendered ``chunk`` rays at a time.

    :meth:`advance` renders chunks until the frame is done, a deadline passes or ``stop()`` says
    the frame is no longer wanted (checked between chunks), so a render can be abandoned when the
    camera moves, or spread over training steps. Rendering runs without gradients, under bf16
    autocast when ``bf16``.

    The frame's pixels are pixels of a ``grid`` frame of the same camera (default: ``size``
    itself), on :func:`lattice` rows and columns when ``size`` is smaller. ``reuse``: a
    finished frame of the same camera and grid whose pixels a frame of the grid's size takes
    instead of rendering them again (a full frame after its moving frame).
    """

    def __init__(self, render_fn: RenderFn, pose: ViewPose, size: tuple[int, int], bounds: SceneBounds,
                 chunk: int, device: torch.device, bf16: bool = False, full: bool = False,
                 grid: tuple[int, int] | None = None, reuse: "FrameJob | None" = None):
        self.render_fn = render_fn
        self.pose = pose
        self.height, self.width = size
        self.grid = grid or size
        if self.height > self.grid[0] or self.width > self.grid[1]:
            raise ValueError(f"a {size} frame cannot take its pixels from a {self.grid} one")
        self.full = full
        self.device = device
        self.bf16 = bf16
        self.background = bounds.background.to(device)
        t0 = time.perf_counter()
        grid_h, grid_w = self.grid
        rows, cols = lattice(grid_h, self.height), lattice(grid_w, self.width)
        self.pixel_ids = (rows[:, None] * grid_w + cols[None, :]).reshape(-1)
        """[h * w] the grid pixel of each of this frame's pixels, row-major"""
        self.reuse = reuse if (reuse is not None and reuse.finished and reuse.grid == self.grid == tuple(size)
                               and reuse.pose == pose) else None
        if self.reuse is not None:  # render only what the reused frame lacks, in this frame's order
            have = torch.zeros(grid_h * grid_w, dtype=torch.bool)
            have[self.reuse.pixel_ids] = True
            render_ids = self.pixel_ids[~have[self.pixel_ids]]
        else:
            render_ids = self.pixel_ids
        self.render_ids = render_ids
        """[R] the grid pixels this job renders"""
        cams = view_cameras(pose, grid_h, grid_w, bounds.ndc_focal if bounds.ndc else None)
        idx = torch.zeros(len(render_ids), dtype=torch.long)
        self.rays: RayBundle = make_rays(cams, idx, render_ids % grid_w, render_ids // grid_w, bounds.near, bounds.far, bounds.ndc).to(device)
        self.setup_seconds = time.perf_counter() - t0
        """time spent making the rays"""
        self.chunk = max(int(chunk), 256)
        self.parts: dict[str, list[Tensor]] = {}
        self.done_rays = 0
        self.seconds = 0.0
        """time spent rendering this frame so far (over all advance calls)"""

    @property
    def finished(self) -> bool:
        return self.done_rays >= len(self.rays)

    @torch.no_grad()
    def advance(self, deadline: float = math.inf, stop: Callable[[], bool] = lambda: False) -> bool:
        """Render chunks until done (returns True), ``time.perf_counter()`` passes ``deadline`` or
        ``stop()`` is true (returns False; call again to continue). At least one chunk is rendered
        per call unless ``stop()`` is already true."""
        while not self.finished:
            if stop():
                return False
            t0 = time.perf_counter()
            end = min(self.done_rays + self.chunk, len(self.rays))
            with runtime.autocast(self.device, self.bf16):
                out = self.render_fn(self.rays[self.done_rays:end], self.background)
            for k in OUTPUTS:
                self.parts.setdefault(k, []).append(out[k].detach().float().cpu())
            self.done_rays = end
            self.seconds += time.perf_counter() - t0
            if time.perf_counter() >= deadline and not self.finished:
                return False
        return True

    def outputs(self) -> dict[str, Tensor]:
        """The finished frame's outputs per pixel, row-major: rgb [h * w, 3], depth and opacity
        [h * w]."""
        rendered = {k: torch.cat(v, dim=0) for k, v in self.parts.items()}
        if self.reuse is None:
            return rendered
        merged = {}  # the frame is its grid here: its pixel i is grid pixel i
        for k, old in self.reuse.outputs().items():
            out = torch.empty((len(self.pixel_ids),) + old.shape[1:], dtype=old.dtype)
            if k in rendered:
                out[self.render_ids] = rendered[k]
            out[self.reuse.pixel_ids] = old
            merged[k] = out
        return merged

    def image(self, output: str) -> np.ndarray:
        """The finished frame as uint8 [H, W, 3]."""
        return colorize(self.outputs(), output, self.height, self.width)


@dataclass
class PixelRate:
    """Measured pixels (rays) per second of rendering (exponential moving average over chunks).

    Attributes:
        rate: the current estimate (a guess until the first frame is measured).
        smoothing: weight of the newest frame.
    """

    rate: float = 200_000.0
    smoothing: float = 0.3
    measured: bool = False
    overhead: float = 0.0
    """seconds a frame costs besides rendering its rays (moving average over frames sent)"""

    def update(self, pixels: int, seconds: float) -> None:
        if seconds <= 0:
            return
        new = pixels / seconds
        self.rate = new if not self.measured else (1 - self.smoothing) * self.rate + self.smoothing * new
        self.measured = True

    def update_overhead(self, seconds: float) -> None:
        """One frame's cost outside the rendering of its rays."""
        self.overhead = (1 - self.smoothing) * self.overhead + self.smoothing * max(seconds, 0.0)


@dataclass(frozen=True)
class Resolution:
    """How big frames are: ``max_res`` (longer side when still), the frame rate to keep while
    moving, the smallest side allowed."""

    max_res: int = 512
    target_fps: float = DEFAULT_TARGET_FPS
    min_side: int = 16

    def moving(self, rate: float, aspect: float, overhead: float = 0.0) -> tuple[int, int]:
        """(H, W) of a frame while the camera moves: the pixels ``rate`` renders in what is left
        of 1 / target_fps after the frame's ``overhead`` seconds (at least a quarter of it)."""
        budget = max(1.0 / self.target_fps - overhead, 0.25 / self.target_fps)
        return frame_size(rate * budget, aspect, self.max_res, self.min_side)

    def still(self, aspect: float) -> tuple[int, int]:
        """(H, W) of the full-resolution frame."""
        return full_size(aspect, self.max_res)


@dataclass
class ViewState:
    """What one browser shows and wants: its camera (with a version bumped by every change),
    when it last changed, and what the last frame sent was.

    Decisions are pure functions of this state and the clock (:meth:`plan`)."""

    pose: ViewPose | None = None
    version: int = 0
    changed_at: float = 0.0
    shown_version: int = -1
    shown_full: bool = False
    frame_times: list[float] = field(default_factory=list)
    """perf_counter times of the frames sent in the last second (the panel's FPS)"""

    def set_pose(self, pose: ViewPose, now: float) -> None:
        self.pose = pose
        self.version += 1
        self.changed_at = now

    def invalidate(self) -> None:
        """The image changes though the camera did not (output, renderer, a newer model): render
        again, at full resolution if the camera is still."""
        self.version += 1

    def plan(self, now: float, still_seconds: float) -> tuple[str | None, float]:
        """("moving" | "full" | None, seconds to wait before asking again when None).

        A camera change is rendered as a moving frame, unless it is already ``still_seconds``
        old. Once the latest camera has its moving frame, its full frame follows at once, without
        waiting to see whether the camera stopped: the browser sends camera updates every 20-60 ms
        while it moves, and waiting for a gap that long was most of the full frame's delay
        (BENCHMARKS.md). If the camera moves again the full frame is abandoned between chunks
        (:meth:`FrameJob.advance`), so a moving frame waits at most one chunk for it."""
        if self.pose is None:
            return None, math.inf
        if self.shown_version != self.version:
            return ("full" if now - self.changed_at >= still_seconds else "moving"), 0.0
        if not self.shown_full:
            return "full", 0.0
        return None, math.inf

    def sent(self, version: int, full: bool, now: float) -> None:
        self.shown_version, self.shown_full = version, full
        self.frame_times = [t for t in self.frame_times if now - t < 1.0] + [now]

    def fps(self, now: float) -> float:
        """Frames sent in the last second."""
        return float(sum(1 for t in self.frame_times if now - t < 1.0))
