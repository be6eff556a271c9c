"""``turbonerf view`` and ``train --viewer``; the browser test opens the viewer in headless Chromium."""

import ipaddress
import os
import socket
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import TINY_VANILLA
from turbonerf.app import train as tr
from turbonerf.app.bake import BakeOptions, bake_run
from turbonerf.app.runs import TreeOptions, read_run_spec
from turbonerf.app.view import ViewOptions, render_sources, run_cameras, scene_bounds, start_view, warn_if_exposed
from turbonerf.cli.main import main
from turbonerf.data.synthetic import write_tiny_blender_scene
from turbonerf.errors import TurboNerfError
from turbonerf.viewer.browser import BrowserClient, browser_processes, browser_unavailable, lower_priority
from turbonerf.viewer.camera import pose_from_cameras
from turbonerf.viewer.frames import FrameJob

pytest.importorskip("viser", reason="the viewer needs viser (pip install 'turbonerf[viewer]')")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    """A vanilla NeRF trained 30 steps on the 16x16 sphere scene."""
    root = tmp_path_factory.mktemp("view")
    scene = write_tiny_blender_scene(root / "scene", n_train=4, n_test=2, size=16)
    tr.train(tr.TrainOptions(method="vanilla-nerf", data=scene, out=root / "run", overrides=TINY_VANILLA, batch_rays=128,
                             max_steps=30, progress=False))
    return root / "run"


def listening_addresses(port: int) -> set[str]:
    """Local addresses with a TCP socket listening on ``port`` (from /proc/net/tcp and tcp6)."""
    found = set()
    for table, v6 in (("/proc/net/tcp", False), ("/proc/net/tcp6", True)):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            local, state = line.split()[1], line.split()[3]
            addr_hex, port_hex = local.split(":")
            if state != "0A" or int(port_hex, 16) != port:
                continue
            raw = bytes.fromhex(addr_hex)
            raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))  # each 32-bit word is little-endian
            found.add(str(ipaddress.ip_address(raw)))
    return found


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/net/tcp")
def test_view_listens_on_loopback_only_by_default(tiny_run):
    server = start_view(tiny_run, ViewOptions(port=0))
    try:
        assert listening_addresses(server.port) == {"127.0.0.1"}
        assert server.url == f"http://127.0.0.1:{server.port}/"
        with pytest.raises(OSError):  # and not on this machine's other addresses
            other = socket.gethostbyname(socket.gethostname())
            if ipaddress.ip_address(other).is_loopback:
                raise OSError("no non-loopback address to try")
            socket.create_connection((other, server.port), timeout=1).close()
    finally:
        server.stop()


def test_another_host_is_served_with_a_warning(capsys):
    warn_if_exposed("127.0.0.1")
    assert capsys.readouterr().err == ""
    warn_if_exposed("0.0.0.0")
    assert "warning: the viewer listens on 0.0.0.0" in capsys.readouterr().err


