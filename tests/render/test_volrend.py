import math

import torch

from turbonerf.render.volrend import (
    accumulate_along_rays,
    composite,
    exclusive_sum_along_rays,
    render_weight_from_density,
)


def test_weights_match_hand_computation():
    # one ray, three intervals of widths 0.5, 0.5, 1.0 with densities 1, 2, 0
    t_starts = torch.tensor([0.0, 0.5, 1.0])
    t_ends = torch.tensor([0.5, 1.0, 2.0])
    sigmas = torch.tensor([1.0, 2.0, 0.0])
    ray = torch.zeros(3, dtype=torch.long)
    w, trans, alphas = render_weight_from_density(t_starts, t_ends, sigmas, ray, 1)
    exp_alpha = [1 - math.exp(-0.5), 1 - math.exp(-1.0), 0.0]
    exp_trans = [1.0, math.exp(-0.5), math.exp(-1.5)]
    assert torch.allclose(alphas, torch.tensor(exp_alpha), atol=1e-6)
    assert torch.allclose(trans, torch.tensor(exp_trans), atol=1e-6)
    assert torch.allclose(w, torch.tensor(exp_alpha) * torch.tensor(exp_trans), atol=1e-6)
    # total opacity = 1 - exp(-sum sigma delta)
    assert abs(w.sum().item() - (1 - math.exp(-1.5))) < 1e-6


def test_packed_rays_are_independent_and_match_dense_reference():
    torch.manual_seed(0)
    counts = [3, 0, 5, 1]
    ray = torch.repeat_interleave(torch.arange(4), torch.tensor(counts))
    s = len(ray)
    deltas = torch.rand(s) * 0.3 + 0.01
    sigmas = torch.rand(s) * 5
    t_starts = torch.rand(s)
    t_ends = t_starts + deltas
    w, trans, _ = render_weight_from_density(t_starts, t_ends, sigmas, ray, 4)
    start = 0
    for r, c in enumerate(counts):
        sd = sigmas[start : start + c] * deltas[start : start + c]
        ref_t = torch.exp(-(torch.cumsum(sd, 0) - sd))
        assert torch.allclose(trans[start : start + c], ref_t, atol=1e-6)
        assert torch.allclose(w[start : start + c], ref_t * (1 - torch.exp(-sd)), atol=1e-6)
        start += c


def test_exclusive_sum_long_arrays_keep_precision():
    n_rays, per = 2000, 200
    ray = torch.arange(n_rays).repeat_interleave(per)
    vals = torch.full((n_rays * per,), 3.0)
    out = exclusive_sum_along_rays(vals, ray, n_rays).reshape(n_rays, per)
    expected = torch.arange(per, dtype=torch.float32) * 3.0
    assert torch.equal(out[-1], expected)


def test_accumulate_and_composite_with_background():
    ray = torch.tensor([0, 0, 1])
    w = torch.tensor([0.25, 0.5, 0.0])
    vals = torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0]])
    acc = accumulate_along_rays(w, vals, ray, 3)
    assert torch.allclose(acc, torch.tensor([[0.25, 0.5, 0], [0, 0, 0], [0, 0, 0]]))
    out = composite(
        torch.tensor([0.0, 1.0, 0.0]),
        torch.tensor([1.0, 2.0, 1.0]),
        torch.tensor([1e4, 1e4, 0.0]),
        vals,
        ray,
        3,
        background=torch.ones(3),
    )
    # ray 0 is opaque at its first sample: red, depth at the first midpoint
    assert torch.allclose(out["rgb"][0], torch.tensor([1.0, 0, 0]), atol=1e-5)
    assert abs(out["depth"][0].item() - 0.5) < 1e-5
    # ray 1 is empty: background; ray 2 has no samples: background
    assert torch.allclose(out["rgb"][1:], torch.ones(2, 3))
    assert torch.allclose(out["opacity"], torch.tensor([1.0, 0.0, 0.0]), atol=1e-5)


def test_gradients_flow_to_densities_and_colours():
    ray = torch.zeros(4, dtype=torch.long)
    sig = torch.rand(4, requires_grad=True)
    rgb = torch.rand(4, 3, requires_grad=True)
    out = composite(torch.arange(4.0), torch.arange(1.0, 5.0), sig, rgb, ray, 1)
    out["rgb"].sum().backward()
    assert sig.grad is not None and torch.isfinite(sig.grad).all() and sig.grad.abs().sum() > 0
    assert rgb.grad.abs().sum() > 0


def test_dense_weights_match_packed_weights():
    from turbonerf.rays import packed_from_dense
    from turbonerf.render.volrend import render_weight_dense, render_weight_from_density

    gen = torch.Generator().manual_seed(1)
    edges = torch.sort(torch.rand(6, 11, generator=gen) * 4.0, dim=-1).values
    sigmas = torch.rand(6, 10, generator=gen) * 3.0
    s = packed_from_dense(edges)
    packed, _, _ = render_weight_from_density(s.t_starts, s.t_ends, sigmas.reshape(-1), s.ray_indices, s.n_rays)
    assert torch.allclose(render_weight_dense(edges, sigmas), packed.reshape(6, 10), atol=1e-6)
