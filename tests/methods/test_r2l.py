import dataclasses

import pytest
import torch

from turbonerf.methods.r2l import R2L, R2LConfig, r2l_preset, r2l_lr_factor, ray_point_ts, ray_points
from turbonerf.errors import TurboNerfError
from turbonerf.methods.registry import config_from_dict, get_method
from turbonerf.rays import RayBundle

AABB = torch.tensor([[-1.5, -1.5, -1.5], [1.5, 1.5, 1.5]])


def _rays(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    o = torch.randn(n, 3, generator=g)
    d = torch.nn.functional.normalize(torch.randn(n, 3, generator=g), dim=-1)
    near = 1.0 + torch.rand(n, generator=g)
    return RayBundle(o, d, d, near, near + 2.0 + torch.rand(n, generator=g))


def test_test_time_points_are_deterministic_segment_midpoints():
    rays = _rays()
    k = 16
    t1 = ray_point_ts(rays.near, rays.far, k, jitter=False)
    t2 = ray_point_ts(rays.near, rays.far, k, jitter=False)
    assert torch.equal(t1, t2)
    seg = (rays.far - rays.near)[:, None] / k
    expected = rays.near[:, None] + (torch.arange(k) + 0.5) * seg
    torch.testing.assert_close(t1, expected)
    pts = ray_points(rays, k, jitter=False)
    torch.testing.assert_close(pts, rays.origins[:, None] + t1[..., None] * rays.directions[:, None])


def test_training_points_are_jittered_but_stay_in_their_own_segment():
    rays = _rays(256)
    k = 8
    g = torch.Generator().manual_seed(1)
    t = ray_point_ts(rays.near, rays.far, k, jitter=True, generator=g)
    seg = (rays.far - rays.near)[:, None] / k
    lo = rays.near[:, None] + torch.arange(k) * seg
    assert torch.all(t >= lo - 1e-6) and torch.all(t <= lo + seg + 1e-6)
    assert not torch.allclose(t, ray_point_ts(rays.near, rays.far, k, jitter=False))
    # the jitter covers the segment, not just a corner of it
    frac = ((t - lo) / seg).flatten()
    assert frac.min() < 0.1 and frac.max() > 0.9
    t_again = ray_point_ts(rays.near, rays.far, k, jitter=True, generator=torch.Generator().manual_seed(1))
    assert torch.equal(t, t_again)


def test_render_is_deterministic_and_shapes_follow_the_contract():
    model = R2L(dataclasses.replace(R2LConfig(), width=16, depth=6, n_points=4, pos_freqs=3), AABB).eval()
    rays = _rays(10)
    with torch.no_grad():
        a = model.render(rays, torch.ones(3))
        b = model.render(rays, torch.zeros(3))
    assert a["rgb"].shape == (10, 3) and a["depth"].shape == (10,) and a["opacity"].shape == (10,)
    assert torch.equal(a["rgb"], b["rgb"])  # the background is baked into what the student learned
    assert torch.all((a["rgb"] > 0) & (a["rgb"] < 1))
    assert torch.all(a["depth"] == 0) and torch.all(a["opacity"] == 1)
    assert model.samples_per_ray() == 1
    assert model.in_dim == 4 * 3 * (2 * 3 + 1)
    assert len(model.blocks) == 2


def test_training_loss_backpropagates_to_every_layer():
    model = R2L(dataclasses.replace(R2LConfig(), width=16, depth=4, n_points=4, pos_freqs=2), AABB)
    rays = _rays(32)
    loss, stats = model.training_loss(rays, torch.rand(32, 3), torch.ones(3))
    loss.backward()
    assert stats["mse"] > 0
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_presets_and_registry():
    paper = r2l_preset("paper")
    assert (paper.width, paper.depth, paper.n_points, paper.pos_freqs, paper.n_blocks) == (256, 88, 16, 10, 43)
    cpu = r2l_preset("cpu")
    assert (cpu.width, cpu.depth) == (128, 16)
    with pytest.raises(TurboNerfError, match="preset"):
        r2l_preset("huge")
    cfg_cls, model_cls = get_method("r2l")
    assert cfg_cls is R2LConfig and model_cls is R2L
    cfg = config_from_dict("r2l", dataclasses.asdict(paper))
    model = model_cls(cfg, AABB)
    assert model.in_dim == 1008  # 16 points x 3 x (2 * 10 + 1), as in R2L
    with pytest.raises(TurboNerfError, match="even"):
        R2L(dataclasses.replace(R2LConfig(), depth=7), AABB)


def test_learning_rate_warms_up_then_decays():
    c = R2LConfig()
    assert r2l_lr_factor(0, c) == pytest.approx(c.warmup_lr / c.lr)
    assert r2l_lr_factor(c.warmup_steps, c) == pytest.approx(1.0)
    assert r2l_lr_factor(c.warmup_steps + c.lr_decay_steps, c) == pytest.approx(0.1)
