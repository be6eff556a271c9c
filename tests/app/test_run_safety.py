"""Run folders are sacred; divergence never reaches disk; recovery from half-finished writes;
resume is exact. (Issue 18.)"""

import json
import subprocess
import sys

import pytest
import torch

from conftest import TINY_VANILLA
from turbonerf.app.runs import LOCK_FILE, RunLock
from turbonerf.app.train import TrainOptions, train
from turbonerf.cli.main import main
from turbonerf.engine.checkpoint import NonFiniteCheckpoint, load_checkpoint, save_checkpoint
from turbonerf.errors import TurboNerfError


def _train_args(scene, run, *extra):
    tiny = [a for kv in TINY_VANILLA for a in ("--set", kv)]
    return ["train", "--data", str(scene), "--out", str(run), "--batch-rays", "32", "--no-progress", *tiny, *extra]


def test_overwrite_refuses_a_folder_that_is_not_a_run(tiny_scene, tmp_path, capsys):
    docs = tmp_path / "documents"
    docs.mkdir()
    (docs / "thesis.tex").write_text("years of work")
    assert main(_train_args(tiny_scene, docs, "--max-steps", "1", "--overwrite")) == 2
    assert "only a turbonerf run folder" in capsys.readouterr().err
    assert (docs / "thesis.tex").read_text() == "years of work"


@pytest.mark.parametrize("where", ["equal", "inside", "contains"])
def test_out_never_touches_the_scene(tiny_scene, tmp_path, capsys, where):
    out = {"equal": tiny_scene, "inside": tiny_scene / "run", "contains": tiny_scene.parent}[where]
    before = sorted(p.name for p in tiny_scene.rglob("*"))
    assert main(_train_args(tiny_scene, out, "--max-steps", "1", "--overwrite")) == 2
    assert "scene folder" in capsys.readouterr().err
    assert sorted(p.name for p in tiny_scene.rglob("*")) == before


def test_overwrite_replaces_a_run(tiny_scene, tmp_path):
    run = tmp_path / "run"
    assert main(_train_args(tiny_scene, run, "--max-steps", "2")) == 0
    assert main(_train_args(tiny_scene, run, "--max-steps", "1")) == 2  # no silent overwrite
    assert main(_train_args(tiny_scene, run, "--max-steps", "1", "--overwrite")) == 0
    assert json.loads((run / "train_log.jsonl").read_text().splitlines()[-1])["step"] == 1


def test_lock_stops_a_second_writer_and_stale_locks_are_taken_over(tmp_path, capsys):
    run = tmp_path / "run"
    with RunLock(run, "train"):
        with pytest.raises(TurboNerfError, match="in use by train"):
            with RunLock(run, "eval"):
                pass
    assert not (run / LOCK_FILE).exists()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True).stdout.strip()
    import socket

    (run / LOCK_FILE).write_text(json.dumps({"pid": int(dead), "host": socket.gethostname(), "command": "train"}))
    with RunLock(run, "train"):
        pass
    assert "stale lock" in capsys.readouterr().err


def test_resume_infers_the_method(tiny_scene, tmp_path):
    run = tmp_path / "run"
    assert main(_train_args(tiny_scene, run, "--max-steps", "2")) == 0
    assert main(["train", "--out", str(run), "--resume", "--max-steps", "3", "--no-progress"]) == 0
    meta = json.loads((run / "run.json").read_text())
    assert meta["method"] == "vanilla-nerf"


def test_resume_keeps_the_runs_batch_unless_told(tiny_scene, tmp_path):
    """A resumed run goes on with the rays per step it was trained with (not the default)."""
    run = tmp_path / "run"
    assert main(_train_args(tiny_scene, run, "--max-steps", "2", "--batch-rays", "48")) == 0
    assert main(["train", "--out", str(run), "--resume", "--max-steps", "3", "--no-progress"]) == 0
    assert json.loads((run / "run.json").read_text())["training"]["batch_rays"] == 48
    assert main(["train", "--out", str(run), "--resume", "--max-steps", "4", "--batch-rays", "40", "--no-progress"]) == 0
    assert json.loads((run / "run.json").read_text())["training"]["batch_rays"] == 40


def test_folder_left_before_the_first_step_can_be_restarted(tiny_scene, tmp_path):
    run = tmp_path / "run"
    assert main(_train_args(tiny_scene, run, "--max-steps", "1")) == 0
    for p in (run / "checkpoints").iterdir():
        p.unlink()
    assert main(_train_args(tiny_scene, run, "--max-steps", "1")) == 0  # no --overwrite needed
    for p in (run / "checkpoints").iterdir():
        p.unlink()
    assert main(["train", "--out", str(run), "--resume", "--max-steps", "2", "--no-progress"]) == 0


def test_divergence_rolls_back_and_never_saves_nan(tiny_scene, tmp_path, capsys):
    run = tmp_path / "run"
    code = main(_train_args(tiny_scene, run, "--max-steps", "40", "--set", "lr=1e30", "--checkpoint-every", "5"))
    err = capsys.readouterr().err
    assert code in (0, 2)
    if code == 2:
        assert "diverged" in err and "Traceback" not in err
    for ckpt in (run / "checkpoints").glob("*.safetensors"):
        tensors, _ = load_checkpoint(ckpt)
        assert all(torch.isfinite(v).all() for v in tensors.values() if v.is_floating_point()), ckpt
    for line in (run / "train_log.jsonl").read_text().splitlines():
        json.loads(line, parse_constant=lambda c: pytest.fail(f"non-JSON constant {c} in the log"))


