"""Render scheduling, independent of viser: one frame rendered chunk by chunk (so it can be
abandoned or spread over training steps), the measured render speed, the adaptive resolution
rule and the per-client decision of what to render next.

The rule (nerfstudio's, plus the fixed cost of a frame): while the camera moves, a frame has
``pixels = pixels_per_second x (1 / target_fps - overhead)`` pixels, with the speed measured on
every rendered chunk and the overhead (making the frame's rays, colouring, JPEG encoding,
sending) on every frame sent;
once the camera stops the frame is rendered at full resolution, and that render is abandoned
between chunks when the camera moves again. "Stopped" follows the browser's own pace: no camera
update for 1.5 times the usual gap between updates (:meth:`ViewState.plan`).
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
from turbonerf.rays import RayBundle, image_ray_bundle
from turbonerf.render.renderer import RenderFn
from turbonerf.viewer.camera import ViewPose, frame_size, full_size, view_cameras

OUTPUTS = ("rgb", "depth", "opacity")
DEFAULT_TARGET_FPS = 20.0
"""frame rate kept while the camera moves: on a baked lego tree 15 gave both fewer frames and a
later full frame than 20 (BENCHMARKS.md, the viewer and the browser's CPU share)"""
MIN_PAUSE = 0.03
"""seconds without a camera update after which the camera may count as stopped"""


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


class FrameJob:
    """One frame being rendered: the rays of a view camera, rendered ``chunk`` rays at a time.

    :meth:`advance` renders chunks until the frame is done, a deadline passes or ``stop()`` says
    the frame is no longer wanted (checked between chunks), so a render can be abandoned when the
    camera moves, or spread over training steps. Rendering runs without gradients, under bf16
    autocast when ``bf16``.
    """

    def __init__(self, render_fn: RenderFn, pose: ViewPose, size: tuple[int, int], bounds: SceneBounds,
                 chunk: int, device: torch.device, bf16: bool = False, full: bool = False):
        self.render_fn = render_fn
        self.height, self.width = size
        self.full = full
        self.device = device
        self.bf16 = bf16
        self.background = bounds.background.to(device)
        t0 = time.perf_counter()
        cams = view_cameras(pose, self.height, self.width, bounds.ndc_focal if bounds.ndc else None)
        self.rays: RayBundle = image_ray_bundle(cams, 0, bounds.near, bounds.far, bounds.ndc).to(device)
        self.setup_seconds = time.perf_counter() - t0
        """time spent making the rays"""
        self.chunk = max(int(chunk), 256)
        self.parts: dict[str, list[Tensor]] = {}
        self.done_rays = 0
        self.seconds = 0.0
        """time spent rendering this frame so far (over all advance calls)"""

    @property
    def pixels(self) -> int:
        return self.height * self.width

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

    def image(self, output: str) -> np.ndarray:
        """The finished frame as uint8 [H, W, 3]."""
        outputs = {k: torch.cat(v, dim=0) for k, v in self.parts.items()}
        return colorize(outputs, output, self.height, self.width)


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
    update_gap: float = 0.05
    """seconds between camera updates while the camera moves (moving average)"""

    def set_pose(self, pose: ViewPose, now: float) -> None:
        if 0.0 < now - self.changed_at < 1.0:  # the browser's pace of camera updates while it moves
            self.update_gap = 0.7 * self.update_gap + 0.3 * (now - self.changed_at)
        self.pose = pose
        self.version += 1
        self.changed_at = now

    def pause(self, still_seconds: float) -> float:
        """How long without a camera update counts as stopped: 1.5 update gaps, within
        [MIN_PAUSE, still_seconds]."""
        return min(max(1.5 * self.update_gap, MIN_PAUSE), still_seconds)

    def invalidate(self) -> None:
        """The image changes though the camera did not (output, renderer, a newer model): render
        again, at full resolution if the camera is still."""
        self.version += 1

    def plan(self, now: float, still_seconds: float) -> tuple[str | None, float]:
        """("moving" | "full" | None, seconds to wait before asking again when None).

        A camera change is rendered as a moving frame, unless it is already ``still_seconds``
        old. The camera has stopped when no update came for :meth:`pause` (1.5 times the
        browser's own pace of updates, at most ``still_seconds``): the full frame follows, and is
        abandoned between chunks if the camera moves again."""
        if self.pose is None:
            return None, math.inf
        if self.shown_version != self.version:
            return ("full" if now - self.changed_at >= still_seconds else "moving"), 0.0
        if not self.shown_full:
            wait = self.changed_at + self.pause(still_seconds) - now
            return ("full", 0.0) if wait <= 0 else (None, wait)
        return None, math.inf

    def sent(self, version: int, full: bool, now: float) -> None:
        self.shown_version, self.shown_full = version, full
        self.frame_times = [t for t in self.frame_times if now - t < 1.0] + [now]

    def fps(self, now: float) -> float:
        """Frames sent in the last second."""
        return float(sum(1 for t in self.frame_times if now - t < 1.0))
