"""Data-parallel training and sharded work with two processes on this machine (127.0.0.1 only):
identical replicas, one checkpoint, the loss curve of one process with the same global batch,
resume with another number of processes, the same results.json, frames, tree and distillation
as one process, and a dead rank that ends the job instead of hanging it. Three launches in all
(``--nproc``, torchrun, ``--nproc`` killed): each costs ~9 s of imports on 2 cores."""

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
from turbonerf.app.bake import BakeOptions, bake_run
from turbonerf.app.evaluate import EvalOptions, evaluate_run
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
    assert main(["--", "methods"]) == 0  # what torchrun passes: -m turbonerf -- COMMAND


def test_two_processes_train_instant_ngp_like_one_with_their_global_batch(tiny_scene, tmp_path):
    method = "instant-ngp"
    run = tmp_path / "run2"
    res = cli("train", "--nproc", "2", "--method", method, "--data", str(tiny_scene), "--out", str(run),
              "--max-steps", str(STEPS), "--batch-rays", str(BATCH), "--no-progress", *sets(method))
    assert res.returncode == 0, res.stderr
    assert res.stdout.count("trained") == 1  # rank 0 alone reports
    model = check_replicas_agree(run, tiny_scene, method, tmp_path / "run1")
    big = [p for p in model.parameters() if p.dim() == 2 and p.numel() >= SPARSE_MIN_NUMEL]
    assert len(big) == 1
    records = [r for r in log_records(run) if "loss" in r and "skipped" not in r]
    assert min(r["comm_mb"] for r in records) < big[0].numel() * 4 / 2**20  # the table travelled as rows
    training = json.loads((run / "run.json").read_text())["training"]
    assert training["processes"] == 2 and training["global_batch_rays"] == 2 * BATCH
    # resume the 2-process run with one process
    assert main(["train", "--out", str(run), "--resume", "--max-steps", str(STEPS + 10), "--no-progress"]) == 0
    assert load_trained(run, torch.device("cpu"))[2]["step"] == STEPS + 10


def check_replicas_agree(run: Path, scene: Path, method: str, reference: Path):
    """The 2-process run ``run`` (STEPS steps, BATCH rays each) ended with identical replicas
    equal to its one checkpoint, and its loss curve is that of one process with 2 x BATCH rays
    (trained into ``reference``) within noise. Returns the trained model."""
    final = log_records(run)[-1]
    assert final["replicas"] == 2 and len(set(final["fingerprints"])) == 1
    model, spec, meta = load_trained(run, torch.device("cpu"))
    assert state_fingerprint(model) == final["fingerprints"][0]
    assert meta["step"] == STEPS
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["latest.safetensors", "previous.safetensors"]
    records = [r for r in log_records(run) if "loss" in r and "skipped" not in r]
    assert records and all("comm_mb" in r for r in records)
    assert main(["train", "--method", method, "--data", str(scene), "--out", str(reference), "--max-steps", str(STEPS),
                 "--batch-rays", str(2 * BATCH), "--no-progress", *sets(method)]) == 0
    ref = {r["step"]: r["loss"] for r in log_records(reference) if "loss" in r}
    two = {r["step"]: r["loss"] for r in records}
    steps = [s for s in ref if s >= 20 and s in two]
    mean_ref, mean_two = (sum(d[s] for s in steps) / len(steps) for d in (ref, two))
    assert abs(mean_two - mean_ref) < 0.25 * mean_ref, (mean_two, mean_ref)
    return model


def test_torchrun_trains_evaluates_renders_bakes_and_distils_like_one_process(tiny_scene, tmp_path):
    """One real torchrun launch runs the sharded commands in one process group (replica_jobs.py);
    each result is then checked against what one process makes."""
    from replica_jobs import BAKE, DISTILL, STEPS as JOB_STEPS, BATCH as JOB_BATCH

    assert (JOB_STEPS, JOB_BATCH) == (STEPS, BATCH)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo"}
    res = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
         "--master-port", str(free_port()), str(Path(__file__).with_name("replica_jobs.py")), str(tiny_scene), str(tmp_path)],
        capture_output=True, text=True, timeout=300, env=env,
    )
    assert res.returncode == 0, res.stderr
    run = tmp_path / "run"
    # data-parallel vanilla NeRF: identical replicas, one checkpoint, the loss curve of one process
    check_replicas_agree(run, tiny_scene, "vanilla-nerf", tmp_path / "one")
    # eval: the per-image PSNR of one process
    sharded = json.loads((run / "eval" / "results.json").read_text())
    single = evaluate_run(run, EvalOptions(progress=False, lpips_vgg=False), out_name="eval_one")
    assert sharded["processes"] == 2 and sharded["n_images"] == single["n_images"] == 2
    assert [r["name"] for r in sharded["per_image"]] == [r["name"] for r in single["per_image"]]
    for a, b in zip(sharded["per_image"], single["per_image"]):
        assert a["psnr"] == pytest.approx(b["psnr"], abs=1e-4)
    # render: every frame once, and the videos
    out = tmp_path / "frames"
    assert sorted(p.name for p in (out / "rgb").iterdir()) == [f"{i:04d}.png" for i in range(5)]
    assert (out / "rgb.mp4").stat().st_size > 0
    # bake: x-slices and runs of cells shared out, joined by rank 0 into the tree one process bakes
    bake_run(run, BakeOptions(out=tmp_path / "one.safetensors", **BAKE))
    one, two = (load_tree(tmp_path / f"{n}.safetensors") for n in ("one", "two"))
    assert one.n_blocks > 128 and read_tree_header(tmp_path / "two.safetensors")["info"]["processes"] == 2
    for name in ("index", "density", "sh"):
        assert np.array_equal(getattr(one, name), getattr(two, name)), name
    # distill: shared pseudo-data chunks, then a data-parallel student
    student = tmp_path / "student"
    manifest = json.loads((student / "pseudo" / "manifest.json").read_text())
    assert [c["index"] for c in manifest["chunks"]] == list(range(DISTILL["num_pseudo_images"]))
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
