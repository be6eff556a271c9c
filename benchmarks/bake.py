"""NerfTree baking: quality and speed of a baked tree against the model it came from.

For a trained run: bake it (or reuse RUN/baked/nerftree.safetensors with --reuse), evaluate the
model and the tree on the same test views (PSNR / SSIM), time the numba marcher on the first
test camera at 800x800 and 400x400 (rays generated once, outside the timing), time the model at
a small size to get the speed ratio per pixel, and print a markdown table (also written to
RUN/bench_bake.json).

    python benchmarks/bake.py --run runs/lego_vanilla --limit 8
    python benchmarks/bake.py --run runs/lego_vanilla --reuse --threads 2

Several trees of the same run (``--trees``, e.g. baked at other ``--coarse-res``) and several
marching steps (``--step-scales``, in fine voxels) are scored and timed beside the main tree in
the same run; ``--hires-limit N`` also scores the model and every tree on N views at full
resolution; ``--vanilla RUN`` times a vanilla NeRF on the same frame (its cost per ray does not
depend on its weights: always 64 + 192 samples).

    python benchmarks/bake.py --run runs/lego_ngp --reuse --trees runs/lego_ngp/baked/tree_192.safetensors \
        --step-scales 1 2 --every 1 --limit 200 --hires-limit 8 --vanilla runs/lego_vanilla

With --synthetic (no run needed) the marcher is timed on a procedural tree of surface-like
occupancy instead: a sphere shell and a floor with a thin Gaussian density profile
(peak 1000, 4 mm wide), inside a [-1.5, 1.5]^3 box at D_c = 384, D_f = 4, SH degree 3.

    python benchmarks/bake.py --synthetic
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from pathlib import Path

import numba
import numpy as np
import torch

from turbonerf.bake.nerftree import NerfTree, density_threshold_for, index_from_cells, tile_order
from turbonerf.bake.render import TreeRenderer
from turbonerf.cameras import Cameras
from turbonerf.rays import RayBundle, image_ray_bundle


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", type=Path, help="trained run folder")
    p.add_argument("--synthetic", action="store_true", help="time the marcher on a procedural tree instead of a run")
    p.add_argument("--coarse-res", type=int, default=384)
    p.add_argument("--fine-res", type=int, default=4)
    p.add_argument("--sh-degree", type=int, default=3, help="SH bands (3 -> 9 coefficients)")
    p.add_argument("--reuse", action="store_true", help="use the existing RUN/baked/nerftree.safetensors")
    p.add_argument("--limit", type=int, default=8, help="test views to score")
    p.add_argument("--every", type=int, default=1, help="every K-th test view")
    p.add_argument("--sizes", type=int, nargs="+", default=[800, 400], help="square sizes to time the marcher at")
    p.add_argument("--model-size", type=int, default=100, help="square size to time the model at")
    p.add_argument("--lookup", default="nearest", choices=["nearest", "trilinear"])
    p.add_argument("--threads", type=int, default=None, help="numba threads (default: all)")
    p.add_argument("--reps", type=int, default=5, help="timed renders per size (median reported)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--prune-weight", type=float, default=0.0, help="prune blocks below this training-ray weight (see `turbonerf bake --help`)")
    p.add_argument("--threshold", type=float, default=None, help="bake density threshold (default: opacity 0.01 per fine voxel)")
    p.add_argument("--skip-eval", action="store_true", help="only time the marcher (no PSNR / SSIM; saves memory)")
    p.add_argument("--prune-dilate", type=int, default=2, help="keep blocks within this many coarse cells of a kept one")
    p.add_argument("--prune-from", type=Path, default=None, help="prune this existing tree (with --prune-weight) into --tree instead of baking")
    p.add_argument("--tree", type=Path, default=None, help="tree file to write / reuse (default RUN/baked/nerftree.safetensors)")
    p.add_argument("--tag", default="", help="suffix of the evaluation folders and of bench_bake<tag>.json")
    p.add_argument("--vanilla", type=Path, default=None, help="a vanilla NeRF run timed at --model-size in the same run (the 1000x bar)")
    p.add_argument("--trees", type=Path, nargs="*", default=[], help="more tree files of the same run (e.g. other --coarse-res) scored and timed beside the main one")
    p.add_argument("--step-scales", type=float, nargs="+", default=[1.0], help="marching steps (in fine voxels) to score and time every tree at")
    p.add_argument("--hires-limit", type=int, default=0, help="also score the model and every tree on this many test views at full resolution (downscale 1)")
    p.add_argument("--hires-every", type=int, default=25, help="every K-th test view for --hires-limit")
    return p.parse_args()


def square_camera(cams: Cameras, index: int, size: int) -> Cameras:
    """Camera ``index`` of ``cams`` resampled to a size x size image (same field of view)."""
    cam = cams[torch.tensor([index])]
    sx, sy = size / cam.width, size / cam.height
    return Cameras(cam.c2w, cam.fx * sx, cam.fy * sy, cam.cx * sx, cam.cy * sy, size, size, cam.distortion)


def time_renderer(render, rays: RayBundle, background: torch.Tensor, reps: int) -> float:
    """Median milliseconds of ``render(rays, background)`` over ``reps`` calls (after one warm-up)."""
    render(rays[:256], background)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        render(rays, background)
        times.append(time.perf_counter() - t0)
    return 1000.0 * float(np.median(times))


def synthetic_shell_tree(coarse_res=384, fine_res=4, sh_degree=3, radius=0.6, width=0.004, peak=1000.0, half=1.5) -> NerfTree:
    """A tree of surface-like occupancy: a sphere shell and a floor, Gaussian density profile
    across the surface, smoothly varying view-dependent SH colour, stored as :func:`bake` would
    (tile-ordered blocks, densities below the default floor set to 0, cells whose densities all
    stay below the default threshold dropped)."""
    dc, df = coarse_res, fine_res
    cell = 2 * half / dc
    centres = -half + (np.arange(dc) + 0.5) * cell
    reach = 3 * width + 0.87 * cell
    cells = []
    for x in range(dc):
        xx, yy, zz = centres[x], centres[:, None], centres[None, :]
        r = np.sqrt(xx**2 + yy**2 + zz**2)
        floor = (np.abs(zz + 0.62) < reach) & (abs(xx) < 1.2) & (np.abs(yy) < 1.2)
        cells.append(x * dc * dc + np.flatnonzero((np.abs(r - radius) < reach) | floor))
    cells = np.concatenate(cells)
    cells = cells[tile_order(cells, dc)]
    m, k = len(cells), sh_degree**2
    floor_sigma = density_threshold_for(0.01, cell / df) / 10
    ijk = np.stack(np.unravel_index(cells, (dc,) * 3), -1).astype(np.float64)
    off = (np.arange(df) + 0.5) / df
    loc = np.stack(np.meshgrid(off, off, off, indexing="ij"), -1).reshape(-1, 3)
    dens = np.empty((m, df**3), np.float16)
    sh = np.empty((m, df**3, 3 * k), np.float16)
    for s in range(0, m, 65536):
        p = -half + (ijk[s : s + 65536, None, :] + loc[None]) * cell
        r = np.linalg.norm(p, axis=-1)
        in_floor = (np.abs(p[..., 0]) < 1.2) & (np.abs(p[..., 1]) < 1.2)
        sig = peak * np.exp(-0.5 * ((r - radius) / width) ** 2) + peak * np.exp(-0.5 * ((p[..., 2] + 0.62) / width) ** 2) * in_floor
        dens[s : s + 65536] = np.where(sig < floor_sigma, 0.0, sig)
        c = np.zeros(p.shape[:2] + (3, k))
        c[..., 0] = 2.0 * np.sin(4 * p)
        c[..., 1:] = 0.3 * np.cos(3 * p[..., None, :1] + np.arange(1, k))
        sh[s : s + 65536] = c.reshape(c.shape[0], c.shape[1], -1)
    keep = dens.max(axis=1).astype(np.float32) > 10 * floor_sigma  # bake drops cells below its threshold
    cells, dens, sh = cells[keep], dens[keep], sh[keep]
    shape = (len(cells), df, df, df)
    aabb = np.array([[-half] * 3, [half] * 3], np.float32)
    return NerfTree.from_dense(index_from_cells(cells.astype(np.int32), dc), dens.reshape(shape), sh.reshape(shape + (3 * k,)), aabb, sh_degree)


def look_at_camera(size: int, eye=(2.5, -2.5, 2.0), fov_x: float = 0.6911112070083618) -> Cameras:
    from turbonerf.data.synthetic import look_at

    f = 0.5 * size / math.tan(0.5 * fov_x)
    t = lambda v: torch.tensor([float(v)])  # noqa: E731
    return Cameras(torch.tensor(look_at(eye), dtype=torch.float32)[None], t(f), t(f), t(size / 2), t(size / 2), size, size)


def bench_synthetic(args: argparse.Namespace) -> dict:
    t0 = time.perf_counter()
    tree = synthetic_shell_tree(args.coarse_res, args.fine_res, args.sh_degree)
    build = time.perf_counter() - t0
    renderer = TreeRenderer(tree, "numba", lookup=args.lookup, threads=args.threads)
    rows = []
    for size in args.sizes:
        rays = image_ray_bundle(look_at_camera(size), 0, 2.0, 6.0)
        renderer.samples = renderer.rays = 0
        ms = time_renderer(renderer, rays, torch.ones(3), args.reps)
        rows.append({"size": size, "ms": ms, "fps": 1000.0 / ms, "samples_per_ray": renderer.samples_per_ray()})
    return {
        "tree": "synthetic shell",
        "coarse_res": tree.coarse_res,
        "fine_res": tree.fine_res,
        "blocks": tree.n_blocks,
        "occupied_fraction": tree.occupied_fraction(),
        "storage_mb": tree.nbytes() / 2**20,
        "build_seconds": build,
        "lookup": args.lookup,
        "threads": args.threads or numba.get_num_threads(),
        "marcher": rows,
    }


def bench_run(args: argparse.Namespace) -> dict:
    from turbonerf.bake.nerftree import load_tree, read_tree_header, save_tree
    from turbonerf.app.bake import BakeOptions, bake_run
    from turbonerf.app.runs import TreeOptions, default_tree_path, renderer_for_run
    from turbonerf.data.formats import load_scene
    from turbonerf.engine import runtime
    from turbonerf.app.runs import load_trained, read_run_spec
    from turbonerf.app.evaluate import EvalOptions, evaluate_run

    run = args.run
    path = args.tree or default_tree_path(run)
    if args.prune_from is not None:  # prune an existing tree instead of baking again
        from turbonerf.bake.prune import blocks_to_keep, prune_blocks
        from turbonerf.app.bake import training_ray_weights

        s = read_run_spec(run).scene
        src = load_tree(args.prune_from)
        info = read_tree_header(args.prune_from).get("info", {})
        cache = args.prune_from.with_suffix(".block_weights.npy")  # the weights do not depend on --prune-weight
        t0 = time.perf_counter()
        if cache.is_file():
            weights = np.load(cache)
        else:
            weights = training_ray_weights(src, load_scene(s.data, downscale=s.downscale, splits=("train",)))
            np.save(cache, weights)
            info["prune_weights_seconds"] = time.perf_counter() - t0
        pruned = prune_blocks(src, blocks_to_keep(src, weights, args.prune_weight, args.prune_dilate))
        info.update(prune_weight=args.prune_weight, prune_dilate=args.prune_dilate, prune_seconds=time.perf_counter() - t0, blocks_before_pruning=src.n_blocks)
        del src
        save_tree(path, pruned, info)
        del pruned
        bake_seconds = info.get("bake_seconds", 0.0) + info["prune_seconds"]
    elif args.reuse and path.exists():
        bake_seconds = read_tree_header(path).get("info", {}).get("bake_seconds")
    else:
        path, _, info = bake_run(run, BakeOptions(
            out=path, coarse_res=args.coarse_res, fine_res=args.fine_res, sh_degree=args.sh_degree, overwrite=True, device=args.device,
            threshold=args.threshold, prune_weight=args.prune_weight, prune_dilate=args.prune_dilate,
        ))
        bake_seconds = info["bake_seconds"]
    dev = runtime.resolve_device(args.device)
    model, spec, _ = load_trained(run, dev)
    s = spec.scene
    cams = load_scene(s.data, downscale=s.downscale, splits=("test",)).split("test").cameras
    sizes = sorted(set(args.sizes + [args.model_size]), reverse=True)
    frames = {size: image_ray_bundle(square_camera(cams, 0, size), 0, s.near, s.far, s.ndc) for size in sizes}
    hires = args.hires_limit > 0

    def score(evaluate) -> tuple[dict | None, dict | None]:
        """``evaluate(name_suffix, limit, every, downscale)`` at the training resolution and, with
        --hires-limit, at full resolution -> (results, results or None)."""
        if args.skip_eval:
            return None, None
        low = evaluate("", args.limit, args.every, None)
        return low, (evaluate("_full", args.hires_limit, args.hires_every, 1) if hires else None)

    def metrics(low, high) -> dict:
        out = {"psnr": low and low["psnr"], "ssim": low and low["ssim"], "eval_size": low and f"{low['width']}x{low['height']}",
               "eval_views": low and low["n_images"]}
        out.update({"psnr_full": high and high["psnr"], "ssim_full": high and high["ssim"], "full_views": high and high["n_images"],
                    "full_size": high and f"{high['width']}x{high['height']}"})
        return out

    low, high = score(lambda suffix, limit, every, ds: evaluate_run(
        run, EvalOptions(limit=limit, every=every, downscale=ds, device=args.device), out_name="bench_model" + suffix))
    model_row = {"renderer": f"model ({spec.method})", "storage_mb": low and low["storage_mb"], **metrics(low, high)}
    rays = frames[args.model_size].to(dev)
    with torch.no_grad(), runtime.autocast(dev):
        model_row["ms_model_size"] = time_renderer(model.render, rays, s.background.to(dev), max(1, args.reps // 2))

    rows = []
    for tree_path in [path] + list(args.trees):
        header = read_tree_header(tree_path)
        for scale in args.step_scales:
            tag = f"{args.tag}_{tree_path.stem}_step{scale:g}"
            row = {"tree": str(tree_path), "coarse_res": header["coarse_res"], "fine_res": header["fine_res"], "blocks": header["n_blocks"],
                   "storage_mb": tree_path.stat().st_size / 2**20, "bake_seconds": header.get("info", {}).get("bake_seconds"),
                   "step_scale": scale}
            if tree_path == path and bake_seconds is not None:
                row["bake_seconds"] = bake_seconds
            row.update(metrics(*score(lambda suffix, limit, every, ds: evaluate_run(
                run, EvalOptions(limit=limit, every=every, downscale=ds, device=args.device), baked=True,
                tree=TreeOptions(tree_path, args.lookup, scale), out_name="bench_baked" + tag + suffix,
            ))))  # fmt: skip
            renderer = renderer_for_run(run, dev, baked=True, tree=TreeOptions(tree_path, args.lookup, scale, "numba", args.threads)).tree
            row["marcher"] = []
            for size in sizes:
                renderer.samples = renderer.rays = 0
                ms = time_renderer(renderer, frames[size], s.background, args.reps)
                row["marcher"].append({"size": size, "ms": ms, "fps": 1000.0 / ms, "samples_per_ray": renderer.samples_per_ray()})
            del renderer
            rows.append(row)
            print(f"{tree_path.name} step x{scale:g}: PSNR {row['psnr']}, " + ", ".join(f"{m['size']}: {m['ms']:.1f} ms" for m in row["marcher"]), flush=True)

    vanilla = None
    if args.vanilla is not None:
        vmodel, vspec, _ = load_trained(args.vanilla, dev)
        vmodel.eval()
        with torch.no_grad(), runtime.autocast(dev):
            v_ms = time_renderer(vmodel.render, rays, s.background.to(dev), 1)
        # vanilla NeRF's cost is the same for every ray (64 coarse + 192 fine samples), so a frame scales with its pixels
        big = max(args.sizes)
        vanilla = {"run": str(args.vanilla), "ms_model_size": v_ms, "size": big, "ms_extrapolated": v_ms * (big / args.model_size) ** 2}
    return {
        "run": str(run),
        "method": spec.method,
        "model": model_row,
        "trees": rows,
        "vanilla": vanilla,
        "model_size": args.model_size,
        "lookup": args.lookup,
        "threads": args.threads or numba.get_num_threads(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }


def markdown(res: dict) -> str:
    lines = []
    fmt = lambda v, p=2: "n/a" if v is None else f"{v:.{p}f}"  # noqa: E731
    if "model" in res:
        m = res["model"]
        sizes = [x["size"] for x in res["trees"][0]["marcher"]] if res["trees"] else []
        full = m.get("full_views")
        lines += [
            f"NerfTree bakes of `{res['run']}` ({res['method']}), {res['lookup']} lookup, numba marcher on {res['threads']} threads, "
            f"{res['date']}. PSNR / SSIM on {m['eval_views']} test views at {m['eval_size']}"
            + (f" and on {full} views at {m['full_size']}" if full else "") + ".",
            "",
            "| renderer | D_c | step (voxels) | PSNR | SSIM | " + ("PSNR full | SSIM full | " if full else "")
            + "storage MB | bake s | " + " | ".join(f"ms {z}x{z}" for z in sizes) + " | " + " | ".join(f"FPS {z}x{z}" for z in sizes)
            + " | samples/ray |",
            "|" + "---|" * (8 + (2 if full else 0) + 2 * len(sizes)),
        ]
        lines.append(
            f"| {m['renderer']} | | | {fmt(m['psnr'])} | {fmt(m['ssim'], 4)} | " + (f"{fmt(m['psnr_full'])} | {fmt(m['ssim_full'], 4)} | " if full else "")
            + f"{fmt(m['storage_mb'], 1)} | | " + " | ".join("" for _ in sizes) + " | " + " | ".join("" for _ in sizes) + " | |"
        )
        for t in res["trees"]:
            lines.append(
                f"| NerfTree | {t['coarse_res']} | {t['step_scale']:g} | {fmt(t['psnr'])} | {fmt(t['ssim'], 4)} | "
                + (f"{fmt(t['psnr_full'])} | {fmt(t['ssim_full'], 4)} | " if full else "")
                + f"{t['storage_mb']:.0f} | {fmt(t['bake_seconds'], 0)} | " + " | ".join(f"{x['ms']:.1f}" for x in t["marcher"]) + " | "
                + " | ".join(f"{x['fps']:.1f}" for x in t["marcher"]) + f" | {t['marcher'][0]['samples_per_ray']:.2f} |"
            )
        lines += ["", f"Model at {res['model_size']}x{res['model_size']}: {m['ms_model_size']:.0f} ms/frame."]
        v = res.get("vanilla")
        if v:
            big = v["size"]
            best = min(next(x["ms"] for x in t["marcher"] if x["size"] == big) for t in res["trees"])
            lines.append(
                f"Vanilla NeRF (`{v['run']}`) in the same run: {v['ms_model_size']:.0f} ms per {res['model_size']}x{res['model_size']} frame, "
                f"i.e. {v['ms_extrapolated'] / 1000:.0f} s per {big}x{big} frame (scaled by pixels); the fastest tree above is "
                f"{v['ms_extrapolated'] / best:.0f}x faster at {big}x{big}."
            )
        return "\n".join(lines)
    lines += [
        f"Synthetic tree: {res['blocks']} blocks ({100 * res['occupied_fraction']:.2f}% of {res['coarse_res']}^3 cells, "
        f"D_f = {res['fine_res']}), {res['storage_mb']:.0f} MiB",
        "",
        f"numba marcher ({res['lookup']}, {res['threads']} threads, {platform.processor() or platform.machine()}):",
        "",
        "| size | ms/frame | FPS | samples/ray |",
        "|---|---|---|---|",
    ]
    lines += [f"| {r['size']}x{r['size']} | {r['ms']:.1f} | {r['fps']:.1f} | {r['samples_per_ray']:.2f} |" for r in res["marcher"]]
    return "\n".join(lines)


def main() -> None:
    args = parse_args()
    if args.threads:
        numba.set_num_threads(args.threads)
    if args.synthetic:
        res = bench_synthetic(args)
    elif args.run is None:
        raise SystemExit("give --run RUN_DIR or --synthetic")
    else:
        res = bench_run(args)
        (args.run / f"bench_bake{args.tag}.json").write_text(json.dumps(res, indent=2))
    print(markdown(res))


if __name__ == "__main__":
    main()
