"""Data-parallel scaling on this machine: 2 processes x 1 thread against 1 process x 2 threads.

For each method: training steps per second at the same global batch (1 process with B rays, 2
processes with B/2 each), the all-reduce time and megabytes per step (from the run's
train_log.jsonl: ``comm_seconds`` also counts waiting for the slower rank), and eval frames per
second (1 process, 2 threads vs ``--nproc 2``). Also gloo's all-reduce bandwidth between two
processes on loopback, from which the table projects the communication time at more processes.

    python benchmarks/distributed_scaling.py --data ../shared/data/nerf_synthetic/lego --out /tmp/ddp_bench

Run it alone on the machine: it measures throughput.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

WARMUP_STEPS = 10


def turbonerf(args: list[str], threads: int) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "turbonerf", *args], check=True, env=env, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t


def training_rates(run: Path) -> dict:
    recs = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
    recs = [r for r in recs if "loss" in r and "skipped" not in r]
    first = next(r for r in recs if r["step"] >= WARMUP_STEPS)
    last = recs[-1]
    steps = last["step"] - first["step"]
    after = [r for r in recs if r["step"] > first["step"]]
    return {
        "steps_per_s": steps / (last["seconds"] - first["seconds"]),
        "comm_ms_per_step": 1000 * sum(r.get("comm_seconds", 0.0) for r in after) / steps,
        "comm_mb_per_step": sum(r.get("comm_mb", 0.0) for r in after) / steps,
        "final_psnr": last["psnr"],
    }


def _allreduce_worker(rank: int, world: int, store: str, sizes_mb: list[int], out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    res = {}
    for mb in sizes_mb:
        t = torch.ones(mb * 2**20 // 4)
        dist.all_reduce(t)
        dist.barrier()
        start = time.perf_counter()
        for _ in range(5):
            dist.all_reduce(t)
        res[mb] = (time.perf_counter() - start) / 5
    if rank == 0:
        Path(out).write_text(json.dumps(res))
    dist.destroy_process_group()


def allreduce_seconds(sizes_mb: list[int]) -> dict[int, float]:
    """Seconds per all-reduce of an fp32 buffer of each size, 2 gloo processes on loopback."""
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "res.json"
        mp.spawn(_allreduce_worker, args=(2, str(Path(tmp) / "store"), sizes_mb, str(out)), nprocs=2)
        return {int(k): v for k, v in json.loads(out.read_text()).items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--methods", default="instant-ngp,vanilla-nerf,efficient-nerf,nerfacto")
    ap.add_argument("--steps", default="instant-ngp=80,vanilla-nerf=30,efficient-nerf=60,nerfacto=60")
    ap.add_argument("--batch", type=int, default=1024, help="global batch (rays per step, all processes)")
    ap.add_argument("--downscale", type=int, default=4)
    ap.add_argument("--eval-images", type=int, default=8)
    a = ap.parse_args()
    steps = dict((kv.split("=")[0], int(kv.split("=")[1])) for kv in a.steps.split(","))
    a.out.mkdir(parents=True, exist_ok=True)
    results = {"cpu": subprocess.run(["lscpu"], capture_output=True, text=True).stdout, "methods": {}}
    results["allreduce_s"] = allreduce_seconds([1, 8, 64])
    print("all-reduce seconds (2 gloo processes):", results["allreduce_s"], flush=True)
    for m in a.methods.split(","):
        row = {}
        common = ["train", "--method", m, "--data", str(a.data), "--downscale", str(a.downscale),
                  "--max-steps", str(steps.get(m, 50)), "--no-progress", "--overwrite"]
        one, two = a.out / f"{m}_1x2", a.out / f"{m}_2x1"
        turbonerf(common + ["--out", str(one), "--batch-rays", str(a.batch)], threads=2)
        row["1x2"] = training_rates(one)
        turbonerf(common + ["--out", str(two), "--batch-rays", str(a.batch // 2), "--nproc", "2"], threads=1)
        row["2x1"] = training_rates(two)
        ev = ["eval", "--run", str(one), "--limit", str(a.eval_images), "--no-progress", "--no-lpips-vgg"]
        turbonerf(ev, threads=2)
        r1 = json.loads((one / "eval" / "results.json").read_text())
        turbonerf(ev + ["--nproc", "2"], threads=1)
        r2 = json.loads((one / "eval" / "results.json").read_text())
        row["eval_fps"] = {"1x2": r1["n_images"] / r1["wall_seconds"], "2x1": r2["n_images"] / r2["wall_seconds"]}
        row["eval_max_psnr_diff"] = max(abs(x["psnr"] - y["psnr"]) for x, y in zip(r1["per_image"], r2["per_image"]))
        results["methods"][m] = row
        print(m, json.dumps(row), flush=True)
        (a.out / "scaling.json").write_text(json.dumps(results, indent=2))
    print(f"-> {a.out / 'scaling.json'}")


if __name__ == "__main__":
    main()
