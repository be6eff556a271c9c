"""Distil a trained teacher into an R2L neural light field and compare the two on the same views.

    python benchmarks/distill_r2l.py --teacher runs/lego_vanilla --out runs/bench_r2l \
        --minutes 30 --num-pseudo-images 200 --ablation-minutes 8 --every 25

1. The main student (``--preset``, default cpu) is distilled under ``--minutes`` (pseudo-data
   generation + training; generation stops at half of it).
2. Teacher and student are evaluated on the same test views (every ``--every``-th, at most
   ``--limit``): PSNR, SSIM, FLOPs per ray, parameters, weights in MB (fp32).
3. Frame times at 400x400 and 800x800 (the first test camera, intrinsics scaled): the student
   renders full frames; the teacher renders ``--timing-rays`` rays of the frame and the time is
   scaled to the full frame (labelled "extrapolated").
4. Ablation at ``--ablation-minutes`` of training each, on the same pseudo data: pseudo only vs
   pseudo + real rays, with and without the hard-example pool.

Writes OUT/summary.json and OUT/summary.md and prints the markdown tables. The teacher's
evaluation is written to TEACHER/eval_distill_bench/.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import time
from pathlib import Path

import torch

from turbonerf.data.formats import load_scene
from turbonerf.app.distill import DistillOptions, distill
from turbonerf.engine import runtime
from turbonerf.engine.checkpoint import read_checkpoint_meta
from turbonerf.app.runs import CHECKPOINT, load_trained
from turbonerf.app.evaluate import EvalOptions, evaluate_run
from turbonerf.eval.flops import flops_per_ray, params
from turbonerf.rays import image_ray_bundle
from turbonerf.render.renderer import render_rays_chunked

ABLATION = (
    ("pseudo only, no hard", 0.0, 0.0),
    ("pseudo only, hard", 0.0, None),
    ("pseudo + real, no hard", None, 0.0),
    ("pseudo + real, hard", None, None),
)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--teacher", required=True, type=Path, help="run folder of the trained teacher")
    p.add_argument("--out", required=True, type=Path, help="folder for the students, the pseudo data and the summary")
    p.add_argument("--minutes", type=float, default=30.0, help="budget of the main student (generation + training)")
    p.add_argument("--num-pseudo-images", type=int, default=200)
    p.add_argument("--preset", default="cpu", help="student preset: cpu | paper")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="student option")
    p.add_argument("--real-fraction", type=float, default=0.2)
    p.add_argument("--hard-ratio", type=float, default=0.2)
    p.add_argument("--batch-rays", type=int, default=4096)
    p.add_argument("--ablation-minutes", type=float, default=None, help="training budget of each ablation student (default: minutes / 4)")
    p.add_argument("--skip-ablation", action="store_true")
    p.add_argument("--every", type=int, default=25, help="evaluate every K-th test view")
    p.add_argument("--limit", type=int, default=None, help="at most N test views")
    p.add_argument("--split", default="test")
    p.add_argument("--sizes", nargs="+", type=int, default=[400, 800], help="frame widths to time")
    p.add_argument("--timing-rays", type=int, default=8192, help="teacher rays timed per frame size (then scaled)")
    p.add_argument("--timing-chunk", type=int, default=8192, help="rays per render call when timing (lower it to save memory)")
    p.add_argument("--compare", nargs="*", type=Path, default=[], help="more trained runs (e.g. a vanilla NeRF) timed and scored beside teacher and student")
    p.add_argument("--compare-eval", default="eval_15min", help="a compare run's metrics come from RUN/<this>/results.json when present (e.g. the lego table's evaluation), else it is evaluated")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--resume", action="store_true", help="reuse students already finished in --out")
    p.add_argument("--no-progress", action="store_true")
    return p.parse_args()


def weights_mb(model: torch.nn.Module) -> float:
    """Size of the model's state (parameters + persistent buffers) in fp32, MB."""
    return sum(t.numel() * 4 for t in model.state_dict().values()) / 1e6


