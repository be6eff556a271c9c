"""What ``train --viewer`` costs: the same short training run without the viewer, with the viewer
and no browser, and with the viewer watched by the browser test's headless Chromium (its camera
still: the live viewer re-renders the changing model every 2 s, or moving: a mouse drag all along).

Each run is ``turbonerf train ... --max-steps N`` in a subprocess; steps per second come from the
training seconds of ``train_log.jsonl`` (which include the viewer's callback) and from the wall
clock of the process after its first logged step.

    python benchmarks/viewer_training.py --data turbonerf/assets/lego_100 --method instant-ngp --steps 30 \
        --modes none still none --out /tmp/vt

The live viewer also prints the share of the wall time its rendering took (``viewer_note``): the
viewer's own cost, free of the drift between runs on a shared machine.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from turbonerf.viewer.browser import BrowserClient, browser_unavailable


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_listening(port: int, proc: subprocess.Popen, timeout: float = 120.0) -> bool:
    end = time.perf_counter() + timeout
    while time.perf_counter() < end and proc.poll() is None:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return True
        except OSError:
            time.sleep(0.2)
    return False


def log_rate(run: Path) -> dict:
    """Steps per training second, first logged step to last (the first includes start-up)."""
    lines = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
    lines = [r for r in lines if "seconds" in r]
    first, last = lines[0], lines[-1]
    return {"steps": last["step"], "train_seconds": last["seconds"],
            "steps_per_s": (last["step"] - first["step"]) / max(last["seconds"] - first["seconds"], 1e-9),
            "last_psnr": last.get("psnr")}


def train_once(args, out: Path, mode: str) -> dict:
    port = free_port()
    cmd = [sys.executable, "-m", "turbonerf", "train", "--method", args.method, "--data", str(args.data), "--out", str(out),
           "--max-steps", str(args.steps), "--downscale", str(args.downscale), "--no-progress", "--overwrite"]
    cmd += [f"--set={s}" for s in args.set]
    if mode != "none":
        cmd += ["--viewer", "--viewer-port", str(port)]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=os.environ.copy())
    try:
        if mode in ("still", "moving"):
            if not wait_listening(port, proc):
                raise SystemExit(f"the live viewer did not come up: {proc.stderr.read() if proc.poll() is not None else ''}")
            with BrowserClient(f"http://127.0.0.1:{port}/", viewport=(800, 600)) as browser:
                if mode == "moving":
                    browser.page.mouse.move(250, 300)
                    browser.page.mouse.down()
                x, direction = 250.0, 1.0
                while proc.poll() is None:
                    if mode == "moving":
                        x += 4 * direction
                        direction = -direction if abs(x - 250) > 150 else direction
                        browser.page.mouse.move(x, 300)
                    browser.pump(0.03)
                frames = len(browser.frames)
        else:
            frames = 0
        _, err = proc.communicate()
    finally:
        if proc.poll() is None:
            proc.kill()
    (out / "stderr.txt").write_text(err)
    if proc.returncode != 0:
        raise SystemExit(f"train failed ({mode}): {err[-2000:]}")
    share = next((line for line in err.splitlines() if "viewer: rendering took" in line), "")
    return {"mode": mode, "wall_s": time.perf_counter() - t0, "frames_at_browser": frames, "viewer_note": share,
            **log_rate(out)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--method", default="instant-ngp")
    p.add_argument("--downscale", type=int, default=1)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--set", action="append", default=[])
    p.add_argument("--modes", nargs="+", default=["none", "idle", "still", "moving", "none"])
    p.add_argument("--out", type=Path, required=True, help="folder for the runs and results.json")
    args = p.parse_args()
    if any(m in ("still", "moving") for m in args.modes) and browser_unavailable():
        raise SystemExit(browser_unavailable())
    args.out.mkdir(parents=True, exist_ok=True)
    results = []
    for i, mode in enumerate(args.modes):
        r = train_once(args, args.out / f"run_{i}_{mode}", mode)
        print(json.dumps(r), flush=True)
        results.append(r)
    (args.out / "results.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
