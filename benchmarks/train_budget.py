"""Train several methods on one scene under the same wall-clock budgets and score each budget.

Each method trains once for the largest budget, keeping snapshots when its training time passes
the smaller ones; every snapshot is then evaluated on the same fixed subset of test views.

    python benchmarks/train_budget.py --data ../shared/data/nerf_synthetic/lego --downscale 4 \
        --methods vanilla-nerf efficient-nerf instant-ngp --minutes 2 5 15 --every 25 --out runs/bench_lego

Writes OUT/summary.json and OUT/summary.md (a table for BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
from pathlib import Path

import torch

from turbonerf.app.runs import CHECKPOINT
from turbonerf.app.train import TrainOptions, train
from turbonerf.app.evaluate import EvalOptions, evaluate_run


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, type=Path, help="scene folder")
    p.add_argument("--downscale", type=int, default=4, help="training and evaluation downscale")
    p.add_argument("--methods", nargs="+", default=["vanilla-nerf"], help="methods to compare")
    p.add_argument("--minutes", nargs="+", type=float, default=[2, 5, 15], help="training-time budgets")
    p.add_argument("--every", type=int, default=25, help="evaluate every K-th test view")
    p.add_argument("--limit", type=int, default=None, help="at most N test views")
    p.add_argument("--split", default="test")
    p.add_argument("--out", required=True, type=Path, help="folder for the runs and the summary")
    p.add_argument("--set", action="append", default=[], metavar="METHOD:KEY=VALUE", help="a method option")
    p.add_argument("--resume", action="store_true", help="reuse finished runs and evaluations found in --out")
    p.add_argument("--final-only", nargs="*", default=[], metavar="METHOD", help="score only the largest budget of these methods (their snapshots are kept)")
    p.add_argument("--threads", type=int, default=None, help="torch / numba threads (1 is steadier on a shared 2-core machine)")
    return p.parse_args()


def run_method(args: argparse.Namespace, method: str) -> list[dict]:
    run = args.out / method
    budgets = sorted(args.minutes)
    overrides = [s.split(":", 1)[1] for s in args.set if s.startswith(method + ":")]
    if not (args.resume and (run / CHECKPOINT).is_file()):
        opts = TrainOptions(
            method=method,
            data=args.data,
            out=run,
            max_minutes=budgets[-1],
            downscale=args.downscale,
            overrides=overrides,
            snapshot_minutes=budgets[:-1],
            overwrite=True,
            checkpoint_every=10**9,
            checkpoint_minutes=10**9,
        )
        train(opts)
    rows = []
    for m in budgets:
        if method in args.final_only and m != budgets[-1]:
            continue
        ckpt = run / CHECKPOINT if m == budgets[-1] else run / CHECKPOINT.with_name(f"snapshot_{m:g}min.safetensors")
        if not ckpt.is_file():
            print(f"{method}: no checkpoint for {m:g} min ({ckpt})")
            continue
        done = run / f"eval_{m:g}min" / "results.json"
        if args.resume and done.is_file():
            res = json.loads(done.read_text())
        else:
            res = evaluate_run(run, EvalOptions(args.split, args.limit, args.every), checkpoint=ckpt, out_name=f"eval_{m:g}min")
        rows.append(
            {
                "method": method,
                "budget_min": m,
                "steps": res["step"],
                "s_per_step": res["train_seconds"] / max(res["step"], 1),
                "psnr": res["psnr"],
                "ssim": res["ssim"],
                "samples_per_ray": res["samples_per_ray"],
                "ms_per_frame": res["ms_per_frame"],
                "n_images": res["n_images"],
                "width": res["width"],
                "height": res["height"],
                "device": res["device"],
            }
        )
        print(json.dumps(rows[-1]))
    return rows


def to_markdown(rows: list[dict]) -> str:
    lines = [
        "| method | budget (min) | steps | s/step | samples/ray (eval) | PSNR (dB) | SSIM | ms/frame |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['method']} | {r['budget_min']:g} | {r['steps']} | {r['s_per_step']:.3f} | {r['samples_per_ray']:.1f} | "
            f"{r['psnr']:.2f} | {r['ssim']:.3f} | {r['ms_per_frame']:.0f} |"
        )
    return "\n".join(lines)


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for method in args.methods:
        rows += run_method(args, method)
    header = {
        "date": dt.date.today().isoformat(),
        "machine": f"{platform.machine()} {platform.processor()}, {torch.get_num_threads()} threads, torch {torch.__version__}",
        "data": str(args.data),
        "downscale": args.downscale,
        "every": args.every,
    }
    (args.out / "summary.json").write_text(json.dumps({"header": header, "rows": rows}, indent=2))
    md = to_markdown(rows)
    (args.out / "summary.md").write_text(md + "\n")
    print(json.dumps(header))
    print(md)


if __name__ == "__main__":
    main()
