"""RSS (and optionally live tensors) per training step of `turbonerf train`, through the real
train path (BENCHMARKS.md, "What grew: oneDNN's state per matmul shape").

    OMP_NUM_THREADS=1 python benchmarks/memory_probe.py /tmp/fern_capture --steps 100 --out /tmp/probe
        [--onednn] [--count-tensors] [--every 10] [--set KEY=VALUE ...]

--onednn routes every nn.Linear (forward and backward matmuls) through oneDNN
(torch.ops.mkldnn._linear_pointwise, fp32), standing in for a CPU with AVX512-BF16 / AMX whose
bf16 (and "medium"-precision fp32) matmuls torch runs through oneDNN.
"""

import argparse
import gc
import resource
import time
from pathlib import Path

import torch

import turbonerf.app.train as T

parser = argparse.ArgumentParser()
parser.add_argument("data", type=Path)
parser.add_argument("--steps", type=int, default=100)
parser.add_argument("--out", type=Path, default=Path("/tmp/memory_probe"))
parser.add_argument("--method", default="instant-ngp")
parser.add_argument("--downscale", type=int, default=1)
parser.add_argument("--every", type=int, default=10)
parser.add_argument("--onednn", action="store_true")
parser.add_argument("--count-tensors", action="store_true")
parser.add_argument("--set", dest="overrides", action="append", default=[])
args = parser.parse_args()


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def live_tensors() -> tuple[int, float]:
    n, nbytes = 0, 0
    for o in gc.get_objects():
        if isinstance(o, torch.Tensor):
            n += 1
            nbytes += o.untyped_storage().nbytes()
    return n, nbytes / 2**20


if args.onednn:
    lp = torch.ops.mkldnn._linear_pointwise

    class OneDnnLinear(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x, w):
            ctx.save_for_backward(x, w)
            return lp(x.contiguous(), w.contiguous(), None, "none", [], "")

        @staticmethod
        def backward(ctx, g):
            x, w = ctx.saved_tensors
            g = g.contiguous()
            return lp(g, w.t().contiguous(), None, "none", [], ""), lp(g.t().contiguous(), x.t().contiguous(), None, "none", [], "")

    def linear(x, w, b=None):
        if b is not None or x.dim() != 2:
            raise NotImplementedError("the oneDNN stand-in covers bias-free 2-D linears only")
        return OneDnnLinear.apply(x, w)

    torch.nn.functional.linear = linear


class Probe:
    def before_step(self, step):
        pass

    def after_step(self, step, out):
        if step % args.every == 0 or step < 5:
            line = f"step {step} rss {rss_mib():.0f} MiB"
            if args.count_tensors:
                n, mib = live_tensors()
                line += f" tensors {n} ({mib:.0f} MiB)"
            s = out.stats
            line += f" samples/ray {s.get('samples_per_ray', 0):.0f} rays {s.get('rays_trained', 0):.0f}"
            print(line, flush=True)


run_loop = T.run_loop
T.run_loop = lambda trainee, step_fn, state, opts, device, log_path, callbacks=(), *rest: run_loop(
    trainee, step_fn, state, opts, device, log_path, list(callbacks) + [Probe()], *rest)
t0 = time.time()
T.train(T.TrainOptions(method=args.method, data=args.data, out=args.out, max_steps=args.steps, downscale=args.downscale,
                       overwrite=True, progress=False, overrides=args.overrides))
print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB, {time.time() - t0:.0f} s wall")
