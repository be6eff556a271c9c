"""Every bad option or input ends in one line naming the option or file, exit status 2, no
traceback, and nothing written. (Issue 18.)"""

import json

import numpy as np
import pytest

from conftest import TINY_VANILLA
from turbonerf.cli.main import main
from turbonerf.data.synthetic import write_tiny_transforms_scene

TINY = [a for kv in TINY_VANILLA for a in ("--set", kv)]


def _fails(capsys, args, *needles):
    assert main(args) == 2, args
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    for n in needles:
        assert n in err, (n, err)
    return err


@pytest.mark.parametrize(
    "extra, needle",
    [
        (["--set", "width=-5"], "width=-5"),
        (["--set", "lr=nan"], "lr=nan"),
        (["--set", "lr=inf"], "lr=inf"),
        (["--batch-rays", "0"], "--batch-rays"),
        (["--batch-rays", "-1"], "--batch-rays"),
        (["--max-steps", "0"], "--max-steps"),
        (["--max-steps", "-5"], "--max-steps"),
        (["--max-minutes", "-1"], "--max-minutes"),
        (["--downscale", "16"], "need at least"),
        (["--device", "bogus"], "--device"),
    ],
)
def test_bad_train_options(tiny_scene, tmp_path, capsys, extra, needle):
    run = tmp_path / "run"
    _fails(capsys, ["train", "--data", str(tiny_scene), "--out", str(run), "--no-progress", *TINY, *extra], needle)
    assert not run.exists() or not any(run.iterdir())


def test_cuda_without_cuda(tiny_scene, tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    _fails(capsys, ["train", "--data", str(tiny_scene), "--out", str(tmp_path / "r"), "--device", "cuda", "--no-progress"], "no CUDA")


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    from turbonerf.data.synthetic import write_tiny_blender_scene

    root = tmp_path_factory.mktemp("bad")
    scene = write_tiny_blender_scene(root / "scene", n_train=4, n_test=2, size=16)
    run = root / "run"
    assert main(["train", "--data", str(scene), "--out", str(run), "--max-steps", "2", "--batch-rays", "32", "--no-progress", *TINY]) == 0
    return run


@pytest.mark.parametrize(
    "extra, needle",
    [
        (["--chunk", "0"], "--chunk"),
        (["--limit", "-1"], "--limit"),
        (["--every", "0"], "--every"),
        (["--every", "-2"], "--every"),
        (["--split", "bogus"], "available: "),
        (["--device", "cuda:7"], "--device"),
    ],
)
def test_bad_eval_options(trained_run, capsys, extra, needle):
    _fails(capsys, ["eval", "--run", str(trained_run), "--no-progress", *extra], needle)


@pytest.mark.parametrize("extra, needle", [(["--frames", "0"], "--frames"), (["--frames", "-3"], "--frames"), (["--fps", "-5"], "--fps")])
def test_bad_render_options(trained_run, tmp_path, capsys, extra, needle):
    out = tmp_path / "frames"
    _fails(capsys, ["render", "--run", str(trained_run), "--out", str(out), "--no-progress", *extra], needle)
    assert not out.exists()


def _corrupt_run(run, tmp_path, how):
    import shutil

    from safetensors.torch import load_file, save_file

    bad = tmp_path / f"run_{how}"
    shutil.copytree(run, bad)
    ckpt = bad / "checkpoints" / "latest.safetensors"
    (bad / "checkpoints" / "previous.safetensors").unlink(missing_ok=True)
    tensors = load_file(ckpt)
    if how == "meta_not_json":
        save_file(tensors, ckpt, metadata={"turbonerf": "{not json"})
    elif how == "meta_list":
        save_file(tensors, ckpt, metadata={"turbonerf": "[1, 2]"})
    elif how == "meta_no_step":
        save_file(tensors, ckpt, metadata={"turbonerf": json.dumps({"method": "vanilla-nerf"})})
    elif how == "missing_tensor":
        from safetensors import safe_open

        with safe_open(str(ckpt), "pt") as f:
            meta = f.metadata()
        key = sorted(k for k in tensors if k.startswith("model."))[0]
        del tensors[key]
        save_file(tensors, ckpt, metadata=meta)
    elif how == "run_json_width":
        spec = json.loads((bad / "run.json").read_text())
        spec["config"]["width"] = "wide"
        (bad / "run.json").write_text(json.dumps(spec))
    elif how == "random_bytes":
        ckpt.write_bytes(np.random.default_rng(0).bytes(1000))
    return bad


@pytest.mark.parametrize("how, needle", [
    ("meta_not_json", "not valid JSON"), ("meta_list", "not a JSON object"), ("meta_no_step", "'step'"),
    ("missing_tensor", "missing, e.g. coarse."), ("run_json_width", "run.json"), ("random_bytes", "latest.safetensors"),
])
def test_corrupt_runs_are_one_line(trained_run, tmp_path, capsys, how, needle):
    bad = _corrupt_run(trained_run, tmp_path, how)
    _fails(capsys, ["eval", "--run", str(bad), "--no-progress"], needle)


def test_transforms_with_missing_images_trains_and_reports_the_skip(tmp_path, capsys):
    scene = write_tiny_transforms_scene(tmp_path / "cap", n_frames=12, size=16)
    removed = sorted((scene / "images").iterdir())[3:5]
    for p in removed:
        p.unlink()
    assert main(["inspect", str(scene)]) == 0
    out = capsys.readouterr()
    assert "2 frame(s)" in out.out and "skipped" in out.err
    run = tmp_path / "run"
    assert main(["train", "--data", str(scene), "--out", str(run), "--max-steps", "2", "--batch-rays", "32", "--no-progress", *TINY]) == 0
    assert main(["eval", "--run", str(run), "--no-progress", "--no-lpips-vgg"]) == 0


@pytest.mark.parametrize("how, needle", [
    ("zero_matrix", "singular rotation"), ("huge_translation", "implausibly far"), ("escape", "outside the scene folder"),
    ("zero_focal", "must be positive"), ("zero_size", "image size"), ("all_missing", "none of the"),
])
def test_corrupt_transforms_scenes_name_the_frame(tmp_path, capsys, how, needle):
    scene = write_tiny_transforms_scene(tmp_path / "cap", n_frames=4, size=16, per_frame_intrinsics=True)
    data = json.loads((scene / "transforms.json").read_text())
    f = data["frames"][2]
    if how == "zero_matrix":
        f["transform_matrix"] = [[0.0] * 4 for _ in range(4)]
    elif how == "huge_translation":
        f["transform_matrix"][0][3] = 1e300
    elif how == "escape":
        f["file_path"] = "../../../../etc/passwd"
    elif how == "zero_focal":
        f["fl_x"] = 0.0
    elif how == "zero_size":
        f["w"] = 0
    elif how == "all_missing":
        for p in (scene / "images").iterdir():
            p.unlink()
    (scene / "transforms.json").write_text(json.dumps(data))
    _fails(capsys, ["inspect", str(scene)], needle)
