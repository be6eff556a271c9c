import copy
import json

import pytest
import torch

from conftest import TINY_NERFACTO, TINY_VANILLA
from turbonerf.cli.main import main
from turbonerf.data.formats import load_scene
from turbonerf.data.synthetic import write_tiny_blender_scene
from turbonerf.app import train as tr
from turbonerf.app.evaluate import EvalOptions
from turbonerf.app.runs import load_trained
from turbonerf.app.sweep import evaluate_sampler_configs
from turbonerf.errors import TurboNerfError
from turbonerf.eval.activation_eval import (
    BASE,
    STAGES,
    SamplerConfig,
    StageTimer,
    check_supported,
    estimate_diagnostics,
    fct_name,
    render_image_timed,
    render_rays_base,
    sweep_configs,
)
from turbonerf.methods.efficient_nerf import EfficientNeRF, EfficientNeRFConfig
from turbonerf.rays import image_ray_bundle

# a vanilla NeRF with 3 trunk layers (so layers 0, 1, 2 exist) that learns the tiny sphere in ~10 s.
# Tiny NeRFs trained this briefly are fragile (some seeds collapse to zero density, some leave the
# coarse and fine networks disagreeing), so the tests below check the machinery on a run that
# trained properly and assert no property of the activations themselves.
TRAINED = ["width=64", "depth=3", "color_width=16", "n_coarse=16", "n_fine=16", "lr=2e-3"]
ACT = SamplerConfig("activation", layer=0, fct="std")
ACT_UPS = SamplerConfig("activation", layer=1, fct="std_half", upsample=True)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("act")
    scene = write_tiny_blender_scene(root / "scene", n_train=8, n_test=2, size=16)
    opts = tr.TrainOptions(
        method="vanilla-nerf", data=scene, out=root / "run", max_steps=300, batch_rays=256,
        overrides=TRAINED, progress=False, precrop_steps=20, seed=1,
    )
    tr.train(opts)
    model, spec, _ = load_trained(root / "run", torch.device("cpu"))
    data_scene = load_scene(spec.scene.data, splits=("test",))
    return root / "run", model, data_scene


def _render(model, scene, cfg, index=0):
    d = scene.split("test")
    return render_image_timed(model, cfg, d.cameras, index, scene.near, scene.far, scene.ndc, scene.background, chunk=100)


def test_base_reproduces_the_methods_own_render(trained):
    _, model, scene = trained
    rays = image_ray_bundle(scene.split("test").cameras, 0, scene.near, scene.far)[:200]
    with torch.no_grad():
        ref = model.render(rays, scene.background)
        ours = render_rays_base(model, rays, scene.background, StageTimer(torch.device("cpu")))
    for k in ("rgb", "depth", "opacity"):
        assert torch.allclose(ours[k], ref[k], atol=1e-6), k


@pytest.mark.parametrize("cfg", [BASE, ACT, ACT_UPS], ids=lambda c: c.key)
def test_timing_split_adds_up_to_the_total(trained, cfg):
    """Contract: the stage timers are disjoint and nested inside the image timer, so
    t_act + t_coarse + t_fine + t_other == t with t_other >= 0; t_other (ray generation, chunk
    slicing, output assembly) stays a small part of t: <= 20% of it plus 5 ms of scheduling slack."""
    _, model, scene = trained
    out, t = _render(model, scene, cfg)
    assert out["rgb"].shape == (16, 16, 3) and torch.isfinite(out["rgb"]).all()
    assert set(t) == {"t", "t_act", "t_coarse", "t_fine", "t_other"}
    assert t["t_act"] + t["t_coarse"] + t["t_fine"] + t["t_other"] == pytest.approx(t["t"], abs=1e-12)
    assert t["t_other"] >= -1e-9
    assert t["t_other"] <= 0.2 * t["t"] + 0.005
    assert t["t_fine"] > 0
    if cfg.sampler == "default":
        assert t["t_act"] == 0 and t["t_coarse"] > 0
    else:
        assert t["t_coarse"] == 0 and t["t_act"] > 0


def test_activation_render_is_deterministic_and_close_to_base(trained):
    _, model, scene = trained
    target = scene.split("test").images[0].float() / 255.0
    a, _ = _render(model, scene, ACT)
    b, _ = _render(model, scene, ACT)
    assert torch.equal(a["rgb"], b["rgb"])
    base, _ = _render(model, scene, BASE)
    # the fine pass always includes the n_coarse uniform bins, so even a poor estimate stays near base
    mse = lambda x: torch.mean((x - target) ** 2).item()  # noqa: E731
    assert mse(a["rgb"]) < 2.0 * mse(base["rgb"]) + 1e-3


