import torch

from turbonerf.rays import RayBundle
from turbonerf.samplers.base import SamplerUpdate
from turbonerf.samplers.proposal import (
    ProposalSampler,
    lindisp_spacing,
    lindisp_spacing_inv,
    s_to_t,
    sample_edges_from_histogram,
)


def _rays(n: int, near: float, far: float) -> RayBundle:
    gen = torch.Generator().manual_seed(0)
    d = torch.nn.functional.normalize(torch.randn(n, 3, generator=gen), dim=-1)
    o = torch.randn(n, 3, generator=gen)
    near_t = torch.full((n,), near) * (1 + torch.rand(n, generator=gen))
    far_t = near_t + torch.full((n,), far) * torch.rand(n, generator=gen) + 0.1
    return RayBundle(o, d, d, near_t, far_t)


def _sphere_density(points: torch.Tensor) -> torch.Tensor:
    return 50.0 * (points.norm(dim=-1) < 1.0).float()


def test_spacing_round_trip_and_ends():
    t = torch.tensor([0.0, 0.5, 1.0, 2.0, 100.0])
    assert torch.allclose(lindisp_spacing_inv(lindisp_spacing(t)), t, rtol=1e-5)
    near, far = torch.tensor([0.05, 2.0]), torch.tensor([1000.0, 6.0])
    ends = s_to_t(torch.tensor([[0.0, 1.0], [0.0, 1.0]]), near, far)
    assert torch.allclose(ends, torch.stack([near, far], -1), rtol=1e-4)
    # linear below distance 1: s is uniform in t on [0, 1]
    mid = s_to_t(torch.tensor([[0.5]]), torch.tensor([0.0]), torch.tensor([1.0]))
    assert torch.isclose(mid, torch.tensor([[0.5]]))


def test_histogram_sampling_follows_weights_and_is_sorted():
    edges = torch.linspace(0.0, 1.0, 5).expand(2, -1)
    weights = torch.tensor([[0.0, 1.0, 0.0, 0.0], [0.25, 0.25, 0.25, 0.25]])
    s = sample_edges_from_histogram(edges, weights, 64, jitter=True, padding=0.0)
    assert (s[:, 1:] >= s[:, :-1]).all()
    assert ((s[0] >= 0.25) & (s[0] <= 0.5)).all()  # all mass in the second bin
    assert s[1].min() < 0.05 and s[1].max() > 0.95


def test_samples_inside_near_far_and_sorted():
    rays = _rays(50, 0.5, 8.0)
    sampler = ProposalSampler([_sphere_density, _sphere_density], (32, 16), 8)
    for train in (True, False):
        sampler.update(2000)
        out = sampler.propose(rays, train)
        s = out.samples
        assert len(s) == 50 * 8 and out.t_edges.shape == (50, 9)
        near, far = rays.near[s.ray_indices], rays.far[s.ray_indices]
        assert (s.t_starts >= near - 1e-5).all() and (s.t_ends <= far + 1e-4).all()
        assert (s.t_ends >= s.t_starts).all()
        t = out.t_edges
        assert (t[:, 1:] >= t[:, :-1]).all()
        assert [e.shape[1] for e in out.proposal_s_edges] == [33, 17]
        assert [w.shape[1] for w in out.proposal_weights] == [32, 16]


def test_samples_concentrate_where_the_density_is():
    # rays through the unit sphere at the origin, starting 4 away
    n = 20
    d = torch.tensor([[1.0, 0.0, 0.0]]).expand(n, -1)
    o = torch.tensor([[-4.0, 0.0, 0.0]]).expand(n, -1) + torch.cat([torch.zeros(n, 1), torch.rand(n, 2) * 0.2], -1)
    rays = RayBundle(o, d, d, torch.full((n,), 0.5), torch.full((n,), 10.0))
    sampler = ProposalSampler([_sphere_density, _sphere_density], (128, 64), 32)
    sampler.update(10_000)
    mids = sampler.propose(rays, train=False).samples.t_mids
    near_surface = ((mids > 2.5) & (mids < 3.5)).float().mean()
    assert near_surface > 0.5  # the sphere's front surface is at t = 3


def test_annealing_and_update_schedule():
    sampler = ProposalSampler([_sphere_density], (8,), 4, anneal_steps=1000, anneal_slope=10.0, update_every=5, update_warmup=5000)
    assert sampler.anneal_exponent(0) == 0.0 and sampler.anneal_exponent(1000) == 1.0
    assert 0.5 < sampler.anneal_exponent(100) < 1.0  # b x / ((b-1) x + 1) = 1 / 1.9 at x = 0.1
    learn = []
    for step in range(10_000):
        SamplerUpdate(sampler, _sphere_density).before_step(step)
        learn.append(sampler.proposals_learn)
    assert all(learn[:10])
    assert 160 <= sum(learn[9000:]) <= 170  # after warm-up: every 6th step (more than 5 since the last)
    assert 250 <= sum(learn[:500]) <= 500  # early on: every other step or more often
    assert sampler.anneal == 1.0
