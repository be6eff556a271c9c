"""Started by ``torchrun --nproc-per-node 2`` from tests/app/test_launch.py: the sharded commands
one after the other in one process group, as a script would call them, so that the test pays
for one launch (each costs ~9 s of imports on 2 cores) instead of one per command.

    python -m torch.distributed.run --nproc-per-node 2 tests/app/replica_jobs.py SCENE WORK

WORK/run: vanilla NeRF trained data-parallel (50 steps, 32 rays per process); its eval/, frames/
(5 orbit frames), two.safetensors (a shared bake) and WORK/student (an R2L distillation)."""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, for conftest
from conftest import TINY_VANILLA  # noqa: E402
from turbonerf.app.bake import BakeOptions, bake_run  # noqa: E402
from turbonerf.app.distill import DistillOptions, distill  # noqa: E402
from turbonerf.app.evaluate import EvalOptions, evaluate_run  # noqa: E402
from turbonerf.app.render import RenderOptions, render_sequence  # noqa: E402
from turbonerf.app.train import TrainOptions, train  # noqa: E402
from turbonerf.engine.distributed import joined  # noqa: E402

STEPS, BATCH = 50, 32
BAKE = dict(coarse_res=16, fine_res=2, threshold=0.0, batch=512, finetune_seconds=0.0, progress=False)
"""runs of 64 cells: both processes bake some of the 16^3 grid (not fine-tuned: its parallel updates are not bit-reproducible)"""
DISTILL = dict(num_pseudo_images=4, max_steps=100_000, max_minutes=0.05, schedule="budget", batch_rays=64,
               overrides=["width=16", "depth=4"], progress=False)
"""ended by time, with a learning rate that follows the time spent: the replicas must agree on
the budget left after each generated its share of the pseudo data"""


def main(scene: Path, work: Path) -> None:
    run = work / "run"
    with joined(torch.device("cpu")) as replicas:
        train(TrainOptions(method="vanilla-nerf", data=scene, out=run, max_steps=STEPS, batch_rays=BATCH,
                           overrides=list(TINY_VANILLA), progress=False), replicas)
        evaluate_run(run, EvalOptions(progress=False, lpips_vgg=False), replicas=replicas)
        render_sequence(run, work / "frames", RenderOptions(path="orbit", frames=5, progress=False), replicas=replicas)
        bake_run(run, BakeOptions(out=work / "two.safetensors", **BAKE), replicas)
        distill(DistillOptions(teacher=run, out=work / "student", **DISTILL), replicas)


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
