"""The viser server: one :class:`ClientSession` per browser (its camera, its panel, its frames),
rendering what a :class:`ViewerContent` says can render the scene.

Two ways to drive the rendering:

- ``threaded`` (``turbonerf view``): each client has a thread that waits for a camera change,
  renders (moving frames at the adaptive resolution, the full frame once the camera is still,
  abandoned between chunks when the camera moves again) and sends the JPEG; renders of several
  clients take turns on one lock (two marchers racing for two cores help nobody);
- driven (``train --viewer``): nothing renders until :meth:`ViewerServer.render_for` is called,
  between training steps, with the time it may use; a frame is then rendered over as many calls
  as it needs.

Only this module imports viser.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import math
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from turbonerf.cameras import Cameras
from turbonerf.errors import TurboNerfError
from turbonerf.render.renderer import RenderFn
from turbonerf.viewer.camera import ViewPose, frame_size, pose_from_cameras, quat_to_matrix, scene_up
from turbonerf.viewer.frames import OUTPUTS, FrameJob, PixelRate, Resolution, SceneBounds, ViewState


@dataclass
class RenderSource:
    """One way to render the scene, built on first use.

    Attributes:
        label: what the panel's renderer dropdown shows.
        make: () -> RenderFn, called once, when the source is first selected.
    """

    label: str
    make: Callable[[], RenderFn]


@dataclass
class ViewerContent:
    """What the viewer shows: the ways to render it (the first is the default), the cameras to
    snap to (test cameras first: the view starts at the first one), and the scene's bounds."""

    sources: list[RenderSource]
    train_cameras: Cameras
    test_cameras: Cameras
    bounds: SceneBounds
    title: str = "turbonerf"


@dataclass
class ViewerOptions:
    """How the viewer serves and renders."""

    host: str = "127.0.0.1"
    port: int = 7007
    """0: any free port (see :attr:`ViewerServer.port`)"""
    resolution: Resolution = field(default_factory=Resolution)
    still_seconds: float = 0.2
    """a camera change left unrendered this long is rendered at full resolution (see ViewState.plan)"""
    chunk_seconds: float = 0.02
    """rays per render call are sized to take about this long (how soon a render can be abandoned)"""
    jpeg_quality: int = 85
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    bf16: bool = False
    threaded: bool = True
    """False: rendering happens only in :meth:`ViewerServer.render_for` (live training)"""
    rate_scale: float = 1.0
    """fraction of the time that goes to rendering (driven mode): moving frames get
    rate * rate_scale / target_fps pixels"""
    max_frame_seconds: float = math.inf
    """driven mode: a full frame is made smaller so that it takes at most this long (wall clock,
    at ``rate_scale``)"""
    panel_hz: float = 4.0


