"""``turbonerf demo``: train on the shipped 100x100 lego scene, evaluate it, render an orbit."""

from __future__ import annotations

import shutil
from importlib import resources
from pathlib import Path

from turbonerf.app.evaluate import EvalOptions, evaluate_run
from turbonerf.app.render import RenderOptions, render_sequence
from turbonerf.app.train import TrainOptions, train
from turbonerf.errors import TurboNerfError


def demo_scene_path() -> Path:
    """The small Blender-format lego scene shipped inside the package (100 train, 10 test views, 100x100)."""
    return Path(str(resources.files("turbonerf") / "assets" / "lego_100"))


def demo_overrides() -> tuple[str, list[str]]:
    """The method and options the demo trains with: Instant-NGP, the method that gets furthest
    in a few CPU minutes (see BENCHMARKS.md)."""
    return "instant-ngp", []


def run_demo(out: Path, minutes: float, overwrite: bool, progress: bool) -> dict:
    """Train, evaluate and render into ``out``; returns the eval results."""
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise TurboNerfError("demo folder exists and is not empty (use --overwrite)", out)
        shutil.rmtree(out)
    method, overrides = demo_overrides()
    scene = demo_scene_path()
    print(f"[1/3] training {method} on {scene} for {minutes:g} min")
    opts = TrainOptions(
        method=method, data=scene, out=out, max_minutes=minutes, overrides=overrides, progress=progress
    )
    result = train(opts)
    print(f"      {result.step} steps in {result.seconds:.0f} s")
    print("[2/3] evaluating on the shipped test views")
    res = evaluate_run(out, EvalOptions(progress=progress))
    print(f"      PSNR {res['psnr']:.2f} dB, SSIM {res['ssim']:.3f}, {res['ms_per_frame']:.0f} ms/frame")
    print("[3/3] rendering an orbit")
    media = render_sequence(out, out / "orbit", RenderOptions(path="orbit", frames=36, progress=progress))
    print("done:")
    print(f"  run + checkpoint   {out}")
    print(f"  metrics            {out / 'eval' / 'results.json'}")
    print(f"  test renders       {out / 'eval' / 'images'}")
    print(f"  orbit video        {media['video']}")
    print(f"  orbit depth video  {media['depth_video']}")
    return res