@torch.no_grad()
def frame_ms(model, spec, width: int, device: torch.device, max_rays: int | None, chunk: int, repeats: int) -> tuple[float, int]:
    """(ms per frame of ``width`` pixels across, rays actually rendered): the first test camera
    with intrinsics scaled, best of ``repeats`` after a warm-up; when ``max_rays`` is set only
    that many rays (spread over the frame) are rendered and the time is scaled to the full frame."""
    scene = load_scene(spec.scene.data, downscale=spec.scene.downscale, splits=("test",))
    cams = scene.split("test").cameras
    cams = cams.scaled(width / cams.width)
    rays = image_ray_bundle(cams, 0, scene.near, scene.far, scene.ndc)
    n = len(rays)
    if max_rays is not None and max_rays < n:
        idx = torch.linspace(0, n - 1, max_rays).long()
        rays = rays[idx]
    rays = rays.to(device)
    bg = scene.background.to(device)
    with runtime.autocast(device, True):
        render_rays_chunked(model.render, rays[: min(len(rays), chunk)], bg, chunk)  # warm-up at the timed shapes
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            render_rays_chunked(model.render, rays, bg, chunk)
            times.append(time.perf_counter() - t0)
    return 1000.0 * min(times) * n / len(rays), len(rays)


def student_options(args, out: Path, minutes: float, real_fraction: float, hard_ratio: float, num_images: int) -> DistillOptions:
    return DistillOptions(
        teacher=args.teacher,
        out=out,
        preset=args.preset,
        overrides=list(args.set),
        max_minutes=minutes,
        num_pseudo_images=num_images,
        real_fraction=real_fraction,
        hard_ratio=hard_ratio,
        batch_rays=args.batch_rays,
        pseudo_dir=args.out / "pseudo",
        device=args.device,
        threads=args.threads,
        overwrite=True,
        checkpoint_every=10**9,
        checkpoint_minutes=10**9,
        progress=not args.no_progress,
    )


def run_student(opts: DistillOptions, resume: bool) -> dict:
    """Distil (unless a finished run is there and ``resume``); returns timing facts from the checkpoint."""
    ckpt = Path(opts.out) / CHECKPOINT
    messages = []
    if not (resume and ckpt.is_file()):
        res = distill(opts)
        messages = res.messages
        for m in messages:
            print(m)
    meta = read_checkpoint_meta(ckpt)
    return {"steps": meta["step"], "train_s": meta["seconds"], "generation_s": meta.get("generation_seconds", 0.0),
            "pseudo_images": meta.get("pseudo_images"), "messages": messages}


SCORE_KEYS = ("psnr", "ssim", "ms_per_frame", "n_images", "width", "height", "device", "flops_per_ray", "params")
"""what the summary keeps of a results.json"""


def scored(run: Path, args, out_name: str, reuse: Path | None = None) -> dict:
    """The run's metrics: from ``reuse`` (a results.json) when it exists, else evaluated now."""
    if reuse is not None and reuse.is_file():
        r = json.loads(reuse.read_text())
    else:
        r = evaluate_run(run, EvalOptions(args.split, args.limit, args.every, device=args.device, progress=not args.no_progress), out_name=out_name)
    return {k: r[k] for k in SCORE_KEYS}


def fmt(x, spec: str) -> str:
    return "n/a" if x is None else format(x, spec)


