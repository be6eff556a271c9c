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


def model_bytes(run: Path) -> dict:
    """Bytes of the parameters averaged densely, of the tables averaged by rows, and of the buffers."""
    from turbonerf.app.runs import load_trained
    from turbonerf.engine.distributed import SPARSE_MIN_NUMEL

    model = load_trained(run, torch.device("cpu"))[0]
    rows = sum(p.numel() * p.element_size() for p in model.parameters() if p.dim() == 2 and p.numel() >= SPARSE_MIN_NUMEL)
    total = sum(p.numel() * p.element_size() for p in model.parameters())
    buffers = sum(b.numel() * b.element_size() for b in model.buffers())
    return {"dense": total - rows, "rows_table": rows, "buffers": buffers}


def projection(results: dict, sync_every: int = 16) -> str:
    """Markdown: communication per rank and step at N processes, from the 2-process measurement.

    Dense all-reduce (ring): 2 (N-1)/N x the dense bytes per rank. Row-sparse tables (all-gather):
    (N-1) x the rows one rank sends (measured at N=2, held fixed: weak scaling, same rays per rank),
    or the ring all-reduce of the whole table where that moves less (the rule
    ``engine.distributed.rows_pay`` applies at every step). Grids: their bytes / sync_every. Time at
    the gloo loopback bandwidth measured here and at nominal link speeds (not measured here)."""
    t64 = results["allreduce_s"][64]
    loop_bw = 64 * 2**20 / t64  # bytes per second one rank moves in a 2-process ring all-reduce
    links = {"gloo loopback (measured)": loop_bw, "10 GbE (nominal 1.25 GB/s)": 1.25e9, "NVLink H100 (nominal ~450 GB/s bus)": 450e9}
    lines = ["| method | N | MB / rank / step | " + " | ".join(f"ms at {k}" for k in links) + " |",
             "|---|---|---|" + "---|" * len(links)]
    for m, row in results["methods"].items():
        b = row["bytes"]
        measured = row["2x1"]["comm_mb_per_step"] * 2**20
        rows_at_2 = max(measured - b["dense"] - b["buffers"] / sync_every, 0.0)
        for n in (2, 4, 8):
            table = min(rows_at_2 * (n - 1), b["rows_table"] * 2 * (n - 1) / n) if b["rows_table"] else 0.0
            vol = b["dense"] * 2 * (n - 1) / n + table + b["buffers"] / sync_every
            lines.append(f"| {m} | {n} | {vol / 2**20:.1f} | " + " | ".join(f"{1000 * vol / bw:.1f}" for bw in links.values()) + " |")
    return "\n".join(lines)


def measured_table(results: dict) -> str:
    lines = ["| method | steps/s 1 proc x 2 threads | steps/s 2 procs x 1 thread | speed-up | comm ms/step (incl. waits) | comm MB/step | eval frames/s 1x2 | eval frames/s 2x1 | max per-image PSNR diff |",
             "|---|---|---|---|---|---|---|---|---|"]
    for m, r in results["methods"].items():
        a, b = r["1x2"], r["2x1"]
        lines.append(f"| {m} | {a['steps_per_s']:.2f} | {b['steps_per_s']:.2f} | {b['steps_per_s'] / a['steps_per_s']:.2f}x | "
                     f"{b['comm_ms_per_step']:.0f} | {b['comm_mb_per_step']:.1f} | {r['eval_fps']['1x2']:.2f} | {r['eval_fps']['2x1']:.2f} | "
                     f"{r['eval_max_psnr_diff']:.1e} |")
    return "\n".join(lines)


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
        row["bytes"] = model_bytes(one)
        results["methods"][m] = row
        print(m, json.dumps(row), flush=True)
        (a.out / "scaling.json").write_text(json.dumps(results, indent=2))
    tables = measured_table(results) + "\n\n" + projection(results)
    (a.out / "scaling.md").write_text(tables + "\n")
    print(tables)
    print(f"-> {a.out / 'scaling.json'}, {a.out / 'scaling.md'}")


if __name__ == "__main__":
    main()
