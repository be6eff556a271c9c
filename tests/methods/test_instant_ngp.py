"""Instant-NGP: registry entry, training steps, rendering, checkpointable state, a quick fit."""

import dataclasses

import pytest
import torch
from safetensors.torch import load_file, save_file

from turbonerf.fields.hash_field import HashField, trunc_exp
from turbonerf.methods.instant_ngp import InstantNGP, InstantNGPConfig
from turbonerf.methods.registry import apply_overrides, get_method
from turbonerf.rays import RayBundle

AABB = torch.tensor([[-1.5, -1.5, -1.5], [1.5, 1.5, 1.5]])


def tiny_config(**changes) -> InstantNGPConfig:
    cfg = InstantNGPConfig(
        n_levels=4,
        log2_table_size=12,
        base_resolution=8,
        max_resolution=64,
        hidden=16,
        grid_resolution=16,
        steps_per_diagonal=128,
        max_samples=128,
    )
    return dataclasses.replace(cfg, **changes)


def _rays(n: int, seed: int = 0) -> RayBundle:
    g = torch.Generator().manual_seed(seed)
    o = torch.nn.functional.normalize(torch.randn(n, 3, generator=g), dim=-1) * 4.0
    d = torch.nn.functional.normalize(-o + 0.5 * torch.randn(n, 3, generator=g), dim=-1)
    return RayBundle(o, d, d, torch.full((n,), 2.0), torch.full((n,), 6.0))


@pytest.fixture
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_registered_and_overridable():
    cfg_cls, model_cls = get_method("instant-ngp")
    assert cfg_cls is InstantNGPConfig and model_cls is InstantNGP
    cfg = apply_overrides(InstantNGPConfig(), ["lr=0.005", "train_early_stop=false", "grid_resolution=64"])
    assert cfg.lr == 0.005 and cfg.train_early_stop is False and cfg.grid_resolution == 64


def test_no_precrop_by_default_and_the_config_can_ask_for_it():
    """The carved grid keeps a young model off the background, so Instant-NGP starts on whole
    images (the base class's default is vanilla NeRF's 100 centre-cropped steps)."""
    aabb = torch.tensor([[-1.0] * 3, [1.0] * 3])
    assert InstantNGP(InstantNGPConfig(), aabb).precrop_steps() == 0
    assert InstantNGP(apply_overrides(InstantNGPConfig(), ["precrop_steps=100"]), aabb).precrop_steps() == 100


@pytest.mark.parametrize("bf16", [True, False])
def test_trains_two_steps_without_nan(bf16):
    torch.manual_seed(0)
    model = InstantNGP(tiny_config(grid_update_every=1), AABB)
    opt, lr_factor = model.make_optimizer()
    rays, target, bg = _rays(64), torch.rand(64, 3), torch.ones(3)
    table_before = model.field.encoding.table.detach().clone()
    callbacks = model.callbacks()
    for step in range(2):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            for cb in callbacks:
                cb.before_step(step)  # the occupancy-grid refresh
            loss, stats = model.training_loss(rays, target, bg)
        assert torch.isfinite(loss)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        for p in model.parameters():
            assert p.grad is None or torch.isfinite(p.grad).all()
        opt.step()
    assert {"mse", "samples_per_ray", "occupied_fraction"} <= set(stats)
    assert stats["samples_per_ray"] > 0 and 0.0 < stats["occupied_fraction"] <= 1.0
    assert not torch.equal(model.field.encoding.table.detach(), table_before)
    assert model.samples_per_ray() > 0
    assert 0 < lr_factor(0) < lr_factor(50) <= 1.0


def test_render_and_state_dict_round_trip(tmp_path):
    torch.manual_seed(0)
    model = InstantNGP(tiny_config(), AABB)
    with torch.no_grad():
        model.field.encoding.table.normal_(0, 1.0)
    model.grid.update(0, model.field.density)
    rays = _rays(40, seed=1)
    out = model.render(rays, torch.ones(3))
    assert out["rgb"].shape == (40, 3) and out["depth"].shape == (40,) and out["opacity"].shape == (40,)
    assert all(torch.isfinite(v).all() for v in out.values())
    assert model.samples_per_ray() > 0
    state = model.state_dict()
    assert {"grid.occupied", "grid.density", "field.encoding.table"} <= set(state)
    save_file({k: v.contiguous() for k, v in state.items()}, tmp_path / "m.safetensors")
    clone = InstantNGP(tiny_config(), AABB)
    clone.load_state_dict(load_file(tmp_path / "m.safetensors"))
    assert torch.equal(clone.grid.occupied, model.grid.occupied)
    torch.testing.assert_close(clone.render(rays, torch.ones(3))["rgb"], out["rgb"])


def test_empty_grid_still_gives_a_finite_loss():
    model = InstantNGP(tiny_config(), AABB)
    model.grid.occupied.zero_()
    loss, stats = model.training_loss(_rays(8), torch.rand(8, 3), torch.ones(3))
    assert torch.isfinite(loss) and stats["samples_per_ray"] == 0
    out = model.render(_rays(8), torch.ones(3))
    torch.testing.assert_close(out["rgb"], torch.ones(8, 3))


def test_trunc_exp_gradient_is_capped():
    x = torch.tensor([0.0, 20.0, 100.0], requires_grad=True)
    y = trunc_exp(x)
    y.sum().backward()
    assert torch.isfinite(y).all()
    torch.testing.assert_close(x.grad, torch.exp(torch.tensor([0.0, 15.0, 15.0])))


