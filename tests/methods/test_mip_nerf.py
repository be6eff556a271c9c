"""Mip-NeRF: its sampling levels, loss and schedule, that it learns the tiny scene, and that
activation-based sampling runs on it."""

import json
import math

import pytest
import torch

from turbonerf.app import train as tr
from turbonerf.app.evaluate import EvalOptions, evaluate_run
from turbonerf.app.runs import load_trained
from turbonerf.app.sweep import evaluate_sampler_configs
from turbonerf.data.formats import load_scene
from turbonerf.data.synthetic import write_tiny_blender_scene
from turbonerf.errors import TurboNerfError
from turbonerf.eval.activation_eval import BASE, SamplerConfig, estimate_diagnostics, render_image_timed, render_rays_base, StageTimer
from turbonerf.methods.base import CoarseToFine
from turbonerf.methods.mip_nerf import MipNeRF, MipNeRFConfig
from turbonerf.rays import RayBundle, image_ray_bundle

SMALL = MipNeRFConfig(width=32, depth=3, skip=1, color_width=16, n_coarse=8, n_fine=12, max_deg=6)
# learns the tiny sphere in ~10 s (one core)
TRAINED = ["width=64", "depth=3", "skip=1", "color_width=16", "n_coarse=16", "n_fine=16", "max_deg=8", "lr=2e-3", "lr_delay_steps=0"]


def _rays(n=6, radii=True):
    g = torch.Generator().manual_seed(0)
    o = torch.randn(n, 3, generator=g)
    d = torch.nn.functional.normalize(torch.randn(n, 3, generator=g), dim=-1)
    r = torch.full((n,), 2e-3) if radii else None
    return RayBundle(o, d, d, torch.full((n,), 2.0), torch.full((n,), 6.0), r)


def test_levels_share_one_mlp_and_fine_bins_replace_the_coarse_ones():
    torch.manual_seed(0)
    model = MipNeRF(SMALL, torch.zeros(2, 3))
    assert isinstance(model, CoarseToFine) and model.trunk("coarse") is model.trunk("fine") is model.mlp
    rays = _rays()
    edges, w, coarse = model.coarse_stage(rays, torch.ones(3), train=True)
    assert edges.shape == (6, 9) and w.shape == (6, 8) and not w.requires_grad
    fine = model.fine_edges(rays, edges, w, train=True)
    assert fine.shape == (6, 13) and not fine.requires_grad  # n_fine + 1 edges, no union with the coarse ones
    assert torch.all(fine[:, 1:] >= fine[:, :-1]) and torch.all((fine >= 2.0) & (fine <= 6.0))
    out = model(rays, torch.ones(3), train=True)
    assert out["rgb"].shape == (6, 3) and out["weights"].shape == (6 * 12,)
    assert model.samples_per_ray() == 20 and model.flops_per_ray() > 0
    assert model.trunk_activations(rays, edges, 1, "coarse").shape == (6 * 8, 32)
    assert model.bin_density(rays, edges, "fine").shape == (6, 8)


def test_cone_radius_changes_the_output_and_is_required():
    torch.manual_seed(0)
    model = MipNeRF(SMALL, torch.zeros(2, 3))
    rays = _rays()
    wide = _rays()
    wide.radii = wide.radii * 50
    a = model.render(rays, torch.ones(3))["rgb"]
    b = model.render(wide, torch.ones(3))["rgb"]
    assert not torch.allclose(a, b)
    with pytest.raises(TurboNerfError, match="cone radii"):
        model.render(_rays(radii=False), torch.ones(3))
    cylinder = MipNeRF(MipNeRFConfig(**{**SMALL.__dict__, "ray_shape": "cylinder"}), torch.zeros(2, 3))
    cylinder.load_state_dict(model.state_dict())
    assert not torch.allclose(cylinder.render(rays, torch.ones(3))["rgb"], a)
    with pytest.raises(TurboNerfError, match="ray_shape"):
        MipNeRF(MipNeRFConfig(ray_shape="sphere"), torch.zeros(2, 3))


