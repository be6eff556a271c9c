import json
import math
import shutil

import pytest
import torch

from conftest import TINY_VANILLA
from turbonerf.cli.main import main
from turbonerf.data.formats import load_scene
from turbonerf.data.synthetic import write_tiny_blender_scene
from turbonerf.app import distill as dt
from turbonerf.engine.checkpoint import read_checkpoint_meta
from turbonerf.app.runs import CHECKPOINT, load_trained, read_run_spec
from turbonerf.app.train import TrainingInterrupted, TrainOptions, train
from turbonerf.errors import TurboNerfError
from turbonerf.app.evaluate import EvalOptions, evaluate_run
from turbonerf.rays import image_ray_bundle

TINY_STUDENT = ["width=64", "depth=4"]


@pytest.fixture(autouse=True)
def one_thread():
    """These tests train; on a shared 2-core machine one thread is several times faster."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    """A vanilla NeRF trained for a few seconds on a 16-view sphere scene: (scene, run)."""
    root = tmp_path_factory.mktemp("teacher")
    scene = write_tiny_blender_scene(root / "scene", n_train=16, n_test=4, size=16)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    opts = TrainOptions(method="vanilla-nerf", data=scene, out=root / "run", overrides=TINY_VANILLA + ["lr=5e-3"],
                        batch_rays=256, max_steps=300, precrop_steps=0, progress=False)
    train(opts)
    torch.set_num_threads(before)
    return scene, root / "run"


def _opts(teacher_run, out, **kw):
    base = dict(teacher=teacher_run, out=out, overrides=TINY_STUDENT, max_steps=300, num_pseudo_images=16,
                batch_rays=512, progress=False, log_every=50)
    return dt.DistillOptions(**(base | kw))


def _psnr(mse: float) -> float:
    return -10.0 * math.log10(mse)


def test_distilled_student_beats_a_constant_colour_on_held_out_views(teacher, tmp_path):
    scene, run = teacher
    res = dt.distill(_opts(run, tmp_path / "student"))
    assert res.step == 300 and res.pseudo.images == 16 and res.pseudo.rays == 16 * 256
    assert any("rays/s" in m for m in res.messages)

    spec = read_run_spec(tmp_path / "student")
    assert spec.method == "r2l" and spec.config["width"] == 64 and spec.scene == read_run_spec(run).scene
    meta = read_checkpoint_meta(tmp_path / "student" / CHECKPOINT)
    assert meta["method"] == "r2l" and meta["step"] == 300 and meta["pseudo_images"] == 16

    student, _, _ = load_trained(tmp_path / "student", torch.device("cpu"))
    sc = load_scene(scene)
    train_rgb = sc.split("train").images.float() / 255.0
    test = sc.split("test")
    mean_colour = train_rgb.reshape(-1, 3).mean(0)
    mse_student, mse_const = 0.0, 0.0
    for i in range(len(test)):
        rays = image_ray_bundle(test.cameras, i, sc.near, sc.far)
        with torch.no_grad():
            rgb = student.render(rays, sc.background)["rgb"]
        target = test.images[i].reshape(-1, 3).float() / 255.0
        mse_student += float(((rgb - target) ** 2).mean()) / len(test)
        mse_const += float(((mean_colour - target) ** 2).mean()) / len(test)
    assert _psnr(mse_student) > _psnr(mse_const) + 5.0

    # the student run is an ordinary run: `turbonerf eval` works and reports its cost
    r = evaluate_run(tmp_path / "student", EvalOptions(progress=False))
    assert r["method"] == "r2l" and r["samples_per_ray"] == 1.0 and r["psnr"] > _psnr(mse_const)
    assert r["flops_per_ray"] == student.in_dim * 64 * 2 + 2 * 64 * 64 * 2 + 64 * 3 * 2
    assert r["params"] == sum(p.numel() for p in student.parameters())


def test_cli_distill_then_eval_and_refuses_to_overwrite(teacher, tmp_path, capsys):
    _, run = teacher
    out = tmp_path / "student"
    args = ["distill", "--teacher", str(run), "--out", str(out), "--max-steps", "5", "--num-pseudo-images", "2",
            "--batch-rays", "128", "--set", "width=16", "--set", "depth=2", "--no-progress", "--threads", "1"]
    assert main(args) == 0
    assert "distilled 5 steps" in capsys.readouterr().out
    assert json.loads((out / "distill.json").read_text())["num_pseudo_images"] == 2
    assert main(["eval", "--run", str(out), "--no-progress"]) == 0
    res = json.loads((out / "eval" / "results.json").read_text())
    assert res["method"] == "r2l" and "flops_per_ray" in res and res["params"] > 0
    assert main(args) == 2
    assert "exists" in capsys.readouterr().err
    assert main(args[:2] + ["--student", "image", *args[2:]] + ["--overwrite"]) == 2


def test_interrupt_saves_a_checkpoint_and_resume_continues(teacher, tmp_path, monkeypatch):
    _, run = teacher
    out = tmp_path / "student"
    real = dt.real_rows
    calls = {"n": 0}

    def interrupt_on_fourth(*args):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(dt, "real_rows", interrupt_on_fourth)
    with pytest.raises(TrainingInterrupted):
        dt.distill(_opts(run, out, max_steps=10, num_pseudo_images=2))
    assert read_checkpoint_meta(out / CHECKPOINT)["step"] == 3
    monkeypatch.setattr(dt, "real_rows", real)
    res = dt.distill(_opts(run, out, max_steps=6, num_pseudo_images=2, resume=True))
    assert res.step == 6 and res.pseudo.new_images == 0


def test_generation_stops_early_under_a_tight_budget_and_real_rays_take_over(teacher, tmp_path):
    _, run = teacher
    res = dt.distill(_opts(run, tmp_path / "student", max_minutes=1e-9, num_pseudo_images=4))
    assert res.pseudo.stopped_early and res.pseudo.images == 0
    assert any("stopped early" in m for m in res.messages) and any("real rays only" in m for m in res.messages)
    assert res.step == 0


def test_pseudo_only_and_no_hard_examples_are_options(teacher, tmp_path):
    _, run = teacher
    res = dt.distill(_opts(run, tmp_path / "a", max_steps=3, num_pseudo_images=2, real_fraction=0.0, hard_ratio=0.0,
                           pseudo_dir=tmp_path / "shared"))
    assert res.step == 3
    res = dt.distill(_opts(run, tmp_path / "b", max_steps=3, num_pseudo_images=2, pseudo_dir=tmp_path / "shared"))
    assert res.pseudo.new_images == 0 and res.pseudo.images == 2  # reused
    assert dt.split_batch(100, 0.25, True) == (75, 25) and dt.split_batch(100, 0.25, False) == (0, 100)
    with pytest.raises(TurboNerfError, match="teacher renderer"):
        dt.distill(_opts(run, tmp_path / "c", teacher_renderer="magic"))
    with pytest.raises(TurboNerfError, match="NerfTree"):
        dt.distill(_opts(run, tmp_path / "d", teacher_renderer="nerftree"))


def test_a_budget_schedule_takes_the_students_rate_down_to_lr_final(teacher, tmp_path):
    _, run = teacher
    out = tmp_path / "student"
    dt.distill(_opts(run, out, max_steps=40, num_pseudo_images=2, schedule="budget", lr_final=0.05, log_every=1))
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    lrs = [r["lr"] for r in log if "lr" in r]
    peak = max(lrs)
    assert lrs[0] == peak  # no warm-up (it leaves image students at the background colour)
    assert 0.05 * peak <= lrs[-1] <= 0.065 * peak  # the fall ends at lr_final (0.06 at 39 / 40 of the budget)
    assert lrs[len(lrs) // 2] == peak  # the full rate until 60% of the budget
    assert json.loads((out / "distill.json").read_text())["schedule"] == "budget"
    with pytest.raises(TurboNerfError, match="schedule"):
        dt.distill(_opts(run, tmp_path / "bad", schedule="cosine"))
    with pytest.raises(TurboNerfError, match="lr-final"):
        dt.distill(_opts(run, tmp_path / "bad", schedule="budget", lr_final=0.0))


IMAGE_STUDENTS = {
    "pose2image": ["stages=2", "channels=16", "code_dim=32", "mlp_layers=2"],
    "hybrid": ["stride=4", "features=8", "n_samples=8", "channels=16", "n_levels=4", "log2_table_size=10", "max_resolution=64", "hidden=16"],
    "shared-backbone": ["stages=2", "channels=16", "code_dim=32", "mlp_layers=2", "nerf_width=16", "nerf_layers=2", "nerf_samples=8"],
    "mobile-r2l": ["stride=4", "channels=16", "n_blocks=2", "sr_channels=16,8", "n_points=4"],
}


@pytest.fixture(scope="module")
def ray_student_results(teacher, tmp_path_factory):
    _, run = teacher
    out = tmp_path_factory.mktemp("r2l") / "student"
    dt.distill(_opts(run, out, max_steps=2, num_pseudo_images=2))
    return evaluate_run(out, EvalOptions(progress=False))


@pytest.mark.parametrize("student", sorted(IMAGE_STUDENTS))
def test_image_students_distil_from_the_shared_store_and_eval_like_any_run(student, teacher, ray_student_results, tmp_path):
    """Each image-space student trains on the pseudo-data store R2L uses (shared, not re-rendered),
    saves a run that `eval` scores with the same results.json keys as a ray method (plus its FLOPs
    per frame), `render` renders, and --resume continues it."""
    _, run = teacher
    shared = tmp_path / "pseudo"
    dt.distill(_opts(run, tmp_path / "r2l", max_steps=1, num_pseudo_images=4, pseudo_dir=shared))
    out = tmp_path / student
    res = dt.distill(_opts(run, out, student=student, overrides=IMAGE_STUDENTS[student], max_steps=6, batch_images=3,
                           num_pseudo_images=4, pseudo_dir=shared))
    assert res.step == 6 and res.pseudo.new_images == 0 and res.pseudo.images == 4
    spec = read_run_spec(out)
    assert spec.method == student and spec.config["height"] == 16 and spec.config["width"] == 16
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert all(math.isfinite(r["loss"]) for r in log if "loss" in r)
    r = evaluate_run(out, EvalOptions(progress=False))
    assert set(ray_student_results) <= set(r) and r["method"] == student and r["flops_per_frame"] > 0
    assert r["width"] == 16 and len(r["per_image"]) == 4 and math.isfinite(r["psnr"])
    assert main(["render", "--run", str(out), "--out", str(tmp_path / "video"), "--frames", "3", "--no-progress"]) == 0
    assert len(list((tmp_path / "video" / "rgb").glob("*.png"))) == 3
    res = dt.distill(_opts(run, out, student=student, max_steps=8, batch_images=3, num_pseudo_images=4, pseudo_dir=shared,
                           resume=True))
    assert res.step == 8


def test_train_refuses_an_image_student_and_points_to_distill(teacher, tmp_path):
    scene, _ = teacher
    with pytest.raises(TurboNerfError, match="distill --teacher RUN --student hybrid"):
        train(TrainOptions(method="hybrid", data=scene, out=tmp_path / "x", max_steps=1, progress=False))


@pytest.mark.skipif(shutil.which("g++") is None and shutil.which("clang++") is None, reason="no C++ compiler for torch.compile on the CPU")
def test_compiled_image_student_saves_a_run_that_loads_and_scores_like_any_other(teacher, tmp_path):
    """`distill --compile`: the compiled networks train, and the checkpoint keeps the eager keys
    (eval loads it into a plain, uncompiled student)."""
    _, run = teacher
    out = tmp_path / "compiled"
    res = dt.distill(_opts(run, out, student="mobile-r2l", overrides=IMAGE_STUDENTS["mobile-r2l"], max_steps=3, batch_images=2,
                           num_pseudo_images=2, compile=True))
    assert res.step == 3 and any("compiled with torch.compile" in m for m in res.messages)
    model, _, _ = load_trained(out, torch.device("cpu"))
    assert not any("_orig_mod" in k for k in model.state_dict())
    assert math.isfinite(evaluate_run(out, EvalOptions(progress=False))["psnr"])
