"""EfficientNeRF: trains, renders, skips empty space."""

import dataclasses

import torch

from turbonerf.engine.loop import StepOutput

from turbonerf.methods.efficient_nerf import EfficientNeRF, EfficientNeRFConfig
from turbonerf.methods.registry import get_method
from turbonerf.rays import RayBundle

AABB = torch.tensor([[-1.5, -1.5, -1.5], [1.5, 1.5, 1.5]])
WHITE = torch.ones(3)


def _tiny_config(**kw) -> EfficientNeRFConfig:
    base = dict(
        n_coarse=16, n_per_pivot=3, grid_resolution=16, coarse_depth=2, coarse_width=16, coarse_skip=1,
        fine_depth=2, fine_width=32, fine_skip=1, pos_freqs=4,
    )
    return EfficientNeRFConfig(**(base | kw))


def _rays(n: int, seed: int = 0) -> RayBundle:
    """Rays from radius 4 towards points near the origin (lego-like), near 2, far 6."""
    g = torch.Generator().manual_seed(seed)
    o = 4.0 * torch.nn.functional.normalize(torch.randn(n, 3, generator=g), dim=-1)
    d = torch.nn.functional.normalize(0.5 * torch.randn(n, 3, generator=g) - o, dim=-1)
    return RayBundle(o, d, d, torch.full((n,), 2.0), torch.full((n,), 6.0))


def test_registered():
    assert get_method("efficient-nerf") == (EfficientNeRFConfig, EfficientNeRF)


def test_trains_two_steps_and_updates_grid():
    torch.manual_seed(0)
    model = EfficientNeRF(_tiny_config(), AABB)
    opt, lr_factor = model.make_optimizer()
    assert lr_factor(0) == 1.0
    rays = _rays(32)
    target = torch.rand(32, 3)
    before = model.grid.density.clone()
    callbacks = model.callbacks()
    for step in range(2):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            outputs = model(rays, WHITE, train=True)
            loss, stats = model.loss(outputs, target)
        stats = {**outputs["stats"], **stats}
        assert torch.isfinite(loss)
        opt.zero_grad()
        loss.backward()
        opt.step()
        assert torch.equal(model.grid.density, before) or step > 0  # the grid learns in a callback, not in the loss
        for cb in callbacks:
            cb.after_step(step, StepOutput(loss, outputs, stats))
    assert not torch.equal(model.grid.density, before)
    for key in ("valid_fraction", "pivotal_fraction", "samples_per_ray", "mse", "mse_coarse"):
        assert key in stats and isinstance(stats[key], float)
    assert 0 < stats["valid_fraction"] < 1  # samples outside the box are skipped
    assert "grid.density" in model.state_dict()


def test_render_shapes_and_determinism():
    torch.manual_seed(0)
    model = EfficientNeRF(_tiny_config(), AABB).eval()
    rays = _rays(20, seed=1)
    with torch.no_grad():
        out = model.render(rays, WHITE)
        again = model.render(rays, WHITE)
    assert out["rgb"].shape == (20, 3) and out["depth"].shape == (20,) and out["opacity"].shape == (20,)
    assert torch.equal(out["rgb"], again["rgb"])
    assert torch.all(torch.isfinite(out["rgb"]))
    assert model.samples_per_ray() > 0


def test_empty_grid_renders_background():
    torch.manual_seed(0)
    model = EfficientNeRF(_tiny_config(), AABB).eval()
    model.grid.density.fill_(-1.0)
    rays = _rays(8, seed=2)
    bg = torch.tensor([0.2, 0.4, 0.6])
    with torch.no_grad():
        out = model.render(rays, bg)
    assert torch.equal(out["rgb"], bg.expand(8, 3))
    assert torch.all(out["opacity"] == 0)
    assert model.samples_per_ray() == 0


def test_ray_missing_occupied_region_renders_background():
    torch.manual_seed(0)
    model = EfficientNeRF(_tiny_config(), AABB).eval()
    model.grid.density.fill_(-1.0)
    model.grid.density[6:10, 6:10, 6:10] = 5.0  # a small occupied block at the centre
    o = torch.tensor([[0.0, 0.0, 4.0], [1.2, 1.2, 4.0]])
    d = torch.tensor([[0.0, 0.0, -1.0], [0.0, 0.0, -1.0]])
    rays = RayBundle(o, d, d, torch.full((2,), 2.0), torch.full((2,), 6.0))
    with torch.no_grad():
        out = model.render(rays, WHITE)
    assert out["opacity"][0] > 0
    assert torch.equal(out["rgb"][1], WHITE) and out["opacity"][1] == 0


def test_training_with_empty_grid_still_backpropagates():
    model = EfficientNeRF(_tiny_config(uniform_ratio=0.0), AABB)
    model.grid.density.fill_(-1.0)
    loss, stats = model.training_loss(_rays(8), torch.rand(8, 3), WHITE)
    loss.backward()
    assert stats["valid_fraction"] == 0 and stats["samples_per_ray"] == 0


def test_pivots_from_grid_skips_coarse_mlp_at_render():
    model = EfficientNeRF(_tiny_config(pivots_from_grid=True), AABB).eval()
    calls = []
    model.coarse.register_forward_hook(lambda *a: calls.append(1))
    with torch.no_grad():
        out = model.render(_rays(10), WHITE)
    assert not calls and out["rgb"].shape == (10, 3)
    loss, _ = model.train().training_loss(_rays(10), torch.rand(10, 3), WHITE)
    assert calls and torch.isfinite(loss)


def test_config_fields_are_documented_defaults():
    c = EfficientNeRFConfig()
    assert c.weight_threshold == 1e-4 and c.beta == 0.1 and c.grid_init > 0
    assert all(f.default is not dataclasses.MISSING for f in dataclasses.fields(c))