def test_nan_loss_steps_are_skipped_then_rolled_back(tiny_scene, tmp_path, monkeypatch):
    """Inject NaN into the loss for 3 steps in a row: the run rolls back and halves the lr."""
    from turbonerf.methods.vanilla_nerf import VanillaNeRF

    real_loss = VanillaNeRF.loss
    calls = {"n": 0}

    def bad_loss(self, outputs, target):
        calls["n"] += 1
        loss, stats = real_loss(self, outputs, target)
        return (loss * float("nan"), stats) if 4 <= calls["n"] <= 6 else (loss, stats)

    monkeypatch.setattr(VanillaNeRF, "loss", bad_loss)
    run = tmp_path / "run"
    res = train(TrainOptions(method="vanilla-nerf", data=tiny_scene, out=run, max_steps=8, batch_rays=32,
                             overrides=TINY_VANILLA, progress=False, checkpoint_every=2, log_every=1))
    assert res.step == 8
    log = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
    assert sum("skipped" in r for r in log) == 3
    _, meta = load_checkpoint(run / "checkpoints" / "latest.safetensors")
    assert meta["rollbacks"] == 1 and meta["lr_scale"] == 0.5


def test_non_finite_checkpoint_is_never_written(tmp_path):
    path = tmp_path / "c" / "latest.safetensors"
    save_checkpoint(path, {"model.w": torch.ones(3)}, {"method": "x", "step": 1})
    with pytest.raises(NonFiniteCheckpoint):
        save_checkpoint(path, {"model.w": torch.tensor([1.0, float("nan")])}, {"method": "x", "step": 2})
    tensors, meta = load_checkpoint(path)
    assert meta["step"] == 1 and not (tmp_path / "c" / "previous.safetensors").exists()


def test_eval_and_resume_fall_back_to_previous(tiny_scene, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(_train_args(tiny_scene, run, "--max-steps", "4", "--checkpoint-every", "2")) == 0
    (run / "checkpoints" / "latest.safetensors").write_bytes(b"truncated")
    capsys.readouterr()
    assert main(["eval", "--run", str(run), "--no-progress", "--no-lpips-vgg"]) == 0
    assert "previous.safetensors" in capsys.readouterr().err
    (run / "checkpoints" / "latest.safetensors").unlink()
    assert main(["train", "--out", str(run), "--resume", "--max-steps", "5", "--no-progress"]) == 0
    assert "previous.safetensors" in capsys.readouterr().err


def test_orphan_temp_files_are_cleaned_at_the_next_start(tiny_scene, tmp_path):
    run = tmp_path / "run"
    assert main(_train_args(tiny_scene, run, "--max-steps", "1")) == 0
    orphan = run / "checkpoints" / ".tmpAbC123"
    orphan.write_bytes(b"x" * 100)
    assert main(["train", "--out", str(run), "--resume", "--max-steps", "2", "--no-progress"]) == 0
    assert not orphan.exists()


def test_final_save_keeps_the_last_distinct_checkpoint(tiny_scene, tmp_path):
    run = tmp_path / "run"
    assert main(_train_args(tiny_scene, run, "--max-steps", "4", "--checkpoint-every", "2")) == 0
    steps = {p.name: load_checkpoint(p)[1]["step"] for p in (run / "checkpoints").glob("*.safetensors")}
    assert steps == {"latest.safetensors": 4, "previous.safetensors": 2}


def test_resume_is_bit_exact(tiny_scene, tmp_path):
    common = dict(method="vanilla-nerf", data=tiny_scene, batch_rays=32, overrides=TINY_VANILLA, progress=False, precrop_steps=3)
    train(TrainOptions(out=tmp_path / "a", max_steps=8, **common))
    train(TrainOptions(out=tmp_path / "b", max_steps=4, **common))
    train(TrainOptions(out=tmp_path / "b", max_steps=8, resume=True, **common))
    a, _ = load_checkpoint(tmp_path / "a" / "checkpoints" / "latest.safetensors")
    b, _ = load_checkpoint(tmp_path / "b" / "checkpoints" / "latest.safetensors")
    for k in a:
        if k.startswith("model."):
            assert torch.equal(a[k], b[k]), k


def test_disk_full_during_checkpoint_is_one_line(tiny_scene, tmp_path, monkeypatch, capsys):
    import turbonerf.engine.checkpoint as ck

    def full(*a, **k):
        raise OSError(28, "No space left on device")

    run = tmp_path / "run"
    assert main(_train_args(tiny_scene, run, "--max-steps", "2")) == 0
    before = (run / "checkpoints" / "latest.safetensors").read_bytes()
    monkeypatch.setattr(ck, "save_file", full)
    assert main(["train", "--out", str(run), "--resume", "--max-steps", "4", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "No space left" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert (run / "checkpoints" / "latest.safetensors").read_bytes() == before
    assert not list((run / "checkpoints").glob(".*tmp*"))
