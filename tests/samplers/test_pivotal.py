"""Pivotal sampling: fine samples only around the coarse samples that carry weight."""

import torch

from turbonerf.rays import packed_from_dense
from turbonerf.samplers.pivotal import pivotal_samples
from turbonerf.samplers.uniform import stratified_edges


def _coarse(n_rays=16, n=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    near, far = torch.full((n_rays,), 2.0), torch.full((n_rays,), 6.0)
    edges = stratified_edges(near, far, n, jitter=True, generator=g)
    samples = packed_from_dense(edges)
    # Sparse weights: most below threshold, some above; drop some samples as valid sampling would.
    w = torch.rand(len(samples), generator=g)
    w = torch.where(torch.rand(len(samples), generator=g) < 0.15, w * 0.5 + 0.01, w * 1e-5)
    keep = torch.rand(len(samples), generator=g) < 0.8
    return samples.masked(keep), w[keep], near, far


def _check(samples, w, fine, pivots, reach, threshold):
    assert torch.equal(pivots, w > threshold)
    same = fine.ray_indices[1:] == fine.ray_indices[:-1]
    assert torch.all(fine.ray_indices[1:] >= fine.ray_indices[:-1])
    assert torch.all(fine.t_mids[1:][same] > fine.t_mids[:-1][same])  # sorted per ray
    assert torch.all(fine.t_starts[1:][same] >= fine.t_ends[:-1][same] - 1e-6)  # no overlaps
    assert torch.all(fine.t_ends >= fine.t_starts)
    t_c, r_c = samples.t_mids, samples.ray_indices
    # distance from every coarse sample to every fine sample of its ray
    dist = (t_c[:, None] - fine.t_mids[None, :]).abs()
    dist = torch.where(r_c[:, None] == fine.ray_indices[None, :], dist, torch.full_like(dist, float("inf")))
    near_count = (dist <= reach + 1e-5).sum(1)
    assert torch.all(near_count[pivots] > 0)  # every pivot is surrounded by fine samples
    # every fine sample is near some pivot, none exists only because of a sub-threshold sample
    d_piv = dist[pivots]
    assert torch.all(d_piv.min(0).values <= reach + 1e-5)


def test_fixed_spacing_surrounds_pivots_only():
    samples, w, near, far = _coarse()
    n_s, delta = 4, 0.02
    fine, pivots = pivotal_samples(samples, w, n_s, delta_f=delta, threshold=1e-4, near=near, far=far)
    assert 0 < int(pivots.sum()) < len(samples)
    assert len(fine) == n_s * int(pivots.sum())
    _check(samples, w, fine, pivots, delta * n_s / 2, 1e-4)
    assert torch.all(fine.t_starts >= 2.0) and torch.all(fine.t_ends <= 6.0)


def test_fine_positions_are_centred_on_the_pivot():
    edges = torch.tensor([[0.0, 1.0, 2.0, 3.0], [0.0, 1.0, 2.0, 3.0]])
    samples = packed_from_dense(edges)
    w = torch.tensor([0.0, 0.3, 0.0, 0.2, 0.0, 0.4])
    fine, _ = pivotal_samples(samples, w, 4, delta_f=0.1)
    expect = torch.tensor([1.35, 1.45, 1.55, 1.65, 0.35, 0.45, 0.55, 0.65, 2.35, 2.45, 2.55, 2.65])
    assert torch.allclose(fine.t_mids, expect, atol=1e-6)
    assert fine.ray_indices.tolist() == [0] * 4 + [1] * 8
    assert torch.allclose(fine.deltas, torch.full((12,), 0.1), atol=1e-6)


def test_default_spacing_splits_pivot_intervals_exactly():
    samples, w, near, far = _coarse(seed=3)
    n_s = 5
    fine, pivots = pivotal_samples(samples, w, n_s, threshold=1e-4)
    assert len(fine) == n_s * int(pivots.sum())
    # Fine intervals tile the pivots' coarse intervals: same total length, each inside one pivot interval.
    assert torch.allclose(fine.deltas.sum(), samples.deltas[pivots].sum(), atol=1e-4)
    piv_start = samples.t_starts[pivots].repeat_interleave(n_s)
    piv_end = samples.t_ends[pivots].repeat_interleave(n_s)
    assert torch.all(fine.t_starts >= piv_start - 1e-5) and torch.all(fine.t_ends <= piv_end + 1e-5)
    _check(samples, w, fine, pivots, float(samples.deltas[pivots].max()) / 2, 1e-4)


def test_overlapping_clusters_are_sorted_and_clipped():
    # Two pivots on one ray closer than the cluster width: clusters interleave.
    edges = torch.tensor([[0.0, 1.0, 1.1, 2.0]])
    samples = packed_from_dense(edges)
    w = torch.tensor([0.5, 0.5, 0.0])
    fine, pivots = pivotal_samples(samples, w, 3, delta_f=0.2)
    assert pivots.tolist() == [True, True, False]
    assert len(fine) == 6
    assert torch.all(fine.t_mids[1:] > fine.t_mids[:-1])
    assert torch.all(fine.t_starts[1:] >= fine.t_ends[:-1] - 1e-7)


def test_no_pivots_no_samples():
    samples, w, near, far = _coarse()
    fine, pivots = pivotal_samples(samples, torch.zeros_like(w), 5, threshold=1e-4)
    assert len(fine) == 0 and not pivots.any() and fine.n_rays == samples.n_rays
