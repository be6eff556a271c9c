"""Activation-based sampling (Radl et al., CVPRW 2024) against coarse-to-fine sampling on a trained
vanilla-nerf or mip-nerf run: render time per image split into t_act / t_coarse / t_fine, quality, speed-up.

Runs the sweep ``base`` + layer 0,1,2 x fct std,std_half,std_half_sq x upsample off/on (the
reference code's configurations), writes RUN/<out-name>/stats.json and prints two markdown tables:
timing and quality, and how well each configuration's density estimate matches the fine network
along the rays of the first image (see turbonerf.eval.activation_eval.estimate_diagnostics).

    python benchmarks/activation_sampling.py --run runs/lego --every 8 --downscale 4
    python benchmarks/activation_sampling.py --run runs/lego --limit 2 --act-net fine --fct std --fct none
"""

from __future__ import annotations

import argparse
from pathlib import Path


def diagnostics_table(stats: dict) -> str:
    """Markdown: per configuration, the estimate's agreement with the fine network's density."""
    lines = [
        "| configuration | rays | Pearson | Spearman | pdf overlap | uniform pdf overlap |",
        "|---|---|---|---|---|---|",
    ]

    def f(v):
        return "n/a" if v is None else f"{v:.3f}"

    for key, e in stats.items():
        d = e["diagnostics"].get("estimate_vs_fine") or {}
        lines.append(
            f"| {key} | {d.get('n_rays', 'n/a')} | {f(d.get('pearson'))} | {f(d.get('spearman'))} "
            f"| {f(d.get('pdf_overlap'))} | {f(d.get('pdf_overlap_uniform'))} |"
        )
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", type=Path, required=True, help="a trained vanilla-nerf or mip-nerf run folder")
    p.add_argument("--split", default="test")
    p.add_argument("--every", type=int, default=1, help="every K-th image of the split")
    p.add_argument("--limit", type=int, default=None, help="at most N images")
    p.add_argument("--downscale", type=int, default=None, help="image downscale (default: the training one)")
    p.add_argument("--device", default="auto")
    p.add_argument("--chunk", type=int, default=4096)
    p.add_argument("--layers", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--fct", action="append", default=None, help="along-ray transform(s), names or the reference codes 0, 1, 2 (default: all three)")
    p.add_argument("--reduce", default="mean", help="reduction over hidden units (mean: the paper)")
    p.add_argument("--act-net", default="coarse", choices=["coarse", "fine"], help="whose trunk is read (coarse: the paper's code)")
    p.add_argument("--no-upsample", action="store_true", help="leave out the upsampled configurations")
    p.add_argument("--bf16", action="store_true", help="render with bf16 autocast where the CPU has native bf16 (default: fp32)")
    p.add_argument("--save-images", action="store_true")
    p.add_argument("--out-name", default="eval", help="writes RUN/<out-name>/stats.json")
    args = p.parse_args()

    from turbonerf.app.evaluate import EvalOptions
    from turbonerf.app.sweep import SweepOptions, evaluate_sampler_configs
    from turbonerf.eval.activation_eval import REFERENCE_FCTS, fct_name, format_table, sweep_configs

    configs = sweep_configs(
        layers=args.layers,
        fcts=[fct_name(f) for f in args.fct] if args.fct else REFERENCE_FCTS,
        upsample=(False,) if args.no_upsample else (False, True),
        reduce=args.reduce,
        net=args.act_net,
    )
    opts = EvalOptions(args.split, args.limit, args.every, args.downscale, args.device, args.chunk, bf16=args.bf16)
    sweep = SweepOptions(save_images=args.save_images, drop_missing_layers=True, out_name=args.out_name)
    stats, meta = evaluate_sampler_configs(args.run, configs, opts, sweep)
    print(
        f"## activation-based sampling: {meta['method']} (step {meta['step']}), {meta['n_images']} {meta['split']} images "
        f"at {meta['width']}x{meta['height']}, {meta['device']}, {'bf16' if meta['bf16'] else 'fp32'}\n"
    )
    print("Seconds per image; t = t_act + t_coarse + t_fine + t_other (ray generation and output assembly).\n")
    print(format_table(stats))
    print("\nDensity estimate vs the fine network (first image, rays with fine opacity > 0.5):\n")
    print(diagnostics_table(stats))
    if meta["skipped"]:
        print(f"\nskipped (no such layer): {', '.join(meta['skipped'])}")
    if meta["lpips_reason"]:
        print(f"\nLPIPS not computed: {meta['lpips_reason']}")
    print(f"\n-> {Path(args.run) / args.out_name / 'stats.json'}")


if __name__ == "__main__":
    main()
