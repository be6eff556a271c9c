import torch

from turbonerf.samplers.pdf import merge_edges, sample_from_pdf
from turbonerf.samplers.uniform import stratified_edges


def test_inverse_cdf_follows_the_weights():
    edges = torch.linspace(0.0, 4.0, 5).expand(1, -1)  # bins [0,1) [1,2) [2,3) [3,4)
    weights = torch.tensor([[0.0, 3.0, 0.0, 1.0]])
    gen = torch.Generator().manual_seed(0)
    t = sample_from_pdf(edges, weights, 40000, deterministic=False, eps=0.0, generator=gen)
    hist = torch.histc(t, bins=4, min=0.0, max=4.0) / t.numel()
    assert torch.allclose(hist, torch.tensor([0.0, 0.75, 0.0, 0.25]), atol=0.01)
    # within a bin, samples are uniform: mean of those in bin 1 is 1.5
    inside = t[(t >= 1) & (t < 2)]
    assert abs(inside.mean().item() - 1.5) < 0.01


def test_deterministic_quantiles_are_sorted_and_reproducible():
    edges = torch.tensor([[2.0, 3.0, 4.0, 6.0]])
    weights = torch.tensor([[1.0, 1.0, 2.0]])
    a = sample_from_pdf(edges, weights, 16, deterministic=True)
    b = sample_from_pdf(edges, weights, 16, deterministic=True)
    assert torch.equal(a, b)
    assert (a[:, 1:] >= a[:, :-1]).all()
    assert a.min() >= 2.0 and a.max() <= 6.0
    # half the mass is in the last bin [4, 6]
    assert ((a >= 4.0).sum().item()) == 8


def test_zero_weights_fall_back_to_uniform():
    edges = torch.linspace(0, 1, 9).expand(3, -1)
    t = sample_from_pdf(edges, torch.zeros(3, 8), 7, deterministic=True)
    assert torch.allclose(t, torch.linspace(0, 1, 9)[1:-1].expand(3, -1), atol=1e-4)


def test_stratified_edges_tile_the_range():
    near, far = torch.tensor([2.0, 0.0]), torch.tensor([6.0, 1.0])
    gen = torch.Generator().manual_seed(1)
    e = stratified_edges(near, far, 64, jitter=True, generator=gen)
    assert e.shape == (2, 65)
    assert torch.equal(e[:, 0], near) and torch.equal(e[:, -1], far)
    assert (e[:, 1:] > e[:, :-1]).all()
    # each midpoint stays in its own stratum
    mids = 0.5 * (e[:, 1:] + e[:, :-1])
    u = (mids - near[:, None]) / (far - near)[:, None] * 64
    assert ((u - torch.arange(64)).abs() <= 1.0).all()
    fixed = stratified_edges(near, far, 4, jitter=False)
    assert torch.allclose(fixed[0], torch.tensor([2.0, 3.0, 4.0, 5.0, 6.0]))


def test_merge_edges_sorts_union():
    out = merge_edges(torch.tensor([[0.0, 1.0, 2.0]]), torch.tensor([[1.5, 0.5]]))
    assert torch.equal(out, torch.tensor([[0.0, 0.5, 1.0, 1.5, 2.0]]))


def test_blur_pool_weights_on_a_known_vector():
    from turbonerf.samplers.pdf import blur_pool_weights

    w = torch.tensor([[0.0, 0.0, 1.0, 0.0, 0.0, 0.5]])
    # pad [0, 0,0,1,0,0,0.5, 0.5] -> neighbour maxima [0,0,1,1,0,0.5,0.5] -> pair means
    assert torch.allclose(blur_pool_weights(w), torch.tensor([[0.0, 0.5, 1.0, 0.5, 0.25, 0.5]]))


def test_resample_edges_deterministic_spans_the_ray_and_follows_the_weights():
    from turbonerf.samplers.pdf import resample_edges

    edges = torch.linspace(2.0, 6.0, 9).expand(2, -1).contiguous()
    w = torch.zeros(2, 8)
    w[0, 5] = 1.0  # all mass in [4.5, 5.0]
    t = resample_edges(edges, w, 17, randomized=False)
    assert t.shape == (2, 17) and torch.all(t[:, 1:] >= t[:, :-1])
    assert torch.all((t[0] >= 4.5) & (t[0] <= 5.0)) and t[0, 0] == 4.5 and t[0, -1] > 4.99
    # with Mip-NeRF's padding every bin has mass: the new edges start and end with the ray
    padded = resample_edges(edges, w + 0.01, 17, randomized=False)
    assert padded[0, 0] == 2.0 and padded[0, -1] > 5.99 and ((padded[0] >= 4.5) & (padded[0] <= 5.0)).sum() >= 13
    # a ray with no weight at all is sampled uniformly
    assert torch.allclose(t[1], torch.linspace(2.0, 6.0 - 4.0 * torch.finfo(torch.float32).eps, 17), atol=1e-5)


def test_resample_edges_randomized_is_stratified_and_has_the_right_histogram():
    from turbonerf.samplers.pdf import resample_edges

    gen = torch.Generator().manual_seed(0)
    edges = torch.tensor([[0.0, 1.0, 2.0, 3.0]])
    weights = torch.tensor([[1.0, 2.0, 5.0]])
    t = resample_edges(edges.expand(2000, -1).contiguous(), weights.expand(2000, -1), 40, randomized=True, generator=gen)
    assert torch.all(t[:, 1:] >= t[:, :-1])
    hist = torch.histc(t.reshape(-1), bins=3, min=0.0, max=3.0) / t.numel()
    assert torch.allclose(hist, weights[0] / weights.sum(), atol=0.01)
