"""``turbonerf view`` and ``train --viewer``: what the web viewer (:mod:`turbonerf.viewer`) shows
of a run folder, built here from the run (the viewer itself never reads a run folder).

``view`` renders with what :func:`turbonerf.app.runs.renderer_for_run` picks (the model, or with
``--baked`` / ``--tree`` a NerfTree) and offers the other where the run has it; a distilled
student run is a run like any other (its model is the student).
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from turbonerf.app.runs import CHECKPOINT, RunSpec, TreeOptions, default_tree_path, read_run_spec, renderer_for_run
from turbonerf.app.validate import require_positive
from turbonerf.cameras import Cameras
from turbonerf.data.formats import load_scene
from turbonerf.data.scene import Scene
from turbonerf.engine import runtime
from turbonerf.engine.loop import sigterm_as_keyboard_interrupt
from turbonerf.errors import TurboNerfError
from turbonerf.methods.base import Method
from turbonerf.viewer.frames import DEFAULT_TARGET_FPS, Resolution, SceneBounds
from turbonerf.viewer.live import LiveViewer
from turbonerf.viewer.server import RenderSource, ViewerContent, ViewerOptions, ViewerServer, is_loopback

DEFAULT_PORT = 7007
STUDENT_FILE = "distill.json"
"""what `turbonerf distill` leaves in a student run (app.distill.DISTILL_FILE; not imported from there:
app/distill imports app/train, which imports this module)"""


@dataclass
class ViewOptions:
    """Options of ``turbonerf view`` (and of the live viewer of ``train --viewer``)."""

    host: str = "127.0.0.1"
    """address to listen on; anything but a loopback address is served with a warning"""
    port: int = DEFAULT_PORT
    """0: any free port"""
    baked: bool = False
    tree: TreeOptions | None = None
    """the NerfTree to render with (implies ``baked``)"""
    max_res: int = 512
    """longer side of the full-resolution frame"""
    target_fps: float = DEFAULT_TARGET_FPS
    """frame rate kept while the camera moves (the resolution adapts)"""
    still_seconds: float = 0.2
    device: str = "auto"
    jpeg_quality: int = 85
    bf16: bool = False
    """bf16 autocast while a model renders (on a CPU about 2x faster for the large MLPs, slower for tiny ones)"""


def check_view_options(opts: ViewOptions) -> None:
    """A one-line error for an option that cannot work, before anything is loaded."""
    require_positive("--max-res", opts.max_res)
    if opts.target_fps <= 0:
        raise TurboNerfError(f"--target-fps must be positive, got {opts.target_fps}")
    if not 0 <= opts.port <= 65535:
        raise TurboNerfError(f"--port must be in 0..65535, got {opts.port}")
    if not 1 <= opts.jpeg_quality <= 100:
        raise TurboNerfError(f"JPEG quality must be in 1..100, got {opts.jpeg_quality}")


def scene_bounds(spec: RunSpec, train_cameras: Cameras) -> SceneBounds:
    """near / far / NDC / background of a run's scene (NDC keeps the training focal ratios)."""
    s = spec.scene
    focal = (float(train_cameras.fx[0]) / train_cameras.width, float(train_cameras.fy[0]) / train_cameras.height)
    return SceneBounds(near=s.near, far=s.far, ndc=s.ndc, background=s.background, ndc_focal=focal if s.ndc else None)


def empty_cameras(like: Cameras) -> Cameras:
    return like[torch.arange(0)]


def run_cameras(spec: RunSpec) -> tuple[Cameras, Cameras]:
    """(train, test) cameras of the run's scene at its training downscale (test may be empty)."""
    scene = load_scene(spec.scene.data, downscale=spec.scene.downscale)
    train = scene.split("train").cameras
    test = scene.splits["test"].cameras if "test" in scene.splits else empty_cameras(train)
    return train, test