def is_loopback(host: str) -> bool:
    """True for an address only this machine can reach (127.0.0.0/8, ::1, 'localhost')."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def orbit_centre(cameras: Cameras) -> np.ndarray:
    """[3] the point closest (least squares) to all cameras' optical axes, or a point in front of
    them when the axes are near parallel (forward-facing captures)."""
    c2w = cameras.c2w.double().cpu().numpy()
    origins, forward = c2w[:, :, 3], -c2w[:, :, 2]
    forward /= np.linalg.norm(forward, axis=1, keepdims=True)
    proj = np.eye(3)[None] - forward[:, :, None] * forward[:, None, :]  # [N, 3, 3]
    a, b = proj.sum(0), (proj @ origins[:, :, None]).sum(0)[:, 0]
    if np.linalg.cond(a) > 1e4:
        return origins.mean(0) + forward.mean(0)
    return np.linalg.solve(a, b)


FIRST_FRAME_PIXELS = 4096
"""the first frame of a renderer is this small: it measures the render speed the next ones are sized by"""


class ClientSession:
    """One browser: its view state, its panel, its frames (and in threaded mode its thread)."""

    def __init__(self, viewer: "ViewerServer", client):
        self.viewer = viewer
        self.client = client
        self.state = ViewState()
        self.cond = threading.Condition()
        self.rates: dict[str, PixelRate] = {}
        self.job: FrameJob | None = None
        self.job_version = -1
        self.last_moving: FrameJob | None = None
        """the last moving frame sent, whose pixels the full frame of the same camera reuses"""
        self.last_moving_version = -1
        self.closed = False
        self.last_panel = 0.0
        self.last_ms = float("nan")
        self.last_size = ""
        self.frames_sent = 0
        self.training_text = ""
        self._build_panel()
        self._add_frustums()
        client.camera.on_update(self._on_camera)
        self.snap(0)
        self.thread = None
        if viewer.options.threaded:
            self.thread = threading.Thread(target=self._serve, name=f"viewer-client-{client.client_id}", daemon=True)
            self.thread.start()

    # ---- panel -------------------------------------------------------------------------------

    def _build_panel(self) -> None:
        gui, content = self.client.gui, self.viewer.content
        self.output = gui.add_dropdown("output", OUTPUTS, initial_value="rgb")
        self.source = gui.add_dropdown("renderer", [s.label for s in content.sources], initial_value=content.sources[0].label)
        max_res = self.viewer.options.resolution.max_res
        self.max_res = gui.add_slider("max resolution", min=32, max=max(2048, max_res), step=16, initial_value=max_res,
                                      hint="longer side of the frame once the camera stops")
        for control in (self.output, self.source, self.max_res):
            control.on_update(lambda _: self.invalidate())
        self.camera_names = self.viewer.camera_names()
        self.camera_pick = gui.add_dropdown("camera", self.camera_names, initial_value=self.camera_names[0])
        go = gui.add_button("go to camera")
        go.on_click(lambda _: self.snap(self.camera_names.index(self.camera_pick.value)))
        self.show_frustums = gui.add_checkbox("training cameras", initial_value=True)
        self.show_frustums.on_update(lambda _: self._toggle_frustums())
        self.stats = gui.add_markdown("waiting for the first frame")

    def _add_frustums(self) -> None:
        cams = self.viewer.content.train_cameras
        scale = self.viewer.frustum_scale
        self.frustums = []
        for i in range(len(cams)):
            pose = pose_from_cameras(cams, i)
            self.frustums.append(self.client.scene.add_camera_frustum(
                f"/train_cameras/{i:04d}", fov=pose.fov, aspect=pose.aspect, scale=scale, thickness=1.5, thickness_units="screen",
                wxyz=np.array(pose.wxyz), position=np.array(pose.position), color=(40, 90, 200),
            ))

    def _toggle_frustums(self) -> None:
        for f in self.frustums:
            f.visible = bool(self.show_frustums.value)

    def _update_panel(self, now: float, force: bool = False) -> None:
        if not force and now - self.last_panel < 1.0 / self.viewer.options.panel_hz:
            return
        self.last_panel = now
        res = self.last_size or "-"
        lines = [
            f"**resolution** {res}",
            f"**FPS** {self.state.fps(now):.1f}",
            f"**ms per frame** {self.last_ms:.0f}",
            f"**frames** {self.frames_sent}",
        ]
        if self.training_text:
            lines.append(self.training_text)
        self.stats.content = "  \n".join(lines)

    # ---- camera ------------------------------------------------------------------------------

    def _on_camera(self, camera) -> None:
        pose = ViewPose(tuple(camera.wxyz), tuple(camera.position), float(camera.fov),
                        float(camera.aspect) if camera.image_height else 1.0)
        with self.cond:
            self.state.set_pose(pose, time.perf_counter())
            self.cond.notify_all()

    def snap(self, index: int) -> None:
        """Move this client's camera to camera ``index`` of :meth:`ViewerServer.camera_names`."""
        pose = self.viewer.camera_pose(index)
        rot = quat_to_matrix(pose.wxyz)  # OpenCV axes: z forward, y down
        position = np.asarray(pose.position)
        distance = max(float(np.linalg.norm(self.viewer.centre - position)), 1e-3)
        camera = self.client.camera
        with self.client.atomic():
            camera.fov = pose.fov
            camera.up_direction = -rot[:, 1]
            camera.position = position
            camera.look_at = position + rot[:, 2] * distance
        aspect = float(camera.aspect) if camera.image_height else pose.aspect
        with self.cond:
            self.state.set_pose(ViewPose(pose.wxyz, pose.position, pose.fov, aspect), time.perf_counter())
            self.cond.notify_all()

    def invalidate(self) -> None:
        """Render again (output or renderer changed)."""
        with self.cond:
            self.state.invalidate()
            self.cond.notify_all()

    def refresh(self) -> None:
        """Render again because the model changed, unless a frame is still on its way (a frame
        that takes longer than the refresh period must not be restarted forever)."""
        with self.cond:
            if self.state.shown_version == self.state.version:
                self.state.invalidate()
                self.cond.notify_all()

    # ---- rendering ---------------------------------------------------------------------------

    def _rate(self) -> PixelRate:
        return self.rates.setdefault(self.source.value, PixelRate())

    def _new_job(self, kind: str) -> FrameJob:
        opts, pose = self.viewer.options, self.state.pose
        resolution = dataclasses.replace(opts.resolution, max_res=int(self.max_res.value))
        rate = self._rate().rate * opts.rate_scale
        full = resolution.still(pose.aspect)
        if math.isfinite(opts.max_frame_seconds) and full[0] * full[1] > rate * opts.max_frame_seconds:
            full = resolution.moving(rate * opts.max_frame_seconds * resolution.target_fps, pose.aspect)
        if not self._rate().measured:  # a first small frame measures the render speed
            size = frame_size(FIRST_FRAME_PIXELS, pose.aspect, resolution.max_res)
        elif kind == "moving":
            size = resolution.moving(rate, pose.aspect, self._rate().overhead)
        else:
            size = full
        grid = full if size[0] <= full[0] and size[1] <= full[1] else size  # a moving frame: pixels of the full one
        reuse = self.last_moving if kind == "full" and self.last_moving_version == self.state.version else None
        chunk = int(self._rate().rate * opts.chunk_seconds)
        render_fn = self.viewer.render_fn(self.source.value)
        return FrameJob(render_fn, pose, size, self.viewer.content.bounds, chunk, opts.device, opts.bf16,
                        full=kind == "full", grid=grid, reuse=reuse)

    def next_job(self, now: float) -> tuple[FrameJob | None, float]:
        """The frame to work on now (continuing an unfinished one when it is still wanted), or
        (None, seconds to wait)."""
        with self.cond:
            if self.closed:
                return None, math.inf
            kind, wait = self.state.plan(now, self.viewer.options.still_seconds)
            if self.job is not None and not self.job.finished and self.job_version == self.state.version:
                return self.job, 0.0
            if kind is None:
                return None, wait
            self.job, self.job_version = self._new_job(kind), self.state.version
            return self.job, 0.0

    def wanted(self, job: FrameJob) -> bool:
        """Whether ``job`` is still worth finishing: a full frame is abandoned when the camera
        moves; a moving frame is short by design and always finished."""
        return not self.closed and (not job.full or self.job_version == self.state.version)

    def work(self, job: FrameJob, deadline: float = math.inf) -> float:
        """Advance ``job`` until done (then send it), abandoned, or ``deadline``; returns the
        seconds spent."""
        t0 = time.perf_counter()
        rays = job.done_rays
        done = job.advance(deadline, stop=lambda: not self.wanted(job))
        if job.done_rays > rays:  # the render speed, measured on every chunk (a frame may never finish)
            self._rate().update(job.done_rays - rays, time.perf_counter() - t0)
        if done and self.wanted(job):
            self._send(job)
        elif not self.wanted(job):
            self.job = None
        return time.perf_counter() - t0

    def _send(self, job: FrameJob) -> None:
        t0 = time.perf_counter()
        image = job.image(self.output.value)
        self.client.scene.set_background_image(image, format="jpeg", jpeg_quality=self.viewer.options.jpeg_quality)
        now = time.perf_counter()
        self._rate().update_overhead(job.setup_seconds + (now - t0))
        seconds = job.seconds + (now - t0)
        self.last_ms = 1000.0 * seconds
        self.last_size = f"{job.width} x {job.height} ({'full' if job.full else 'moving'})"
        self.frames_sent += 1
        with self.cond:
            self.state.sent(self.job_version, job.full, now)
            self.last_moving, self.last_moving_version = (None, -1) if job.full else (job, self.job_version)
            self.job = None
        self._update_panel(now, force=job.full)

    def _serve(self) -> None:
        """Threaded mode: render whenever there is something to render, until closed."""
        while not self.closed and not self.viewer.stopping:
            job, wait = self.next_job(time.perf_counter())
            if job is None:
                with self.cond:
                    if not self.closed and self.state.version == self.state.shown_version:
                        self.cond.wait(timeout=min(wait, 0.5))
                self._update_panel(time.perf_counter())
                continue
            try:
                with self.viewer.render_lock:
                    self.work(job)
            except Exception as err:  # a broken renderer must not kill the server: say it in the panel
                self.stats.content = f"**render failed**: {type(err).__name__}: {err}"
                with self.cond:
                    self.job = None
                    self.state.sent(self.job_version, True, time.perf_counter())

    def close(self) -> None:
        with self.cond:
            self.closed = True
            self.cond.notify_all()
        if self.thread is not None and self.thread is not threading.current_thread():
            self.thread.join(timeout=5.0)


