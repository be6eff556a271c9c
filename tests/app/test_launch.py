"""Data-parallel training and sharded evaluation with two processes on this machine (127.0.0.1
only): identical replicas, one checkpoint, the loss curve of one process with the same global
batch, resume with another number of processes, the same results.json, and a dead rank that
ends the job instead of hanging it."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import TINY_VANILLA
from turbonerf.app.launch import pop_nproc
from turbonerf.app.runs import load_trained
from turbonerf.bake.nerftree import load_tree, read_tree_header
from turbonerf.cli.main import main
from turbonerf.engine.distributed import SPARSE_MIN_NUMEL, state_fingerprint
from turbonerf.errors import TurboNerfError

TINY = {
    "vanilla-nerf": TINY_VANILLA,
    # a hash table of >= SPARSE_MIN_NUMEL entries: its gradient is averaged by rows
    "instant-ngp": ["n_levels=4", "log2_table_size=17", "base_resolution=8", "max_resolution=128", "hidden=16",
                    "grid_resolution=16", "steps_per_diagonal=128", "grid_update_every=2", "grid_warmup_steps=4"],
}
STEPS, BATCH = 50, 32


def sets(method: str) -> list[str]:
    return [a for kv in TINY[method] for a in ("--set", kv)]


def cli(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "turbonerf", *args], capture_output=True, text=True, timeout=timeout, env=env)


def log_records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]


def test_pop_nproc():
    assert pop_nproc(["train", "--nproc", "2", "--out", "x"]) == (2, ["train", "--out", "x"])
    assert pop_nproc(["eval", "--nproc=3"]) == (3, ["eval"])
    assert pop_nproc(["eval"]) == (1, ["eval"])
    with pytest.raises(TurboNerfError):
        pop_nproc(["train", "--nproc", "two"])


@pytest.mark.parametrize("method", ["instant-ngp", "vanilla-nerf"])
def test_two_processes_train_one_model(method, tiny_scene, tmp_path):
    run = tmp_path / "run2"
    res = cli("train", "--nproc", "2", "--method", method, "--data", str(tiny_scene), "--out", str(run),
              "--max-steps", str(STEPS), "--batch-rays", str(BATCH), "--no-progress", *sets(method))
    assert res.returncode == 0, res.stderr
    assert res.stdout.count("trained") == 1  # rank 0 alone reports
    # identical parameters and grids on both ranks at the end, equal to the one checkpoint written
    final = log_records(run)[-1]
    assert final["replicas"] == 2 and len(set(final["fingerprints"])) == 1
    model, spec, meta = load_trained(run, torch.device("cpu"))
    assert state_fingerprint(model) == final["fingerprints"][0]
    assert meta["step"] == STEPS
    big = [p for p in model.parameters() if p.dim() == 2 and p.numel() >= SPARSE_MIN_NUMEL]
    assert len(big) == (1 if method == "instant-ngp" else 0)
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["latest.safetensors", "previous.safetensors"]
    training = json.loads((run / "run.json").read_text())["training"]
    assert training["processes"] == 2 and training["global_batch_rays"] == 2 * BATCH
    records = [r for r in log_records(run) if "loss" in r and "skipped" not in r]
    assert all("comm_mb" in r for r in records)
    if big:  # the table's gradient travelled as rows: less than the table itself per step
        assert min(r["comm_mb"] for r in records) < big[0].numel() * 4 / 2**20
    # one process with the same global batch: the same loss curve within noise
    one = tmp_path / "run1"
    assert main(["train", "--method", method, "--data", str(tiny_scene), "--out", str(one), "--max-steps", str(STEPS),
                 "--batch-rays", str(2 * BATCH), "--no-progress", *sets(method)]) == 0
    ref = {r["step"]: r["loss"] for r in log_records(one) if "loss" in r}
    two = {r["step"]: r["loss"] for r in records}
    steps = [s for s in ref if s >= 20 and s in two]
    mean_ref, mean_two = (sum(d[s] for s in steps) / len(steps) for d in (ref, two))
    assert abs(mean_two - mean_ref) < 0.25 * mean_ref, (mean_two, mean_ref)
    # resume the 2-process run with one process
    assert main(["train", "--out", str(run), "--resume", "--max-steps", str(STEPS + 10), "--no-progress"]) == 0
    assert load_trained(run, torch.device("cpu"))[2]["step"] == STEPS + 10


def test_torchrun_eval_writes_the_results_of_one_process(tiny_scene, tmp_path):
    run = tmp_path / "run"
    assert main(["train", "--data", str(tiny_scene), "--out", str(run), "--max-steps", "20", "--batch-rays", "64",
                 "--no-progress", *sets("vanilla-nerf")]) == 0
    assert main(["eval", "--run", str(run), "--no-progress", "--no-lpips-vgg"]) == 0
    single = json.loads((run / "eval" / "results.json").read_text())
    (run / "eval" / "results.json").unlink()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo"}
    res = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
         "--master-port", str(free_port()), "-m", "turbonerf", "--", "eval", "--run", str(run), "--no-progress", "--no-lpips-vgg"],
        capture_output=True, text=True, timeout=240, env=env,
    )
    assert res.returncode == 0, res.stderr
    sharded = json.loads((run / "eval" / "results.json").read_text())
    assert sharded["processes"] == 2 and sharded["n_images"] == single["n_images"] == 2
    assert [r["name"] for r in sharded["per_image"]] == [r["name"] for r in single["per_image"]]
    for a, b in zip(sharded["per_image"], single["per_image"]):
        assert a["psnr"] == pytest.approx(b["psnr"], abs=1e-4)
    # a sharded render writes every frame once and the videos
    out = tmp_path / "frames"
    res = cli("render", "--nproc", "2", "--run", str(run), "--path", "orbit", "--frames", "5", "--out", str(out), "--no-progress")
    assert res.returncode == 0, res.stderr
    assert sorted(p.name for p in (out / "rgb").iterdir()) == [f"{i:04d}.png" for i in range(5)]
    assert (out / "rgb.mp4").stat().st_size > 0 and res.stdout.count("frames in") == 1
    # a shared bake (x-slices, then runs of 64 cells, joined by rank 0) writes the tree one process bakes
    bake = ["bake", "--run", str(run), "--coarse-res", "16", "--fine-res", "2", "--threshold", "0", "--batch", "512", "--no-progress"]
    res = cli(*bake, "--nproc", "2", "--out", str(tmp_path / "two.safetensors"))
    assert res.returncode == 0, res.stderr
    assert res.stdout.count("baked") == 1
    assert main([*bake, "--out", str(tmp_path / "one.safetensors")]) == 0
    one, two = (load_tree(tmp_path / f"{n}.safetensors") for n in ("one", "two"))
    assert one.n_blocks > 128 and read_tree_header(tmp_path / "two.safetensors")["info"]["processes"] == 2
    for name in ("index", "density", "sh"):
        assert np.array_equal(getattr(one, name), getattr(two, name)), name
    # a distillation with two processes: shared pseudo-data chunks, then a data-parallel student
    student = tmp_path / "student"
    res = cli("distill", "--nproc", "2", "--teacher", str(run), "--out", str(student), "--num-pseudo-images", "4",
              "--max-steps", "20", "--batch-rays", "64", "--no-progress", "--set", "width=16", "--set", "depth=4")
    assert res.returncode == 0, res.stderr
    manifest = json.loads((student / "pseudo" / "manifest.json").read_text())
    assert [c["index"] for c in manifest["chunks"]] == [0, 1, 2, 3] and res.stdout.count("distilled") == 1
    final = log_records(student)[-1]
    assert final["replicas"] == 2 and len(set(final["fingerprints"])) == 1


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pids_of_rank(rank: int, marker: str) -> list[int]:
    """Processes whose command line holds ``marker`` and whose environment says RANK=rank."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if marker in (proc / "cmdline").read_bytes().decode(errors="replace") and f"\0RANK={rank}\0".encode() in b"\0" + (proc / "environ").read_bytes():
                found.append(int(proc.name))
        except OSError:
            continue
    return found


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="needs /proc to find the rank's process")
def test_a_dead_rank_ends_the_job_with_a_message(tiny_scene, tmp_path):
    run = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "turbonerf", "train", "--nproc", "2", "--data", str(tiny_scene), "--out", str(run),
         "--max-steps", "100000", "--batch-rays", "32", "--no-progress", *sets("vanilla-nerf")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    deadline = time.monotonic() + 120
    while not ((run / "train_log.jsonl").is_file() and (run / "train_log.jsonl").read_text().count("\n") >= 2):
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read() if proc.poll() is not None else "no progress"
        time.sleep(0.2)
    victims = pids_of_rank(1, str(run))
    assert len(victims) == 1
    os.kill(victims[0], signal.SIGKILL)
    out, err = proc.communicate(timeout=90)  # never a hang
    assert proc.returncode == 1
    assert "train with 2 processes failed" in err and "rank 1 (exit code -9)" in err
    assert "Traceback" not in err
    model, spec, meta = load_trained(run, torch.device("cpu"))  # rank 0 kept a checkpoint
    assert meta["step"] >= 1
