import torch

from turbonerf.render.losses import distortion_loss, interlevel_loss, outer_weights


def _brute_distortion(edges, weights):
    mids = 0.5 * (edges[:, 1:] + edges[:, :-1])
    inter = (weights[:, :, None] * weights[:, None, :] * (mids[:, :, None] - mids[:, None, :]).abs()).sum((1, 2))
    intra = (weights**2 * (edges[:, 1:] - edges[:, :-1])).sum(-1) / 3.0
    return (inter + intra).mean()


def test_distortion_known_cases():
    # one bin of width 0.5 holding all the weight: 1/3 * 0.5
    assert torch.isclose(distortion_loss(torch.tensor([[0.0, 0.5]]), torch.tensor([[1.0]])), torch.tensor(0.5 / 3))
    # two halves of [0, 1] with 0.5 each: 2 * 0.25 * 0.5 + 2 * 0.25 * 0.5 / 3 = 1/3
    d = distortion_loss(torch.tensor([[0.0, 0.5, 1.0]]), torch.tensor([[0.5, 0.5]]))
    assert torch.isclose(d, torch.tensor(1.0 / 3.0))
    # weight concentrated in a thin interval costs less than weight spread out
    thin = distortion_loss(torch.tensor([[0.0, 0.49, 0.51, 1.0]]), torch.tensor([[0.0, 1.0, 0.0]]))
    assert thin < d


def test_distortion_matches_quadratic_form():
    gen = torch.Generator().manual_seed(0)
    edges = torch.sort(torch.rand(5, 13, generator=gen), dim=-1).values
    weights = torch.rand(5, 12, generator=gen) / 12
    assert torch.isclose(distortion_loss(edges, weights), _brute_distortion(edges, weights), rtol=1e-5)


def test_outer_weights_sum_overlapping_proposal_bins():
    prop_edges = torch.tensor([[0.0, 0.25, 0.5, 0.75, 1.0]])
    prop_w = torch.tensor([[0.1, 0.2, 0.3, 0.4]])
    edges = torch.tensor([[0.0, 0.3, 0.6, 1.0]])
    # [0, 0.3] overlaps bins 0, 1; [0.3, 0.6] bins 1, 2; [0.6, 1] bins 2, 3
    assert torch.allclose(outer_weights(edges, prop_edges, prop_w), torch.tensor([[0.3, 0.5, 0.7]]))


def test_interlevel_zero_when_proposals_bound_and_positive_otherwise():
    edges = torch.tensor([[0.0, 0.3, 0.6, 1.0]])
    w = torch.tensor([[0.1, 0.6, 0.2]])
    prop_edges = torch.tensor([[0.0, 0.25, 0.5, 0.75, 1.0]])
    bounding = torch.tensor([[0.1, 0.3, 0.3, 0.2]])  # outer = [0.4, 0.6, 0.5] >= w
    assert interlevel_loss(edges, w, [prop_edges], [bounding]).item() == 0.0
    too_small = torch.tensor([[0.05, 0.05, 0.05, 0.05]], requires_grad=True)
    loss = interlevel_loss(edges, w.requires_grad_(), [prop_edges, prop_edges], [too_small, bounding])
    assert loss.item() > 0.0
    loss.backward()
    assert too_small.grad is not None and (too_small.grad < 0).any()  # raising the proposal lowers it
    assert w.grad is None  # the NeRF's weights are detached