def test_diagnostics_measure_agreement_with_the_fine_network(trained):
    _, model, scene = trained
    d = scene.split("test")
    args = (d.cameras, 0, scene.near, scene.far, scene.ndc)
    base = estimate_diagnostics(model, BASE, *args)
    assert 20 < base["n_rays"] < 256, "the fixture's training collapsed (nothing, or everything, is opaque)"
    assert 0.0 < base["pdf_overlap_uniform"] < 1.0
    # wiring: a coarse network identical to the fine one is a perfect estimate
    twin = copy.deepcopy(model)
    twin.coarse = twin.fine
    same = estimate_diagnostics(twin, BASE, *args)
    assert same["pearson"] == pytest.approx(1.0, abs=1e-4) and same["spearman"] == pytest.approx(1.0, abs=1e-4)
    assert same["pdf_overlap"] == pytest.approx(1.0, abs=1e-4)
    for cfg in (ACT, ACT_UPS):
        act = estimate_diagnostics(model, cfg, *args)
        assert act["n_rays"] == base["n_rays"]
        assert -1.0 <= act["pearson"] <= 1.0 and -1.0 <= act["spearman"] <= 1.0
        assert 0.0 <= act["pdf_overlap"] <= 1.0


def test_stats_json_has_one_entry_per_configuration(trained):
    run, _, _ = trained
    configs = [BASE, ACT, ACT_UPS]
    stats, meta = evaluate_sampler_configs(run, configs, EvalOptions(limit=2, progress=False, chunk=128))
    on_disk = json.loads((run / "eval" / "stats.json").read_text())
    assert on_disk == json.loads(json.dumps(stats))
    assert json.loads((run / "eval" / "stats_meta.json").read_text()) == json.loads(json.dumps(meta))
    # the reference code's layout: every top-level key is a configuration
    assert list(on_disk) == ["base", "layer_00_ups_0_fct_std", "layer_01_ups_1_fct_std_half"]
    assert meta["n_images"] == 2 and meta["method"] == "vanilla-nerf" and meta["configs"] == list(on_disk)
    for key, e in on_disk.items():
        assert set(e) == {"t", "metrics", "diagnostics"}, key
        m, q, d = e["metrics"], e["metrics"]["quantitative"], e["diagnostics"]
        assert set(m) == {"psnr", "ssim", "lpips", "quantitative"} and set(q) == set(STAGES)
        for k in ("t_other", "totals", "speedup_vs_base", "evals_per_ray", "estimate_vs_fine", "per_image", "layer", "fct"):
            assert k in d, (key, k)
        assert m["psnr"] > 20 and 0 < m["ssim"] <= 1
        assert len(d["per_image"]) == 2
        assert d["totals"]["t"] == pytest.approx(sum(r["t"] for r in d["per_image"]))
        assert e["t"] == pytest.approx(d["totals"]["t"] / 2)
        assert q["t_act"] + q["t_coarse"] + q["t_fine"] + d["t_other"] == pytest.approx(e["t"])
    assert on_disk["base"]["diagnostics"]["speedup_vs_base"] == 1.0
    assert on_disk["base"]["metrics"]["quantitative"]["t_act"] == 0.0
    assert on_disk["layer_00_ups_0_fct_std"]["metrics"]["quantitative"]["t_coarse"] == 0.0
    assert on_disk["base"]["diagnostics"]["evals_per_ray"] == {"act": 0.0, "act_layers": 0, "coarse": 16.0, "fine": 32.0}
    assert on_disk["layer_01_ups_1_fct_std_half"]["diagnostics"]["evals_per_ray"]["act"] == 2.0  # 8 samples, 1 ray in 4


def test_configuration_keys_follow_the_reference():
    assert BASE.key == "base"
    assert SamplerConfig("activation", 0, "std", False).key == "layer_00_ups_0_fct_std"
    assert SamplerConfig("activation", 2, "std_half_sq", True).key == "layer_02_ups_1_fct_std_half_sq"
    assert SamplerConfig("activation", 1, "none", False, "max", "fine").key == "layer_01_ups_0_fct_none_red_max_net_fine"
    keys = [c.key for c in sweep_configs()]
    assert len(keys) == 19 and keys[0] == "base" and len(set(keys)) == 19
    with pytest.raises(TurboNerfError, match="--fct"):
        SamplerConfig("activation", fct="mean")
    assert [fct_name(c) for c in ("0", "1", "2", "std_half", "none")] == ["std", "std_half", "std_half_sq", "std_half", "none"]
    for bad in ("3", "-1", "mean"):
        with pytest.raises(TurboNerfError, match="--fct"):
            fct_name(bad)