def test_hash_field_fits_a_coloured_ball(one_thread):
    """The field alone (no rendering) learns density and colour of a ball from point samples."""
    torch.manual_seed(0)
    field = HashField(AABB, n_levels=6, log2_table_size=14, base_resolution=8, max_resolution=64, hidden=32)
    opt = torch.optim.Adam(field.parameters(), lr=1e-2, eps=1e-15)

    def truth(x):
        inside = (x.norm(dim=-1) < 1.0).float()
        return inside * 20.0, torch.sigmoid(2.0 * x)

    for _ in range(250):
        x = (torch.rand(2048, 3) - 0.5) * 3.0
        d = torch.nn.functional.normalize(torch.randn(2048, 3), dim=-1)
        sigma, rgb = field(x, d)
        s_true, c_true = truth(x)
        loss = ((torch.log1p(sigma) - torch.log1p(s_true)) ** 2).mean() + ((rgb - c_true) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    x = (torch.rand(2000, 3) - 0.5) * 3.0
    with torch.no_grad():
        sigma, rgb = field(x, torch.nn.functional.normalize(torch.randn(2000, 3), dim=-1))
    s_true, c_true = truth(x)
    far_from_surface = (x.norm(dim=-1) - 1.0).abs() > 0.15
    inside = s_true > 0
    assert (sigma[far_from_surface & inside] > 5.0).float().mean() > 0.95
    assert (sigma[far_from_surface & ~inside] < 2.0).float().mean() > 0.95
    assert ((rgb - c_true) ** 2).mean() < 0.3 * c_true.var()  # colour is learnt more slowly; far from the mean


def test_a_batch_over_the_sample_budget_trains_on_its_leading_rays():
    from turbonerf.methods.instant_ngp import InstantNGP, InstantNGPConfig
    from turbonerf.rays import RayBundle

    cfg = InstantNGPConfig(n_levels=4, log2_table_size=12, max_resolution=64, hidden=16, grid_resolution=16,
                           steps_per_diagonal=64, max_batch_samples=500)
    model = InstantNGP(cfg, torch.tensor([[-1.0] * 3, [1.0] * 3]))
    n = 64
    o = torch.tensor([[0.0, 0.0, 3.0]]).repeat(n, 1)
    d = torch.nn.functional.normalize(torch.randn(n, 3) * 0.05 + torch.tensor([0.0, 0.0, -1.0]), dim=-1)
    rays = RayBundle(o, d, d, torch.full((n,), 1.0), torch.full((n,), 5.0))
    out = model(rays, torch.ones(3), train=True)
    used = int(out["stats"]["rays_trained"])
    assert 0 < used < n and out["rgb"].shape == (used, 3)
    assert out["stats"]["samples_per_ray"] * used <= 500
    target = torch.rand(n, 3)
    loss, stats = model.loss(out, target)
    assert stats["mse"] == pytest.approx(float(((out["rgb"] - target[:used]) ** 2).mean()), rel=1e-5)


def test_unbounded_boxes_are_contracted_and_bounded_ones_are_not():
    from turbonerf.methods.instant_ngp import InstantNGP, InstantNGPConfig

    cfg = InstantNGPConfig(n_levels=4, log2_table_size=12, max_resolution=64, hidden=16, grid_resolution=16)
    bounded = InstantNGP(cfg, torch.tensor([[-1.5] * 3, [1.5] * 3]))
    unbounded = InstantNGP(cfg, torch.tensor([[-24.0] * 3, [24.0] * 3]))
    assert not bounded.contracted and unbounded.contracted
    far = torch.tensor([[1000.0, -3.0, 2.0], [0.5, 0.2, -0.1]])
    w = unbounded.warp(far)
    assert (w.abs() < 2.0).all() and torch.allclose(w[1], far[1] / 1.5)
    torch.testing.assert_close(unbounded._unwarp(w), far, rtol=1e-3, atol=1e-4)
    # what a bake sees: the field and the grid in contracted space, and the box that maps to [-1, 1]^3
    assert bounded.baking_inner_box() is None
    torch.testing.assert_close(unbounded.baking_inner_box(), torch.tensor([[-1.5] * 3, [1.5] * 3]))
    assert unbounded.baking_field() is unbounded.field and unbounded.field.aabb.abs().max() == 2.0


def test_mlps_see_a_bounded_set_of_row_counts_however_long_it_trains(one_thread):
    """Regression: every step, refresh and render handed the MLPs a new number of samples; on CPUs
    whose bf16 / bf32 matmuls run through oneDNN each new shape built and kept a primitive, so
    memory grew with the steps (fern: 4.7 GB after 100 steps, 6.7 GB after 250)."""
    from turbonerf.fields.fixed_rows import row_counts

    torch.manual_seed(0)
    model = InstantNGP(tiny_config(grid_update_every=4, grid_warmup_steps=8), AABB)
    opt, _ = model.make_optimizer()
    callbacks = model.callbacks()
    seen: list[int] = []
    for mod in model.modules():
        if isinstance(mod, torch.nn.Linear):
            mod.register_forward_hook(lambda m, inp, out: seen.append(inp[0].shape[0]))
    samples = set()
    for step in range(24):
        for cb in callbacks:
            cb.before_step(step)
        rays = _rays(64 + step, seed=step)  # batches of different sizes, as the sample budget makes them
        loss, stats = model.training_loss(rays, torch.rand(len(rays), 3), torch.ones(3))
        samples.add(round(stats["samples_per_ray"] * len(rays)))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    model.eval()
    model(_rays(100, seed=99), torch.ones(3))
    assert len(samples) > 16  # the sample counts did vary
    assert set(seen) <= row_counts() and len(set(seen)) <= 6