def test_the_view_command_reports_a_bad_run_in_one_line(tmp_path, capsys):
    assert main(["view", "--run", str(tmp_path / "nope"), "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "run folder does not exist" in err and len(err.strip().splitlines()) == 1


def test_view_refuses_a_missing_tree_and_bad_options(tiny_run):
    with pytest.raises(TurboNerfError, match="no baked tree"):
        start_view(tiny_run, ViewOptions(port=0, baked=True))
    with pytest.raises(TurboNerfError, match="--max-res"):
        start_view(tiny_run, ViewOptions(port=0, max_res=0))


def test_a_baked_run_offers_its_tree_first_and_its_model(tiny_run):
    tree = tiny_run / "baked" / "tree_view_test.safetensors"
    bake_run(tiny_run, BakeOptions(out=tree, coarse_res=16, fine_res=2, threshold=0.0, progress=False))
    spec = read_run_spec(tiny_run)
    cpu = torch.device("cpu")
    baked = render_sources(tiny_run, spec, ViewOptions(tree=TreeOptions(tree)), cpu)
    assert [s.label for s in baked] == ["baked tree (tree_view_test.safetensors)", "model (vanilla-nerf)"]
    plain = render_sources(tiny_run, spec, ViewOptions(), cpu)
    assert [s.label for s in plain] == ["model (vanilla-nerf)"]  # the tree is not at the default path
    train, test = run_cameras(spec)
    job = FrameJob(baked[0].make(), pose_from_cameras(test, 0), (12, 12), scene_bounds(spec, train), 64, cpu)
    assert job.advance() and job.image("rgb").shape == (12, 12, 3)


def test_train_with_the_viewer_uses_the_loop_callback(tiny_scene, tmp_path):
    res = tr.train(tr.TrainOptions(method="vanilla-nerf", data=tiny_scene, out=tmp_path / "run", overrides=TINY_VANILLA,
                                   batch_rays=64, max_steps=5, progress=False, viewer=ViewOptions(port=0)))
    assert res.step == 5


def patch(img: np.ndarray, fy: float, fx: float, r: int = 2) -> np.ndarray:
    y, x = int(fy * img.shape[0]), int(fx * img.shape[1])
    return img[max(y - r, 0):y + r + 1, max(x - r, 0):x + r + 1].reshape(-1, 3).mean(0)


def wait_for_full_frame(browser: BrowserClient, width: int, after: float, timeout: float = 60.0) -> bool:
    end = time.perf_counter() + timeout
    while time.perf_counter() < end:
        if any(f.t > after and f.width == width for f in browser.frames):
            return True
        browser.pump(0.05)
    return False


def test_the_viewer_in_a_real_browser(tiny_run):
    """Headless Chromium opens the page, the first frame arrives and is drawn (the canvas shows the
    rendered frame, not the empty viewer's background), a camera moved from the server side
    brings a new frame and the page changes; a second tab is served too."""
    reason = browser_unavailable()
    if reason:
        pytest.skip(f"browser test skipped: {reason}")
    server = start_view(tiny_run, ViewOptions(port=0, max_res=64, bf16=False))  # fp32: faster for a tiny MLP
    try:
        with BrowserClient(server.url, viewport=(1024, 768)) as browser:
            t0 = time.perf_counter()
            assert browser.wait_for_frames(1, timeout=60), "no frame reached the browser"
            session = server.clients()[0]
            session.show_frustums.value = False  # the toggle: nothing drawn over the frame
            assert not any(f.visible for f in session.frustums)
            assert wait_for_full_frame(browser, 64, t0), "no full-resolution frame"
            empty = np.array([255.0, 255.0, 255.0])  # viser's empty canvas, and this scene's background
            paint_deadline = time.perf_counter() + 20.0  # a loaded machine may paint the received frame late
            while True:
                browser.pump(0.5)
                shot = browser.screenshot()
                frame = browser.last_image
                y, x = shot.shape[0] / 2, shot.shape[1] * 0.4  # the canvas left of the panel (which sits on the right)
                drawn = patch(shot, y / shot.shape[0], x / shot.shape[1])
                sent = patch(frame, y / shot.shape[0], x / shot.shape[1])
                if np.abs(drawn - empty).max() > 20 or time.perf_counter() > paint_deadline:
                    break
            assert np.abs(sent - empty).max() > 20, f"the rendered frame is background-white there ({sent})"
            # headless Chromium (SwiftShader) shows JPEG backgrounds lighter than they are (a flat 128 grey shows
            # as 152; PNG shows exact), so the page is compared with the empty canvas, not with the frame's values
            assert np.abs(drawn - empty).max() > 20, f"the canvas shows the empty background ({drawn}); the frame has {sent}"

            t1 = time.perf_counter()
            camera = session.client.camera  # moved from the server side: the browser's camera steps towards the
            camera.position = np.asarray(camera.position) * 0.6 + np.array([0.3, 0.0, 0.2])  # sphere and aside
            assert wait_for_full_frame(browser, 64, t1), "no new frame after the camera moved"
            browser.pump(0.5)
            moved = browser.screenshot()
            region = (slice(100, 700), slice(50, 650))
            diff = np.abs(moved[region].astype(float) - shot[region].astype(float)).mean()
            assert diff > 2.0, f"the page did not change after the camera moved (mean difference {diff:.2f})"

            browser.open_another_tab()  # a second client gets its own session and frames
            end = time.perf_counter() + 60
            while time.perf_counter() < end and not (len(server.clients()) == 2 and all(c.frames_sent for c in server.clients())):
                browser.pump(0.1)
            assert len(server.clients()) == 2 and all(c.frames_sent for c in server.clients())

            # the harness finds the browser's processes and can lower their priority (viewer_fps --browser-nice)
            chromium = browser_processes(os.getpid())
            assert chromium and lower_priority(chromium, 5) >= len(chromium)
    finally:
        server.stop()