def render_sources(run_dir: Path, spec: RunSpec, opts: ViewOptions, device: torch.device) -> list[RenderSource]:
    """What can render the run, the one ``renderer_for_run`` picks first (built now, so that a
    missing tree or checkpoint fails before the server starts); the other where the run has it."""
    baked = opts.baked or (opts.tree is not None and opts.tree.path is not None)
    tree_opts = opts.tree or TreeOptions()
    tree_path = Path(tree_opts.path) if tree_opts.path else default_tree_path(run_dir)
    student = (run_dir / STUDENT_FILE).is_file()
    model_label = f"{'student' if student else 'model'} ({spec.method})"
    tree_label = f"baked tree ({tree_path.name})"

    def model_fn():
        renderer = renderer_for_run(run_dir, device)
        if renderer.model.image_space:
            raise TurboNerfError(f"{spec.method} is an image-space student: it renders whole frames, and the viewer renders "
                                 "rays in progressive chunks (use `turbonerf render` for its videos)", run_dir)
        return renderer.render

    def tree_fn():
        return renderer_for_run(run_dir, device, baked=True, tree=replace(tree_opts, path=tree_path)).render

    if baked:
        if not tree_path.is_file():
            raise TurboNerfError("no baked tree here (run `turbonerf bake --run RUN` first, or give --tree)", tree_path)
        first = tree_fn()
        sources = [RenderSource(tree_label, lambda: first)]
        if (run_dir / CHECKPOINT).is_file():
            sources.append(RenderSource(model_label, model_fn))
        return sources
    first = model_fn()
    sources = [RenderSource(model_label, lambda: first)]
    if tree_path.is_file():
        sources.append(RenderSource(tree_label, tree_fn))
    return sources


def viewer_options(opts: ViewOptions, device: torch.device, **overrides) -> ViewerOptions:
    return ViewerOptions(
        host=opts.host, port=opts.port, resolution=Resolution(max_res=opts.max_res, target_fps=opts.target_fps),
        still_seconds=opts.still_seconds, jpeg_quality=opts.jpeg_quality, device=device, bf16=opts.bf16, **overrides,
    )


def warn_if_exposed(host: str) -> None:
    if not is_loopback(host):
        print(f"warning: the viewer listens on {host}: anyone who can reach this machine on that address can see the "
              "scene (the default, 127.0.0.1, plus an SSH tunnel keeps it private)", file=sys.stderr)


def start_view(run_dir: Path, opts: ViewOptions) -> ViewerServer:
    """Start serving the viewer of a run (returns at once; :meth:`ViewerServer.stop` ends it)."""
    check_view_options(opts)
    run_dir = Path(run_dir)
    spec = read_run_spec(run_dir)
    device = runtime.resolve_device(opts.device)
    runtime.configure(device, bf16=opts.bf16)
    sources = render_sources(run_dir, spec, opts, device)
    train, test = run_cameras(spec)
    content = ViewerContent(sources, train, test, scene_bounds(spec, train), title=f"turbonerf: {run_dir.name}")
    warn_if_exposed(opts.host)
    return ViewerServer(content, viewer_options(opts, device))


def serve_view(run_dir: Path, opts: ViewOptions) -> None:
    """``turbonerf view``: serve until Ctrl-C (or SIGTERM), then stop cleanly."""
    server = start_view(run_dir, opts)
    print(f"viewer of {run_dir} at {server.url} (Ctrl-C to stop)", flush=True)
    try:
        with sigterm_as_keyboard_interrupt():
            while True:
                time.sleep(0.5)
    except KeyboardInterrupt:
        print("stopping the viewer", file=sys.stderr)
    finally:
        server.stop()


LIVE_SHARE = 0.1
"""at most this fraction of the wall time of ``train --viewer`` goes to rendering"""


def start_live_viewer(model: Method, scene: Scene, spec: RunSpec, opts: ViewOptions, device: torch.device,
                      share: float = LIVE_SHARE) -> LiveViewer:
    """The training-loop callback of ``train --viewer``: the model being trained, shown in a
    driven (not threaded) viewer that renders between steps with at most ``share`` of the time."""
    check_view_options(opts)
    train = scene.split("train").cameras
    test = scene.splits["test"].cameras if "test" in scene.splits else empty_cameras(train)
    content = ViewerContent([RenderSource(f"model ({spec.method}, training)", lambda: model.render)], train, test,
                            scene_bounds(spec, train), title="turbonerf: training")
    warn_if_exposed(opts.host)
    server = ViewerServer(content, viewer_options(opts, device, threaded=False, rate_scale=share, max_frame_seconds=3.0))
    print(f"live viewer at {server.url}", file=sys.stderr, flush=True)
    return LiveViewer(server, share=share)
