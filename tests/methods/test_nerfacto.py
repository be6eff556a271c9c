"""nerfacto: scene-dependent settings, appearance embeddings at train / eval time, training on the
three scene formats, a quick fit."""

import json

import pytest
import torch

from turbonerf.app.evaluate import EvalOptions, evaluate_run
from turbonerf.app.train import TrainOptions, train
from turbonerf.data.formats import load_scene
from turbonerf.data.synthetic import write_tiny_blender_scene, write_tiny_llff_scene, write_tiny_transforms_scene
from turbonerf.errors import TurboNerfError
from turbonerf.methods.nerfacto import Nerfacto, NerfactoConfig
from turbonerf.methods.registry import apply_overrides
from turbonerf.rays import RayBundle

TINY = ["n_levels=4", "log2_table_size=12", "max_resolution=64", "hidden=16", "color_hidden=16", "appearance_dim=4",
        "proposal_levels=2", "proposal_log2_table_size=10", "proposal_max_resolution_1=32", "proposal_max_resolution_2=32",
        "proposal_samples_1=16", "proposal_samples_2=8", "n_samples=8", "anneal_steps=4"]
AABB = torch.tensor([[-1.5, -1.5, -1.5], [1.5, 1.5, 1.5]])


def tiny_config(**changes) -> NerfactoConfig:
    cfg = apply_overrides(NerfactoConfig(), TINY)
    return apply_overrides(cfg, [f"{k}={v}" for k, v in changes.items()])


def _rays(n: int, cams: torch.Tensor | None = None) -> RayBundle:
    gen = torch.Generator().manual_seed(0)
    d = torch.nn.functional.normalize(torch.randn(n, 3, generator=gen) * 0.1 + torch.tensor([0.0, 0.0, -1.0]), dim=-1)
    o = torch.tensor([0.0, 0.0, 4.0]).expand(n, -1)
    return RayBundle(o, d, d, torch.full((n,), 2.0), torch.full((n,), 6.0), None, cams)


@pytest.mark.parametrize("fmt, contraction", [("blender", "box"), ("llff", "box"), ("transforms", "contract")])
def test_auto_settings_follow_the_scene(tmp_path, fmt, contraction):
    if fmt == "blender":
        root = write_tiny_blender_scene(tmp_path / "s", n_train=4, n_test=2, size=16)
    elif fmt == "llff":
        root = write_tiny_llff_scene(tmp_path / "s", factors=(1,))
    else:
        root = write_tiny_transforms_scene(tmp_path / "s")
    scene = load_scene(root, splits=("train",))
    cfg = Nerfacto.config_for_scene(NerfactoConfig(), scene)
    assert cfg.scene_contraction == contraction and cfg.n_images == len(scene.split("train"))
    # explicit choices are kept
    cfg = Nerfacto.config_for_scene(NerfactoConfig(scene_contraction="contract", n_images=0), scene)
    assert cfg.scene_contraction == "contract" and cfg.n_images == 0


def test_appearance_embedding_per_training_image_and_mean_at_eval():
    torch.manual_seed(0)
    model = Nerfacto(tiny_config(n_images=3, scene_contraction="box"), AABB)
    with torch.no_grad():
        model.field.appearance.weight.normal_(0.0, 5.0)
    bg = torch.ones(3)
    a = model(_rays(32, torch.zeros(32, dtype=torch.long)), bg, train=True)["rgb"]
    b = model(_rays(32, torch.full((32,), 2, dtype=torch.long)), bg, train=True)["rgb"]
    assert not torch.allclose(a, b)  # different images, different embeddings
    # evaluation views (indices of another split, even out of range) all use the mean embedding
    e1 = model.render(_rays(32, torch.full((32,), 7, dtype=torch.long)), bg)["rgb"]
    e2 = model.render(_rays(32, None), bg)["rgb"]
    assert torch.allclose(e1, e2)
    with pytest.raises(TurboNerfError, match="appearance embeddings"):
        model(_rays(8, torch.full((8,), 3, dtype=torch.long)), bg, train=True)


def test_loss_terms_and_gradients_reach_every_network():
    torch.manual_seed(0)
    model = Nerfacto(tiny_config(n_images=2, scene_contraction="contract"), AABB)
    model.sampler.update(0)
    out = model(_rays(64, torch.zeros(64, dtype=torch.long)), torch.zeros(3), train=True)
    loss, stats = model.loss(out, torch.rand(64, 3))
    assert {"mse", "interlevel", "distortion"} <= set(stats) and torch.isfinite(loss)
    loss.backward()
    assert model.field.encoding.table.grad.abs().sum() > 0
    assert model.field.appearance.weight.grad.abs().sum() > 0
    for prop in model.proposals:
        assert prop.encoding.table.grad is not None and prop.mlp[0].weight.grad.abs().sum() > 0


@pytest.mark.parametrize("fmt", ["transforms", "llff"])
def test_trains_and_evaluates_on_other_formats(tmp_path, fmt):
    root = write_tiny_transforms_scene(tmp_path / "s") if fmt == "transforms" else write_tiny_llff_scene(tmp_path / "s", factors=(1,))
    run = tmp_path / "run"
    result = train(TrainOptions(method="nerfacto", data=root, out=run, max_steps=3, batch_rays=64, overrides=TINY,
                                progress=False, log_every=1))
    assert result.step == 3
    spec = json.loads((run / "run.json").read_text())
    assert spec["config"]["scene_contraction"] == ("contract" if fmt == "transforms" else "box")
    assert spec["config"]["n_images"] > 0
    res = evaluate_run(run, EvalOptions(progress=False, chunk=256, limit=1))
    assert res["psnr"] > 0


def test_fits_the_tiny_scene(tiny_scene, tmp_path):
    run = tmp_path / "run"
    train(TrainOptions(method="nerfacto", data=tiny_scene, out=run, max_steps=60, batch_rays=256, overrides=TINY,
                       progress=False, log_every=1, precrop_steps=0))
    log = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
    first = sum(r["mse"] for r in log[:5]) / 5
    last = sum(r["mse"] for r in log[-5:]) / 5
    assert last < 0.5 * first


def test_box_mode_samples_only_inside_the_box():
    torch.manual_seed(0)
    model = Nerfacto(tiny_config(n_images=1, scene_contraction="box"), AABB)
    rays = model._ray_interval(_rays(32))
    samples = model.sampler.propose(rays, train=True).samples
    pos = samples.positions(rays)
    assert (pos.abs() <= 1.5 + 1e-4).all()
    # rays that miss the box: empty interval, nothing in front of the background
    d = torch.tensor([[0.0, 0.0, 1.0]]).expand(8, -1)
    away = RayBundle(torch.tensor([[0.0, 0.0, 4.0]]).expand(8, -1), d, d, torch.full((8,), 2.0), torch.full((8,), 6.0))
    out = model.render(away, torch.tensor([0.2, 0.4, 0.6]))
    assert torch.all(out["opacity"] == 0) and torch.allclose(out["rgb"], torch.tensor([0.2, 0.4, 0.6]).expand(8, -1))
