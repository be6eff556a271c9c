"""Scoring another split keeps the test split's results."""

import json

from conftest import TINY_VANILLA
from turbonerf.app.evaluate import EvalOptions, evaluate_run
from turbonerf.app.train import TrainOptions, train


def test_train_split_results_do_not_replace_the_test_results(tiny_scene, tmp_path):
    run = tmp_path / "run"
    train(TrainOptions(method="vanilla-nerf", data=tiny_scene, out=run, max_steps=2, batch_rays=32, overrides=TINY_VANILLA, progress=False))
    test = evaluate_run(run, EvalOptions(progress=False, lpips_vgg=False))
    trained = evaluate_run(run, EvalOptions(split="train", progress=False, lpips_vgg=False))
    assert json.loads((run / "eval" / "results.json").read_text())["n_images"] == test["n_images"] == 2
    assert json.loads((run / "eval_train" / "results.json").read_text())["n_images"] == trained["n_images"] == 4
