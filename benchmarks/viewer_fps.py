"""Is ``turbonerf view`` interactive? Frames per second at the browser while the camera moves, and
the time from the camera stopping to the full-resolution frame, measured with the browser test's
harness (headless Chromium through Playwright, :mod:`turbonerf.viewer.browser`).

The page is square (so the full frame is ``--max-res`` x ``--max-res``). Each cycle drags the
mouse over the canvas for ``--move-seconds`` (viser's orbit controls turn the camera; the browser
sends camera updates as it would for a person), then releases it: the frames that arrived during
the drag (after its first ``--warmup`` seconds) give the moving FPS and their resolutions; the
full-resolution frame of the final camera (the last frame to arrive after the last mouse move,
none following it for ``--quiet`` seconds) gives the time to the full frame, counted from the
last mouse move and from the last camera update the page sent (viser's controls ease the camera on
for a while after the mouse stops: the camera stops there).

    python benchmarks/viewer_fps.py --run runs/lego_ngp --tree runs/lego_ngp/baked/tree_192.safetensors --step-scale 2
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from turbonerf.app.runs import TreeOptions
from turbonerf.app.view import ViewOptions, start_view
from turbonerf.viewer.browser import BrowserClient, browser_unavailable
from turbonerf.viewer.frames import DEFAULT_TARGET_FPS


def drag(browser: BrowserClient, seconds: float, start: tuple[int, int], px_per_step: float = 4.0, step_ms: int = 16) -> float:
    """Hold the left button and move the mouse sideways for ``seconds``; returns the time of the
    last move (perf_counter)."""
    page = browser.page
    x, y = start
    page.mouse.move(x, y)
    page.mouse.down()
    end = time.perf_counter() + seconds
    direction = 1.0
    last = time.perf_counter()
    while time.perf_counter() < end:
        x += direction * px_per_step
        if abs(x - start[0]) > 200:
            direction = -direction
        page.mouse.move(x, y)
        last = time.perf_counter()
        page.wait_for_timeout(step_ms)
    page.mouse.up()
    return last


def cycle(browser: BrowserClient, full: int, move_seconds: float, warmup: float, settle: float, quiet: float) -> dict:
    """One drag, then the wait for the full frame of the final camera: the last frame to arrive
    (none for ``quiet`` seconds after it), if it is full-width. A full frame of an earlier camera
    (one the server had rendered before the last camera update reached it) does not count."""
    t_start = time.perf_counter()
    t_stop = drag(browser, move_seconds, (browser.viewport[0] // 3, browser.viewport[1] // 2))
    moving = [f for f in browser.frames if t_start + warmup <= f.t <= t_stop]
    end = time.perf_counter() + settle
    while time.perf_counter() < end:
        browser.pump(0.01)
        last = browser.frames[-1]
        if last.t > t_stop and last.width == full and time.perf_counter() - last.t >= quiet:
            break
    after = [f for f in browser.frames if f.t > t_stop]
    t_full = after[-1].t if after and after[-1].width == full else None
    sent = [t for t in browser.camera_updates if t_full is not None and t <= t_full]
    t_camera = sent[-1] if sent else None  # the camera stopped here: viser's controls ease it on after the mouse stops
    window = t_stop - (t_start + warmup)
    return {
        "moving_fps": len(moving) / window if window > 0 else float("nan"),
        "moving_frames": len(moving),
        "moving_median_size": statistics.median(f.width for f in moving) if moving else None,
        "full_after_stop_s": None if t_full is None else t_full - t_stop,
        "full_after_camera_stop_s": None if t_camera is None else t_full - t_camera,
        "camera_updates_after_stop": [round(t - t_stop, 4) for t in browser.camera_updates if t > t_stop],
        "frames_after_stop": [[round(f.t - t_stop, 4), f.width] for f in after],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", type=Path, required=True)
    p.add_argument("--tree", type=Path, help="NerfTree file (default: the run's model)")
    p.add_argument("--baked", action="store_true", help="the run's default tree")
    p.add_argument("--step-scale", type=float, default=1.0)
    p.add_argument("--t-min", type=float, default=None, help="NerfTree early-termination transmittance (default: the renderer's)")
    p.add_argument("--max-res", type=int, default=400)
    p.add_argument("--target-fps", type=float, default=DEFAULT_TARGET_FPS)
    p.add_argument("--still-seconds", type=float, default=0.2)
    p.add_argument("--cycles", type=int, default=3)
    p.add_argument("--move-seconds", type=float, default=4.0)
    p.add_argument("--warmup", type=float, default=1.0)
    p.add_argument("--settle", type=float, default=5.0, help="longest wait for the full frame")
    p.add_argument("--quiet", type=float, default=0.5, help="seconds without a new frame after which the last one counts as final")
    p.add_argument("--viewport", type=int, default=600, help="side of the square page in CSS pixels")
    p.add_argument("--frustums", action="store_true", help="keep the training cameras' frustums drawn (hidden by default: "
                   "headless Chromium draws them in software, on the same CPU as the renderer)")
    p.add_argument("--browser-nice", type=int, default=0, help="CPU priority of Chromium's processes (19: it gets what the "
                   "server leaves, as a browser on another machine or with a GPU would; 0: an equal share of the cores)")
    p.add_argument("--screenshot", type=Path, help="save a screenshot of the page at the end (PNG)")
    p.add_argument("--out", type=Path, help="write the results as JSON")
    args = p.parse_args()
    reason = browser_unavailable()
    if reason:
        raise SystemExit(reason)
    opts = ViewOptions(port=0, baked=args.baked or args.tree is not None, tree=TreeOptions(args.tree, step_scale=args.step_scale, t_min=args.t_min),
                       max_res=args.max_res, target_fps=args.target_fps, still_seconds=args.still_seconds)
    server = start_view(args.run, opts)
    try:
        with BrowserClient(server.url, viewport=(args.viewport, args.viewport), nice=args.browser_nice) as browser:  # square page: square frames
            if not browser.wait_for_frames(1, timeout=120):
                raise SystemExit("no frame reached the browser")
            for session in server.clients():
                session.show_frustums.value = args.frustums
            browser.pump(2.0)
            cycles = [cycle(browser, args.max_res, args.move_seconds, args.warmup, args.settle, args.quiet) for _ in range(args.cycles)]
            browser.pump(1.0)
            if args.screenshot:
                browser.close_notifications()
                browser.pump(1.0)
                browser.screenshot(args.screenshot)
    finally:
        server.stop()
    fulls = [c["full_after_stop_s"] for c in cycles if c["full_after_stop_s"] is not None]
    from_camera = [c["full_after_camera_stop_s"] for c in cycles if c["full_after_camera_stop_s"] is not None]
    result = {
        "run": str(args.run), "tree": str(args.tree) if args.tree else None, "step_scale": args.step_scale, "t_min": args.t_min,
        "max_res": args.max_res, "target_fps": args.target_fps, "still_seconds": args.still_seconds,
        "viewport": args.viewport, "frustums": args.frustums, "browser_nice": args.browser_nice,
        "moving_fps_median": statistics.median(c["moving_fps"] for c in cycles),
        "full_after_stop_median_s": statistics.median(fulls) if fulls else None,
        "full_after_camera_stop_median_s": statistics.median(from_camera) if from_camera else None,
        "full_frames_missing": len(cycles) - len(fulls),
        "cycles": cycles,
    }
    print(json.dumps(result, indent=2))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
