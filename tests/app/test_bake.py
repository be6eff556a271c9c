import json

import pytest

from conftest import TINY_VANILLA
from turbonerf.bake.nerftree import load_tree, read_tree_header
from turbonerf.cli.main import main


def test_bake_eval_and_render_a_tiny_vanilla_run(tiny_scene, tmp_path, capsys):
    run = tmp_path / "run"
    tiny = [arg for kv in TINY_VANILLA for arg in ("--set", kv)]
    assert main(["train", "--data", str(tiny_scene), "--out", str(run), "--max-steps", "3", "--batch-rays", "64", "--no-progress", *tiny]) == 0
    bake_args = ["bake", "--run", str(run), "--coarse-res", "16", "--fine-res", "2", "--threshold", "0", "--no-progress"]
    assert main(bake_args) == 0
    tree_file = run / "baked" / "nerftree.safetensors"
    tree = load_tree(tree_file)
    assert tree.coarse_res == 16 and tree.fine_res == 2 and tree.sh_degree == 3 and tree.n_blocks > 0
    info = read_tree_header(tree_file)["info"]
    assert info["colour_directions"] == "views" and 0 < info["colour_cap_degrees"] <= 180
    assert info["finetune_steps"] > 0 and info["finetune_rays"] > 0  # fine-tuned by default, and quickly on a tiny scene
    assert info["finetune_mse_last"] < info["finetune_mse_first"]
    assert main(bake_args) == 2 and "--overwrite" in capsys.readouterr().err  # never overwritten silently
    assert main(bake_args + ["--overwrite", "--directions", "up"]) == 2 and "--directions" in capsys.readouterr().err
    assert main(bake_args + ["--overwrite"]) == 0

    assert main(["eval", "--run", str(run), "--baked", "--no-progress"]) == 0
    res = json.loads((run / "eval_baked" / "results.json").read_text())
    assert res["renderer"] == "nerftree-numba" and res["n_images"] == 2
    assert res["storage_mb"] == pytest.approx(tree_file.stat().st_size / 2**20)
    assert res["psnr"] > 0 and res["samples_per_ray"] >= 0 and res["tree_blocks"] == tree.n_blocks
    # a coarser marching step: fewer samples per ray, recorded in the results
    assert main(["eval", "--run", str(run), "--baked", "--step-scale", "2", "--lookup", "trilinear", "--no-progress"]) == 0
    coarse = json.loads((run / "eval_baked" / "results.json").read_text())
    assert coarse["renderer"] == "nerftree-numba-trilinear" and coarse["march_step_scale"] == 2
    assert coarse["march_step"] == pytest.approx(2 * res["march_step"])
    assert coarse["samples_per_ray"] < res["samples_per_ray"]
    assert main(["eval", "--run", str(run), "--baked", "--step-scale", "0", "--no-progress"]) == 2
    assert "step scale" in capsys.readouterr().err
    assert main(["eval", "--run", str(run), "--no-progress"]) == 0
    model_res = json.loads((run / "eval" / "results.json").read_text())
    assert model_res["renderer"] == "model" and model_res["storage_mb"] > 0

    out = tmp_path / "frames"
    assert main(["render", "--run", str(run), "--tree", str(tree_file), "--path", "test", "--frames", "2", "--out", str(out), "--no-progress"]) == 0
    assert len(list((out / "rgb").glob("*.png"))) == 2
    assert main(["eval", "--run", str(run), "--tree", str(tmp_path / "none.safetensors"), "--no-progress"]) == 2
    assert "none.safetensors" in capsys.readouterr().err

    pruned_file = tmp_path / "pruned.safetensors"
    assert main(bake_args + ["--out", str(pruned_file), "--prune-weight", "1e-6"]) == 0
    pruned = load_tree(pruned_file)
    assert 0 < pruned.n_blocks <= tree.n_blocks and pruned.coarse_res == 16


def test_bake_and_eval_an_unbounded_capture(tmp_path, capsys):
    """A transforms.json capture with aabb_scale 16: Instant-NGP contracts it, the bake writes a
    contracted (version 3) tree at the contracted defaults, and eval / render march it."""
    from turbonerf.data.synthetic import write_tiny_transforms_scene

    data = write_tiny_transforms_scene(tmp_path / "capture", n_frames=6, size=16, aabb_scale=16)
    run = tmp_path / "run"
    tiny = ["n_levels=4", "log2_table_size=12", "max_resolution=64", "hidden=16", "grid_resolution=16"]
    assert main(["train", "--method", "instant-ngp", "--data", str(data), "--out", str(run), "--max-steps", "3", "--batch-rays", "64",
                 "--no-progress", *[a for kv in tiny for a in ("--set", kv)]]) == 0
    assert main(["bake", "--run", str(run), "--fine-res", "2", "--no-progress"]) == 0
    tree_file = run / "baked" / "nerftree.safetensors"
    header = read_tree_header(tree_file)
    assert header["version"] == 3 and header["coarse_res"] == 128 and header["info"]["contracted"]
    tree = load_tree(tree_file)
    assert tree.contracted and tree.n_blocks > 0
    assert main(["eval", "--run", str(run), "--baked", "--no-progress"]) == 0
    res = json.loads((run / "eval_baked" / "results.json").read_text())
    assert res["renderer"] == "nerftree-numba" and res["psnr"] > 0 and res["samples_per_ray"] > 0
    out = tmp_path / "frames"
    assert main(["render", "--run", str(run), "--baked", "--path", "test", "--frames", "1", "--out", str(out), "--no-progress"]) == 0
    assert len(list((out / "rgb").glob("*.png"))) == 1
    assert main(["bake", "--run", str(run), "--prune-weight", "0.01", "--out", str(tmp_path / "p.safetensors"), "--no-progress"]) == 2
    assert "--prune-weight" in capsys.readouterr().err
