"""A multi-scene method end to end on a tiny generated set: train, eval from K fixed source views,
render a held-out object, and the per-scene few-view baseline on the same objects and views."""

import json

import pytest

from turbonerf.app.evaluate import EvalOptions, evaluate_run
from turbonerf.app.fewview import FewViewOptions, few_view_baseline
from turbonerf.app.render import RenderOptions, render_sequence
from turbonerf.app.train import TrainOptions, train
from tests.methods.test_all_methods import TINY
from tests.conftest import TINY_VANILLA

pytest.importorskip("pybullet")


@pytest.fixture
def tiny_objects(tmp_path):
    from turbonerf.data.objects import ObjectSetOptions, generate_objects

    generate_objects(ObjectSetOptions(tmp_path / "objects", objects=4, test_objects=2, views=5, size=16, seed=3))
    return tmp_path / "objects"


def test_pixelnerf_on_a_multiscene_set(tiny_objects, tmp_path):
    run = tmp_path / "run"
    result = train(TrainOptions(method="pixelnerf", data=tiny_objects, out=run, max_steps=3, batch_rays=32, progress=False,
                                overrides=TINY["pixelnerf"] + ["scenes_per_batch=2"], bf16=False))
    assert result.step == 3
    spec = json.loads((run / "run.json").read_text())
    assert spec["scene"]["format"] == "srn" and spec["scene"]["near"] == pytest.approx(2.8)
    one = evaluate_run(run, EvalOptions(progress=False, source_views=1, lpips_vgg=False))
    three = evaluate_run(run, EvalOptions(progress=False, source_views=3, lpips_vgg=False))
    saved = json.loads((run / "eval_3views" / "results.json").read_text())
    assert (run / "eval_1view" / "results.json").is_file() and saved["source_views"] == 3
    assert one["n_objects"] == three["n_objects"] == 2
    # nested, fixed choices; 1 and 3 views scored on the same target views
    for a, b in zip(one["per_object"], three["per_object"]):
        assert a["source_views"] == b["source_views"][:1] and len(b["source_views"]) == 3
    assert [r["name"] for r in one["per_image"]] == [r["name"] for r in three["per_image"]]
    assert one["n_images"] == 2 * (5 - 3) and all(r["psnr"] > 0 for r in one["per_image"])
    media = render_sequence(run, tmp_path / "orbit", RenderOptions(path="orbit", frames=2, source_views=2, progress=False))
    assert media["video"].is_file() and len(list((tmp_path / "orbit" / "sources").glob("*.png"))) == 2

    base = few_view_baseline(FewViewOptions(tiny_objects, tmp_path / "base", method="vanilla-nerf", source_views=1, seconds=0.5,
                                            overrides=TINY_VANILLA, batch_rays=32, progress=False, warmup=False))
    assert [r["name"] for r in base["per_image"]] == [r["name"] for r in one["per_image"]]
    assert [o["source_views"] for o in base["per_object"]] == [o["source_views"] for o in one["per_object"]]
