import json

import pytest
import torch

from conftest import TINY_VANILLA
from turbonerf.bake.fields import baking_fields, fibonacci_directions, hash_field_color_logits, nerf_mlp_color_logits
from turbonerf.bake.nerftree import load_tree
from turbonerf.cli.main import main
from turbonerf.encodings.sh import eval_sh
from turbonerf.methods.efficient_nerf import EfficientNeRF, EfficientNeRFConfig
from turbonerf.methods.instant_ngp import InstantNGP, InstantNGPConfig
from turbonerf.methods.vanilla_nerf import VanillaNeRF, VanillaNeRFConfig

AABB = torch.tensor([[-1.5] * 3, [1.5] * 3])


def _points(n=64, seed=0):
    return (torch.rand(n, 3, generator=torch.Generator().manual_seed(seed)) - 0.5) * 2.0


def test_vanilla_fields_split_the_view_branch_exactly():
    model = VanillaNeRF(VanillaNeRFConfig(depth=2, width=32, color_width=16), AABB).eval()
    x, dirs = _points(), fibonacci_directions(5).float()
    with torch.no_grad():
        logits = nerf_mlp_color_logits(model.fine, model.fine.trunk_features(x), dirs)
        for j in range(5):
            _, rgb = model.fine(x, dirs[j].expand(len(x), 3))
            torch.testing.assert_close(torch.sigmoid(logits[:, j]), rgb, atol=1e-5, rtol=0)
        fields = baking_fields(model, sh_degree=3)
        sigma, sh = fields.voxel_fn(x)
    assert sigma.shape == (64,) and sh.shape == (64, 3, 9) and fields.candidate_fn is None
    torch.testing.assert_close(sigma, model.fine.density(x))


def test_sh_projection_recovers_a_colour_that_is_already_low_order():
    """A field whose colour logit is an SH expansion of the baked degree is baked exactly."""
    coeffs = torch.randn(3, 9, generator=torch.Generator().manual_seed(1))

    class Field(torch.nn.Module):
        def density(self, x):
            return torch.ones(len(x))

        def forward(self, x, d):
            return torch.ones(len(x)), torch.sigmoid(eval_sh(coeffs.expand(len(x), 3, 9), d) * 0.3)

    fields = baking_fields(Field(), sh_degree=3)
    _, sh = fields.voxel_fn(_points(4))
    torch.testing.assert_close(sh, (coeffs * 0.3).expand(4, 3, 9), atol=1e-4, rtol=0)


def test_efficient_nerf_keeps_its_own_sh_and_grid():
    cfg = EfficientNeRFConfig(coarse_depth=2, coarse_width=16, coarse_skip=1, fine_depth=2, fine_width=16, fine_skip=1, grid_resolution=8)
    model = EfficientNeRF(cfg, AABB).eval()
    x, d = _points(), torch.nn.functional.normalize(torch.randn(64, 3), dim=-1)
    with torch.no_grad():
        fields = baking_fields(model, sh_degree=cfg.sh_degree)
        sigma, sh = fields.voxel_fn(x)
        raw, rgb = model.fine(x, d)
    torch.testing.assert_close(torch.sigmoid(eval_sh(sh, d)), rgb, atol=1e-5, rtol=0)
    torch.testing.assert_close(sigma, torch.nn.functional.softplus(raw))
    assert fields.candidate_fn is not None and "native" in fields.description
    assert baking_fields(model, sh_degree=2).voxel_fn(x)[1].shape == (64, 3, 4)  # truncated to fewer bands


def test_instant_ngp_fields_share_the_encoding_across_directions():
    cfg = InstantNGPConfig(n_levels=2, log2_table_size=8, max_resolution=32, hidden=16, grid_resolution=8, hash_backend="torch")
    model = InstantNGP(cfg, AABB).eval()
    x, dirs = _points(), fibonacci_directions(4).float()
    with torch.no_grad():
        sigma, h = model.field._geo(x)
        logits = hash_field_color_logits(model.field, h, dirs)
        for j in range(4):
            _, rgb = model.field(x, dirs[j].expand(len(x), 3))
            torch.testing.assert_close(torch.sigmoid(logits[:, j]), rgb, atol=1e-5, rtol=0)
        fields = baking_fields(model)
    assert fields.candidate_fn is not None and fields.voxel_fn(x)[1].shape == (64, 3, 9)


def test_bake_eval_and_render_a_tiny_vanilla_run(tiny_scene, tmp_path, capsys):
    run = tmp_path / "run"
    tiny = [arg for kv in TINY_VANILLA for arg in ("--set", kv)]
    assert main(["train", "--data", str(tiny_scene), "--out", str(run), "--max-steps", "3", "--batch-rays", "64", "--no-progress", *tiny]) == 0
    bake_args = ["bake", "--run", str(run), "--coarse-res", "16", "--fine-res", "2", "--threshold", "0", "--no-progress"]
    assert main(bake_args) == 0
    tree_file = run / "baked" / "nerftree.safetensors"
    tree = load_tree(tree_file)
    assert tree.coarse_res == 16 and tree.fine_res == 2 and tree.sh_degree == 3 and tree.n_blocks > 0
    assert main(bake_args) == 2 and "--overwrite" in capsys.readouterr().err  # never overwritten silently
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