class ViewerServer:
    """A viser server showing ``content`` to every browser that connects.

    Attributes:
        url: http://host:port/ as bound.
        port: the port actually bound (``options.port`` 0 picks a free one).
    """

    def __init__(self, content: ViewerContent, options: ViewerOptions):
        try:
            import viser
        except ImportError:
            raise TurboNerfError("the viewer needs viser: pip install 'turbonerf[viewer]'") from None
        if not content.sources:
            raise ValueError("the viewer needs at least one render source")
        self.content = content
        self.options = options
        self.stopping = False
        self.render_lock = threading.Lock()
        self._built: dict[str, RenderFn] = {}
        self._build_lock = threading.Lock()
        self.sessions: dict[int, ClientSession] = {}
        self._sessions_lock = threading.Lock()
        cams = self._all_cameras()
        self.centre = orbit_centre(cams)
        dists = np.linalg.norm(cams.c2w[:, :, 3].double().numpy() - self.centre, axis=1)
        self.frustum_scale = float(0.08 * np.median(dists)) if len(dists) else 0.1
        self.server = viser.ViserServer(host=options.host, port=options.port, label=content.title, verbose=False)
        self.server.scene.set_up_direction(tuple(scene_up(content.train_cameras if len(content.train_cameras) else cams)))
        self._set_initial_camera()
        self.server.on_client_connect(self._connect)
        self.server.on_client_disconnect(self._disconnect)

    @property
    def port(self) -> int:
        return self.server.get_port()

    @property
    def url(self) -> str:
        host = self.options.host
        return f"http://{'[' + host + ']' if ':' in host else host}:{self.port}/"

    def _all_cameras(self) -> Cameras:
        test, train = self.content.test_cameras, self.content.train_cameras
        if len(test) == 0:
            return train
        if len(train) == 0 or (test.width, test.height) != (train.width, train.height):
            return test
        return Cameras(torch.cat([test.c2w, train.c2w]), torch.cat([test.fx, train.fx]), torch.cat([test.fy, train.fy]),
                       torch.cat([test.cx, train.cx]), torch.cat([test.cy, train.cy]), test.width, test.height)

    def camera_names(self) -> list[str]:
        """'test 0', 'test 1', ..., 'train 0', ...: the cameras one can snap to."""
        return [f"test {i}" for i in range(len(self.content.test_cameras))] + [
            f"train {i}" for i in range(len(self.content.train_cameras))]

    def camera_pose(self, index: int) -> ViewPose:
        n_test = len(self.content.test_cameras)
        if index < n_test:
            return pose_from_cameras(self.content.test_cameras, index)
        return pose_from_cameras(self.content.train_cameras, index - n_test)

    def _set_initial_camera(self) -> None:
        pose = self.camera_pose(0)
        rot = quat_to_matrix(pose.wxyz)
        position = np.asarray(pose.position)
        distance = max(float(np.linalg.norm(self.centre - position)), 1e-3)
        initial = self.server.initial_camera
        initial.fov = pose.fov
        initial.up = tuple(-rot[:, 1])
        initial.position = tuple(position)
        initial.look_at = tuple(position + rot[:, 2] * distance)

    def render_fn(self, label: str) -> RenderFn:
        """The render function of source ``label``, built on first use."""
        with self._build_lock:
            if label not in self._built:
                source = next(s for s in self.content.sources if s.label == label)
                self._built[label] = source.make()
            return self._built[label]

    def _connect(self, client) -> None:
        session = ClientSession(self, client)
        with self._sessions_lock:
            if self.stopping:
                session.close()
                return
            self.sessions[client.client_id] = session

    def _disconnect(self, client) -> None:
        with self._sessions_lock:
            session = self.sessions.pop(client.client_id, None)
        if session is not None:
            session.close()

    def clients(self) -> list[ClientSession]:
        with self._sessions_lock:
            return list(self.sessions.values())

    def refresh_all(self) -> None:
        """Every client renders again once its current frame is out (the model changed)."""
        for s in self.clients():
            s.refresh()

    def set_training_text(self, text: str) -> None:
        """A line for every panel (live training: step, loss, PSNR)."""
        now = time.perf_counter()
        for s in self.clients():
            s.training_text = text
            s._update_panel(now)

    def render_for(self, seconds: float) -> float:
        """Driven mode: render for about ``seconds`` (frames of several clients in turn; a frame
        may take several calls); returns the seconds spent (at least one chunk is rendered when
        there is work, so it may overshoot by one chunk)."""
        t0 = time.perf_counter()
        deadline = t0 + seconds
        for session in self.clients():
            now = time.perf_counter()
            if now >= deadline:
                break
            job, _ = session.next_job(now)
            if job is not None:
                session.work(job, deadline)
        return time.perf_counter() - t0

    def stop(self) -> None:
        """Close every session (joining their threads) and the server."""
        with self._sessions_lock:
            self.stopping = True
            sessions = list(self.sessions.values())
            self.sessions.clear()
        for s in sessions:
            s.close()
        self.server.stop()