def main() -> None:
    args = parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    device = runtime.resolve_device(args.device)
    runtime.configure(device, args.threads)

    main_run = args.out / f"student_{args.preset}"
    facts = run_student(student_options(args, main_run, args.minutes, args.real_fraction, args.hard_ratio, args.num_pseudo_images), args.resume)

    rows = {}
    models = [("teacher", args.teacher), *((f"compare:{r}", r) for r in args.compare), ("student", main_run)]
    for name, run in models:
        model, spec, _ = load_trained(run, device)
        model.eval()
        known = run / args.compare_eval / "results.json" if name.startswith("compare:") else None
        ev = scored(run, args, "eval_distill_bench", known)
        timing = {}
        for w in args.sizes:
            max_rays = args.timing_rays if name != "student" else None
            ms, n = frame_ms(model, spec, w, device, max_rays, args.timing_chunk, 3 if max_rays else 1)
            timing[w] = {"ms": ms, "rays_timed": n, "extrapolated": max_rays is not None and n < w * w}
        rows[name] = {
            "run": str(run),
            "method": spec.method,
            **ev,
            "flops_per_ray": flops_per_ray(model),
            "params": params(model),
            "weights_mb": weights_mb(model),
            "frames": timing,
        }
        del model
    rows["student"].update(facts)

    ablation = []
    if not args.skip_ablation:
        minutes = args.ablation_minutes or args.minutes / 4
        n_images = facts["pseudo_images"] or args.num_pseudo_images  # exactly the main student's pseudo data
        for label, rf, hr in ABLATION:
            rf = args.real_fraction if rf is None else rf
            hr = args.hard_ratio if hr is None else hr
            tag = label.replace(" + ", "_").replace(", ", "_").replace(" ", "_")
            run = args.out / f"ablation_{tag}"
            f = run_student(student_options(args, run, minutes, rf, hr, n_images), args.resume)
            ev = scored(run, args, "eval")
            ablation.append({"variant": label, "real_fraction": rf, "hard_ratio": hr, "minutes": minutes, **f, **ev})

    summary = {
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "machine": f"{platform.processor() or platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} threads",
        "teacher": rows["teacher"],
        "student": rows["student"],
        "compare": [rows[n] for n, _ in models if n.startswith("compare:")],
        "ablation": ablation,
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
    }
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    md = markdown(summary, args)
    (args.out / "summary.md").write_text(md)
    print(md)


def markdown(s: dict, args) -> str:
    t, st = s["teacher"], s["student"]
    sizes = args.sizes
    head = "| model | PSNR | SSIM | FLOPs / ray | params | weights MB | " + " | ".join(f"ms / {w}px frame" for w in sizes) + " | distillation |"
    lines = [
        f"R2L distillation of `{t['run']}` ({t['method']}), {t['n_images']} {args.split} views at {t['width']}x{t['height']}; {s['machine']}",
        "",
        head,
        "|" + "---|" * (7 + len(sizes)),
    ]
    preset = args.preset + (" + " + " ".join(args.set) if args.set else "")
    named = [("teacher", t), *((f"{c['method']} (`{c['run']}`)", c) for c in s["compare"]), (f"R2L student ({preset})", st)]
    for name, r in named:
        frames = []
        for w in sizes:
            f = r["frames"][w]
            frames.append(f"{f['ms']:.0f}" + (f" (extrapolated from {f['rays_timed']} rays)" if f["extrapolated"] else ""))
        if r is not st:
            dist = "-"
        else:
            dist = (f"{(st['generation_s'] + st['train_s']) / 60:.1f} min ({st['generation_s'] / 60:.1f} pseudo data, "
                    f"{st['pseudo_images']} images; {st['steps']} steps)")
        lines.append(
            f"| {name} | {fmt(r['psnr'], '.2f')} | {fmt(r['ssim'], '.4f')} | {r['flops_per_ray'] / 1e6:.2f} M | "
            f"{r['params'] / 1e6:.2f} M | {r['weights_mb']:.3g} | " + " | ".join(frames) + f" | {dist} |"
        )
    ratio = t["flops_per_ray"] / max(st["flops_per_ray"], 1)
    lines += ["", f"FLOPs per ray, teacher / student: {ratio:.2f}."]
    for r in [t, *s["compare"]]:
        speed = ", ".join(f"{r['frames'][w]['ms'] / st['frames'][w]['ms']:.1f}x at {w}px" for w in sizes)
        lines.append(f"Per frame the student is faster than {r['method']} (`{r['run']}`) by {speed} (same run).")
    if s["ablation"]:
        minutes = s["ablation"][0]["minutes"]
        lines += ["", f"Ablation ({minutes:g} min of training each, same pseudo data):", "",
                  "| variant | real fraction | hard ratio | steps | PSNR | SSIM |", "|---|---|---|---|---|---|"]
        for a in s["ablation"]:
            lines.append(f"| {a['variant']} | {a['real_fraction']:g} | {a['hard_ratio']:g} | {a['steps']} | "
                         f"{fmt(a['psnr'], '.2f')} | {fmt(a['ssim'], '.4f')} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
