"""Every registered method runs the whole path a user takes: train a few steps on a tiny
procedural scene, resume, eval, render a path and, where the method supports them, bake into a
NerfTree (then eval and render the tree) and evaluate with activation-based sampling. A new
method that is registered but half-wired fails here; add its tiny settings to TINY."""

import json

import pytest

from turbonerf.app.evaluate import EvalOptions, evaluate_run
from turbonerf.app.render import RenderOptions, render_sequence
from turbonerf.app.runs import load_trained
from turbonerf.app.train import TrainOptions, available_methods, train
from turbonerf.errors import TurboNerfError
from turbonerf.methods.base import CoarseToFine, Method
from turbonerf.methods.registry import get_method

# small enough to train a few steps in about a second
TINY = {
    "vanilla-nerf": ["width=32", "depth=3", "color_width=16", "n_coarse=8", "n_fine=8"],
    "efficient-nerf": ["n_coarse=16", "n_per_pivot=3", "grid_resolution=16", "coarse_depth=2", "coarse_width=16",
                       "coarse_skip=1", "fine_depth=2", "fine_width=32", "fine_skip=1", "pos_freqs=4"],
    "instant-ngp": ["n_levels=4", "log2_table_size=12", "base_resolution=8", "max_resolution=64", "hidden=16",
                    "grid_resolution=16", "steps_per_diagonal=128", "grid_update_every=2", "grid_warmup_steps=4"],
    "r2l": ["width=16", "depth=4", "n_points=4", "pos_freqs=2"],
    "nerfacto": ["n_levels=4", "log2_table_size=12", "max_resolution=64", "hidden=16", "color_hidden=16", "appearance_dim=4",
                 "proposal_levels=2", "proposal_log2_table_size=10", "proposal_max_resolution_1=32", "proposal_max_resolution_2=32",
                 "proposal_samples_1=16", "proposal_samples_2=8", "n_samples=8", "anneal_steps=4"],
    "mip-nerf": ["width=32", "depth=3", "skip=1", "color_width=16", "n_coarse=8", "n_fine=8", "max_deg=6"],
    "pixelnerf": ["width=16", "n_blocks=3", "combine_at=2", "encoder_widths=8,8", "n_coarse=8", "n_fine=8", "pos_freqs=2",
                  "scenes_per_batch=1"],
}


# image-space students are trained only by `turbonerf distill`: their whole path (distil, eval,
# render, resume) is tested in tests/app/test_distill.py with tiny settings (IMAGE_STUDENTS there)
IMAGE_SPACE = {"pose2image", "hybrid", "shared-backbone", "mobile-r2l"}


def test_every_registered_method_has_tiny_settings():
    image_space = {m for m in available_methods() if get_method(m)[1].image_space}
    assert image_space == IMAGE_SPACE, "add a new image-space student to IMAGE_STUDENTS in tests/app/test_distill.py and here"
    assert set(available_methods()) - image_space == set(TINY), "add tiny settings for the new method to TINY"


@pytest.mark.parametrize("method", sorted(TINY))
def test_method_trains_evaluates_renders_and_bakes(method, tiny_scene, tmp_path):
    run = tmp_path / "run"
    opts = TrainOptions(method=method, data=tiny_scene, out=run, max_steps=4, batch_rays=64, overrides=TINY[method],
                        progress=False, precrop_steps=2, checkpoint_every=2, log_every=1)
    result = train(opts)
    assert result.step == 4 and (run / "checkpoints" / "latest.safetensors").is_file()
    log = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
    assert log[-1]["step"] == 4 and "mse" in log[-1]
    resumed = train(TrainOptions(method=method, data=tiny_scene, out=run, max_steps=6, resume=True, batch_rays=64, progress=False))
    assert resumed.step == 6

    model, spec, meta = load_trained(run, __import__("torch").device("cpu"))
    assert isinstance(model, Method) and spec.method == method and meta["step"] == 6

    res = evaluate_run(run, EvalOptions(progress=False, chunk=256))
    assert res["n_images"] == 2 and res["psnr"] > 0 and res["renderer"] == "model"
    assert res["samples_per_ray"] >= 0 and res["flops_per_ray"] > 0 and res["params"] > 0
    media = render_sequence(run, tmp_path / "frames", RenderOptions(path="test", frames=2, progress=False))
    assert len(list((tmp_path / "frames" / "rgb").glob("*.png"))) == 2 and media["video"].is_file()

    try:
        field = model.baking_field()
    except TurboNerfError:
        field = None
    if field is not None:
        from turbonerf.app.bake import BakeOptions, bake_run

        path, tree, _ = bake_run(run, BakeOptions(coarse_res=8, fine_res=2, threshold=0.0, progress=False))
        baked = evaluate_run(run, EvalOptions(progress=False), baked=True)
        assert baked["renderer"].startswith("nerftree") and baked["params"] is None and baked["psnr"] > 0
        render_sequence(run, tmp_path / "tree_frames", RenderOptions(path="test", frames=1, progress=False), baked=True)
    else:
        # a light field has no density; Mip-NeRF's MLP needs frustums, not points; pixelNeRF's field needs source views
        assert method in ("r2l", "mip-nerf", "pixelnerf")

    if isinstance(model, CoarseToFine):
        from turbonerf.app.sweep import evaluate_sampler_configs, sampler_configs

        stats, meta = evaluate_sampler_configs(run, sampler_configs(False, 0, "std", False, "mean", "coarse"), EvalOptions(limit=1, progress=False))
        assert set(stats) == {"base", "layer_00_ups_0_fct_std"} and meta["method"] == method
        assert all(e["metrics"]["psnr"] > 0 for e in stats.values())
