"""A/B timing of the numba hash-encoding kernels: this checkout's against those of a git revision,
interleaved in one process (timings on a shared VM drift by +-20% over minutes, so a comparison
must alternate).

Trains Instant-NGP on a scene for ``--warmup`` steps (the current kernels), then alternates blocks
of ``--block`` training steps between the two kernels, ``--rounds`` times: seconds per step of
each. Then times the kernels alone (forward, and backward into a zeroed gradient) on the sample
points of one training batch, alternating ``--reps`` times, and checks that both give the same
bits. One JSON line per figure on stdout.

    python benchmarks/hash_kernel_ab.py --data ../shared/data/nerf_synthetic/lego --baseline-rev 2bbb6bf
"""

from __future__ import annotations

import argparse
import inspect
import json
import sys
import tempfile
import time
from pathlib import Path

import numba
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from at_revision import module_at  # noqa: E402

from turbonerf.app.train import sample_pixels  # noqa: E402
from turbonerf.data.formats import load_scene  # noqa: E402
from turbonerf.encodings import hashgrid as current  # noqa: E402
from turbonerf.engine import runtime  # noqa: E402
from turbonerf.methods.registry import get_method  # noqa: E402
from turbonerf.rays import make_rays  # noqa: E402


def kernels_at(rev: str, folder: Path):
    """The hashgrid module of git revision ``rev``, imported from a copy in ``folder``."""
    return module_at(rev, "turbonerf/encodings/hashgrid.py", folder, "hashgrid_baseline")


def backward_call(mod, layout):
    """backward(x, grad_out, grad_table) of a module's kernel, whatever its signature."""
    arrays = mod._layout_arrays(layout)
    if len(inspect.signature(mod._hash_backward_f2.py_func).parameters) == 8:  # with a level order
        order = mod._balanced_level_order(layout, numba.get_num_threads())
        return lambda x, g, out: mod._hash_backward_f2(x, g, *arrays, order, out)
    return lambda x, g, out: mod._hash_backward_f2(x, g, *arrays, out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--downscale", type=int, default=4)
    p.add_argument("--baseline-rev", default="HEAD")
    p.add_argument("--warmup", type=int, default=200, help="training steps before timing (the grid empties)")
    p.add_argument("--block", type=int, default=15, help="training steps per timed block")
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--reps", type=int, default=25, help="alternating repetitions of the kernel-only timings")
    args = p.parse_args()

    runtime.tune_allocator()
    torch.set_float32_matmul_precision("highest")
    scene = load_scene(args.data, downscale=args.downscale, splits=("train",))
    split = scene.split("train")
    cfg_cls, model_cls = get_method("instant-ngp")
    model = model_cls(cfg_cls(), scene.aabb)
    model.prepare_from_views(split.cameras, split.alphas)
    opt, _ = model.make_optimizer()
    callbacks = model.callbacks()
    gen = torch.Generator().manual_seed(0)
    seen = {}

    def step(s: int) -> None:
        for cb in callbacks:
            cb.before_step(s)
        idx, u, v = sample_pixels(len(split), split.images.shape[1], split.images.shape[2], 1024, 1.0, gen)
        rays = make_rays(split.cameras, idx, u, v, scene.near, scene.far, scene.ndc)
        target = split.images[idx, v, u].float() / 255.0
        loss, _ = model.training_loss(rays, target, scene.background)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    original = (current._hash_forward_f2, current._hash_backward_f2)
    with tempfile.TemporaryDirectory() as tmp:
        base = kernels_at(args.baseline_rev, Path(tmp))

        def use(which: str) -> None:
            if which == "current":
                current._hash_forward_f2, current._hash_backward_f2 = original
            else:  # the baseline behind the current call sites
                current._hash_forward_f2 = base._hash_forward_f2
                current._hash_backward_f2 = lambda x, g, r, sz, h, o, order, gt: base._hash_backward_f2(x, g, r, sz, h, o, gt)

        for s in range(args.warmup):
            step(s)
        s = args.warmup
        per_step = {"baseline": [], "current": []}
        for which in per_step:  # compile / load both before timing
            use(which)
            step(s)
            s += 1
        for _ in range(args.rounds):
            for which in per_step:
                use(which)
                t0 = time.perf_counter()
                for _ in range(args.block):
                    step(s)
                    s += 1
                per_step[which].append((time.perf_counter() - t0) / args.block)
        use("current")
        for which, v in per_step.items():
            print(json.dumps({"figure": "s_per_training_step", "kernel": which, "median": float(np.median(v)), "blocks": v}))

        # the kernels alone, on one batch's sample points
        idx, u, v = sample_pixels(len(split), split.images.shape[1], split.images.shape[2], 1024, 1.0, gen)
        rays = make_rays(split.cameras, idx, u, v, scene.near, scene.far, scene.ndc)
        samples = model.sampler.sample(rays, train=True)
        enc = model.field.encoding
        x = ((samples.positions(rays) - model.field.aabb[0]) / (model.field.aabb[1] - model.field.aabb[0])).clamp(0, 1)
        x = x.contiguous().numpy()
        table = enc.table.detach().numpy()
        g = np.random.default_rng(0).standard_normal((len(x), enc.out_dim)).astype(np.float32)
        outs = {k: np.zeros((len(x), enc.out_dim), np.float32) for k in ("baseline", "current")}
        grads = {k: np.zeros_like(table) for k in ("baseline", "current")}
        mods = {"baseline": base, "current": current}
        calls = {}
        for k, mod in mods.items():
            arrays = mod._layout_arrays(enc.layout)
            bwd = backward_call(mod, enc.layout)
            calls[f"forward/{k}"] = (lambda mod=mod, arrays=arrays, k=k: mod._hash_forward_f2(x, table, *arrays, outs[k]))
            calls[f"backward/{k}"] = (lambda bwd=bwd, k=k: (grads[k].fill(0.0), bwd(x, g, grads[k])))
        times = {name: [] for name in calls}
        for f in calls.values():
            f()
        for _ in range(args.reps):
            for name, f in calls.items():
                t0 = time.perf_counter()
                f()
                times[name].append(time.perf_counter() - t0)
        for name, v in times.items():
            print(json.dumps({"figure": "ms_per_call", "call": name, "points": len(x), "median": 1e3 * float(np.median(v)),
                              "min": 1e3 * float(np.min(v))}))
        print(json.dumps({"figure": "same_bits", "forward": bool(np.array_equal(outs["baseline"], outs["current"])),
                          "backward": bool(np.array_equal(grads["baseline"], grads["current"])),
                          "threads": numba.get_num_threads()}))


if __name__ == "__main__":
    main()
