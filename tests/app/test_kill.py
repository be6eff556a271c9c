"""Fault injection: kill -9 a tiny training at random moments (mid-step, mid-checkpoint, before
the first checkpoint); every time the run must resume and then evaluate. The number of kills is
TURBONERF_KILLS (default 8 in the suite; the issue's bar of 50 was run with TURBONERF_KILLS=50)."""

import os
import random
import signal
import subprocess
import sys
import time

import torch

from conftest import TINY_VANILLA
from turbonerf.app.runs import load_trained
from turbonerf.cli.main import main

KILLS = int(os.environ.get("TURBONERF_KILLS", "8"))


def test_random_kill_9_never_leaves_a_run_that_cannot_resume(tiny_scene, tmp_path):
    rng = random.Random(0)
    tiny = [a for kv in TINY_VANILLA for a in ("--set", kv)]
    run = tmp_path / "run"
    base = [sys.executable, "-m", "turbonerf", "train", "--data", str(tiny_scene), "--out", str(run), "--batch-rays", "32",
            "--checkpoint-every", "1", "--no-progress", *tiny]
    target = 0
    for k in range(KILLS):
        target += 40
        args = base + ["--max-steps", str(target)] + (["--resume"] if (run / "run.json").is_file() else [])
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        time.sleep(rng.uniform(0.5, 4.0))
        proc.send_signal(signal.SIGKILL)
        err = proc.communicate()[1]
        assert "Traceback" not in err, err
        if (run / "run.json").is_file() and any((run / "checkpoints").glob("*.safetensors")):
            load_trained(run, torch.device("cpu"))  # what resume and eval load (latest, or previous)
    # after all the kills: resume to completion and evaluate
    # (on a loaded machine every kill may come before run.json exists: then this starts the run)
    resume = ["--resume"] if (run / "run.json").is_file() else ["--data", str(tiny_scene), *tiny]
    steps = target + 2 if resume[0] == "--resume" else 2
    assert main(["train", "--out", str(run), *resume, "--max-steps", str(steps), "--no-progress"]) == 0
    assert main(["eval", "--run", str(run), "--no-progress", "--no-lpips-vgg"]) == 0
    assert not list((run / "checkpoints").glob(".*tmp*"))


def test_a_second_trainer_on_a_folder_in_use_is_refused(tiny_scene, tmp_path, capsys):
    tiny = [a for kv in TINY_VANILLA for a in ("--set", kv)]
    run = tmp_path / "run"
    args = ["train", "--data", str(tiny_scene), "--out", str(run), "--batch-rays", "32", "--no-progress", *tiny]
    proc = subprocess.Popen([sys.executable, "-m", "turbonerf", *args, "--max-steps", "100000"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 60
        while not (run / "checkpoints" / "latest.safetensors").is_file() and time.time() < deadline:
            time.sleep(0.2)
        capsys.readouterr()
        assert main(["train", "--out", str(run), "--resume", "--max-steps", "5", "--no-progress"]) == 2
        assert main(args + ["--max-steps", "5", "--overwrite"]) == 2
        assert main(["eval", "--run", str(run), "--no-progress"]) == 2
        err = capsys.readouterr().err
        assert err.count("in use by train") == 3 and "Traceback" not in err
        assert (run / "run.json").is_file()  # the second trainer deleted nothing
    finally:
        proc.kill()
        proc.wait()
