import json
import subprocess
import sys

import pytest
from safetensors.torch import load_file, save_file

from conftest import TINY_VANILLA, shared_scene
from turbonerf.cli.main import main

TINY_SET = [arg for kv in TINY_VANILLA for arg in ("--set", kv)]


def _train(scene, out, *extra):
    return main(["train", "--data", str(scene), "--out", str(out), "--max-steps", "2", "--batch-rays", "64", "--no-progress", *TINY_SET, *extra])


def test_end_to_end_on_a_tiny_scene(tiny_scene, tmp_path, capsys):
    assert main(["inspect", str(tiny_scene), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["format"] == "blender" and info["splits"] == {"train": 4, "test": 2}
    assert {"width", "height", "fx", "fy", "cx", "cy"} <= set(info)

    run = tmp_path / "run"
    assert _train(tiny_scene, run) == 0
    assert main(["eval", "--run", str(run), "--no-progress"]) == 0
    res = json.loads((run / "eval" / "results.json").read_text())
    for key in ("psnr", "ssim", "lpips", "ms_per_frame", "n_images", "width", "height", "device"):
        assert key in res
    assert res["n_images"] == 2 and len(res["per_image"]) == 2 and res["psnr"] > 0
    assert (run / "eval" / "images" / "r_0.png").is_file()

    assert main(["render", "--run", str(run), "--path", "orbit", "--out", str(tmp_path / "orbit"), "--frames", "3", "--no-progress"]) == 0
    assert len(list((tmp_path / "orbit" / "rgb").glob("*.png"))) == 3
    assert len(list((tmp_path / "orbit" / "depth").glob("*.png"))) == 3
    assert any((tmp_path / "orbit").glob("rgb.*"))
    # rendering again into the same folder is refused, nothing is lost
    assert main(["render", "--run", str(run), "--out", str(tmp_path / "orbit"), "--frames", "3", "--no-progress"]) == 2
    assert "--overwrite" in capsys.readouterr().err


def test_inspect_text_output(tiny_scene, capsys):
    assert main(["inspect", str(tiny_scene)]) == 0
    out = capsys.readouterr().out
    assert "blender" in out and "16 x 16" in out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["inspect", "/nonexistent/scene"], "/nonexistent/scene: scene folder does not exist"),
        (["train", "--method", "nope", "--data", ".", "--out", "x"], "unknown method 'nope'"),
        (["eval", "--run", "/nonexistent/run"], "/nonexistent/run: run folder does not exist"),
    ],
)
def test_bad_input_is_one_line_with_exit_2(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err


def test_checkpoint_from_another_method_is_refused(tiny_scene, tmp_path, capsys):
    run = tmp_path / "run"
    assert _train(tiny_scene, run) == 0
    ckpt = run / "checkpoints" / "latest.safetensors"
    from safetensors import safe_open

    with safe_open(str(ckpt), framework="pt") as f:
        meta = f.metadata()
    fields = json.loads(meta["turbonerf"])
    fields["method"] = "instant-ngp"
    save_file(load_file(str(ckpt)), str(ckpt), metadata={"turbonerf": json.dumps(fields)})
    assert main(["eval", "--run", str(run), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "latest.safetensors" in err and "instant-ngp" in err


def test_no_traceback_without_debug_and_traceback_with_it(tmp_path):
    cmd = [sys.executable, "-m", "turbonerf.cli.main", "inspect", str(tmp_path / "missing")]
    plain = subprocess.run(cmd, capture_output=True, text=True)
    assert plain.returncode == 2
    assert "Traceback" not in plain.stderr and len(plain.stderr.strip().splitlines()) == 1
    debug = subprocess.run(cmd + ["--debug"], capture_output=True, text=True)
    assert debug.returncode != 0 and "Traceback" in debug.stderr


def test_help_lists_every_command():
    out = subprocess.run([sys.executable, "-m", "turbonerf.cli.main", "--help"], capture_output=True, text=True).stdout
    for cmd in ("inspect", "train", "eval", "render", "demo"):
        assert cmd in out


def test_inspect_real_lego_json(capsys):
    lego = shared_scene("nerf_synthetic", "lego")
    assert main(["inspect", str(lego), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["splits"] == {"train": 100, "test": 200}
    assert info["width"] == 800 and abs(info["fx"] - 1111.11) < 0.1


def test_view_options_default_as_the_viewer_does():
    """The CLI writes its defaults out (importing the viewer would slow every --help); they must
    agree with the application's."""
    import inspect

    from turbonerf.app.view import DEFAULT_PORT, ViewOptions
    from turbonerf.cli.main import view

    params = inspect.signature(view).parameters
    assert params["target_fps"].default.default == ViewOptions().target_fps
    assert params["port"].default.default == DEFAULT_PORT == ViewOptions().port
    assert params["max_res"].default.default == ViewOptions().max_res