def test_loss_weights_the_coarse_level_by_a_tenth_and_both_levels_get_gradients():
    model = MipNeRF(SMALL, torch.zeros(2, 3))
    out = {"rgb": torch.zeros(4, 3), "coarse_rgb": torch.full((4, 3), 0.5)}
    loss, stats = model.loss(out, torch.ones(4, 3))
    assert float(loss) == pytest.approx(1.0 + 0.1 * 0.25) and stats["mse"] == 1.0 and stats["mse_coarse"] == 0.25

    rays = _rays()
    out = model(rays, torch.ones(3), train=True)
    torch.mean((out["coarse_rgb"] - 0.3) ** 2).backward()  # the coarse level alone trains the shared MLP
    assert model.mlp.trunk[0].weight.grad.abs().sum() > 0


def test_learning_rate_warms_up_then_decays_log_linearly():
    _, factor = MipNeRF(MipNeRFConfig(depth=2, width=16), torch.zeros(2, 3)).make_optimizer()
    assert factor(0) == pytest.approx(0.01)
    assert factor(1250) == pytest.approx((0.01 + 0.99 * math.sin(math.pi / 4)) * 0.01 ** (1250 / 1e6))
    assert factor(2500) == pytest.approx(0.01 ** (2500 / 1e6))
    assert factor(1_000_000) == pytest.approx(0.01) and factor(2_000_000) == pytest.approx(0.01)
    _, no_delay = MipNeRF(MipNeRFConfig(depth=2, width=16, lr_delay_steps=0), torch.zeros(2, 3)).make_optimizer()
    assert no_delay(0) == 1.0


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("mip")
    scene = write_tiny_blender_scene(root / "scene", n_train=8, n_test=2, size=16)
    common = dict(method="mip-nerf", data=scene, batch_rays=256, overrides=TRAINED, progress=False, seed=1)
    tr.train(tr.TrainOptions(out=root / "untrained", max_steps=1, **common))
    tr.train(tr.TrainOptions(out=root / "run", max_steps=150, precrop_steps=20, **common))
    model, spec, _ = load_trained(root / "run", torch.device("cpu"))
    return root, model, load_scene(spec.scene.data, splits=("test",))


def test_psnr_goes_up_on_the_tiny_scene(trained):
    root, _, _ = trained
    before = evaluate_run(root / "untrained", EvalOptions(progress=False, lpips_vgg=False))["psnr"]
    after = evaluate_run(root / "run", EvalOptions(progress=False, lpips_vgg=False))["psnr"]
    assert after > 20.0 and after > before + 8.0, (before, after)


def test_base_sampler_reproduces_the_methods_own_render(trained):
    _, model, scene = trained
    rays = image_ray_bundle(scene.split("test").cameras, 0, scene.near, scene.far)[:200]
    own = model.render(rays, scene.background)
    base = render_rays_base(model, rays, scene.background, StageTimer(torch.device("cpu")))
    assert torch.allclose(own["rgb"], base["rgb"], atol=1e-6)


def test_activation_sampling_runs_on_mip_nerf(trained):
    root, model, scene = trained
    d = scene.split("test")
    args = (d.cameras, 0, scene.near, scene.far, scene.ndc)
    for cfg in (SamplerConfig("activation", 0, "std"), SamplerConfig("activation", 2, "std_half_sq", upsample=True)):
        out, times = render_image_timed(model, cfg, *args, scene.background, chunk=100)
        assert out["rgb"].shape == (16, 16, 3) and times["t_coarse"] == 0.0 and times["t_act"] > 0
        target = d.images[0].float() / 255.0
        psnr = -10 * torch.log10(torch.mean((out["rgb"] - target) ** 2))
        assert psnr > 15.0, (cfg.key, float(psnr))
    # one shared MLP: the "coarse" estimate of base is the fine network's density itself
    same = estimate_diagnostics(model, BASE, *args)
    assert same["n_rays"] > 0 and same["pearson"] == pytest.approx(1.0, abs=1e-4)

    stats, meta = evaluate_sampler_configs(root / "run", [BASE, SamplerConfig("activation", 1, "std_half")], EvalOptions(limit=1, progress=False))
    assert meta["method"] == "mip-nerf" and list(stats) == ["base", "layer_01_ups_0_fct_std_half"]
    on_disk = json.loads((root / "run" / "eval" / "stats.json").read_text())
    assert on_disk["layer_01_ups_0_fct_std_half"]["metrics"]["psnr"] > 15.0
    assert on_disk["base"]["diagnostics"]["evals_per_ray"] == {"act": 0.0, "act_layers": 0, "coarse": 16.0, "fine": 16.0}
