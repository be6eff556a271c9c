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