def test_methods_without_a_coarse_fine_nerf_pair_are_refused():
    cfg = EfficientNeRFConfig(coarse_depth=2, coarse_width=16, fine_depth=2, fine_width=16, grid_resolution=8)
    eff = EfficientNeRF(cfg, torch.tensor([[-1.5] * 3, [1.5] * 3]))
    with pytest.raises(TurboNerfError, match="does not apply to efficient-nerf.*pivots_from_grid"):
        check_supported(eff, "efficient-nerf")
    with pytest.raises(TurboNerfError, match="method .something. has no such pass"):
        check_supported(torch.nn.Linear(2, 2), "something")


def test_cli_activation_sampler_and_sweep(tiny_scene, tmp_path, capsys):
    run = tmp_path / "run"
    tiny = [a for kv in TINY_VANILLA for a in ("--set", kv)]
    train = ["train", "--data", str(tiny_scene), "--out", str(run), "--max-steps", "2", "--batch-rays", "64", "--no-progress"]
    assert main([*train, *tiny]) == 0
    capsys.readouterr()
    assert main(["eval", "--run", str(run), "--sampler", "activation", "--layer", "1", "--fct", "std", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "| base |" in out and "| layer_01_ups_0_fct_std |" in out and "stats.json" in out
    stats = json.loads((run / "eval" / "stats.json").read_text())
    assert list(stats) == ["base", "layer_01_ups_0_fct_std"]

    # the reference code's integer codes: --fct 0 | 1 | 2 = std | std_half | std_half_sq
    assert main(["eval", "--run", str(run), "--sampler", "activation", "--layer", "0", "--fct", "2", "--no-progress"]) == 0
    assert "| layer_00_ups_0_fct_std_half_sq |" in capsys.readouterr().out
    assert list(json.loads((run / "eval" / "stats.json").read_text())) == ["base", "layer_00_ups_0_fct_std_half_sq"]
    assert main(["eval", "--run", str(run), "--sampler", "activation", "--fct", "3", "--no-progress"]) == 2
    assert "unknown --fct 3" in capsys.readouterr().err

    # TINY_VANILLA has 2 trunk layers: the sweep leaves out the layer-2 configurations and says so
    assert main(["eval", "--run", str(run), "--sweep", "--limit", "1", "--no-progress"]) == 0
    out = capsys.readouterr().out
    stats = json.loads((run / "eval" / "stats.json").read_text())
    meta = json.loads((run / "eval" / "stats_meta.json").read_text())
    assert len(stats) == 1 + 2 * 3 * 2
    assert len(meta["skipped"]) == 6 and "skipped layer_02_ups_0_fct_std" in out

    assert main(["eval", "--run", str(run), "--sampler", "activation", "--layer", "2", "--no-progress"]) == 2
    assert "--layer 2 does not exist" in capsys.readouterr().err
    assert main(["eval", "--run", str(run), "--sampler", "fancy", "--no-progress"]) == 2
    assert "unknown --sampler 'fancy'" in capsys.readouterr().err


def test_nerfacto_activation_sampler_skips_its_first_proposal_network(tiny_scene, tmp_path, capsys):
    """On nerfacto the estimate replaces the first proposal network (1 hidden layer); the second
    proposal network and the field run as in ``base``."""
    run = tmp_path / "run"
    sets = [a for kv in TINY_NERFACTO + ["n_images=0"] for a in ("--set", kv)]
    assert main(["train", "--method", "nerfacto", "--data", str(tiny_scene), "--out", str(run), "--max-steps", "5",
                 "--batch-rays", "64", "--no-progress", *sets]) == 0
    model, spec, _ = load_trained(run, torch.device("cpu"))
    check_supported(model, "nerfacto")
    scene = load_scene(spec.scene.data, splits=("test",))
    for cfg in (BASE, ACT, SamplerConfig("activation", layer=0, fct="std_half", upsample=True)):
        out, t = _render(model, scene, cfg)
        assert out["rgb"].shape == (16, 16, 3) and torch.isfinite(out["rgb"]).all()
        assert (t["t_coarse"] > 0) == (cfg.sampler == "default") and (t["t_act"] > 0) == (cfg.sampler != "default")
    capsys.readouterr()
    assert main(["eval", "--run", str(run), "--sampler", "activation", "--layer", "0", "--fct", "0", "--no-progress"]) == 0
    assert list(json.loads((run / "eval" / "stats.json").read_text())) == ["base", "layer_00_ups_0_fct_std"]
    assert main(["eval", "--run", str(run), "--sampler", "activation", "--layer", "1", "--no-progress"]) == 2
    assert "--layer 1 does not exist" in capsys.readouterr().err
