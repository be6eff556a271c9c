"""Proposal-network sampling (Mip-NeRF 360; nerfstudio's ``ProposalNetworkSampler``).

Every ray is resampled level by level in a normalised coordinate s in [0, 1]:

1. level 0: ``n_proposal_samples[0]`` stratified intervals, uniform in s, where
   s = (g(t) - g(near)) / (g(far) - g(near)) and g(t) = t/2 for t < 1, 1 - 1/(2t) beyond
   ("uniform, then linear in disparity": even spacing up to distance 1, then even in 1/t);
2. each proposal level evaluates its density callable at the interval midpoints, turns the
   densities into compositing weights, raises them to the annealing exponent (training only)
   and draws the next level's interval edges from their histogram (padded by
   ``histogram_padding`` per bin, stratified quantiles with a single jitter per ray);
3. the last draw gives the ``n_samples`` intervals the NeRF evaluates.

Annealing (training only): exponent a(step) = b x / ((b - 1) x + 1) with x = min(step /
anneal_steps, 1) and b = ``anneal_slope``; at a = 0 every proposal histogram is flat, at a = 1
the weights are used as they are.

When do the proposal networks learn? As in nerfstudio: on the first 10 steps always, then when
more than k steps have passed since the last such step, with k = clip(step / update_warmup *
update_every, 1, update_every); on the other steps the proposal densities run without a graph
(cheaper, and the interlevel loss then changes nothing). Set ``update_every=0`` to give them a
gradient on every step.

The sampler fits :mod:`turbonerf.samplers.base`: ``sample(rays, density_fn, train)`` (the
proposal density callables are given at construction; ``density_fn`` is ignored),
``update(step, density_fn)`` sets the annealing exponent and the update decision, and
``observe`` does nothing. :meth:`ProposalSampler.propose` also returns what the interlevel and
distortion losses need.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from turbonerf.rays import PackedSamples, RayBundle, packed_from_dense
from turbonerf.render.volrend import render_weight_dense
from turbonerf.samplers.base import DensityFn
from turbonerf.samplers.uniform import stratified_edges


def lindisp_spacing(t: Tensor) -> Tensor:
    """g(t): t/2 for t < 1, 1 - 1/(2t) beyond (t >= 0). Any shape."""
    return torch.where(t < 1.0, 0.5 * t, 1.0 - 0.5 / t.clamp(min=1.0))


def lindisp_spacing_inv(y: Tensor) -> Tensor:
    """Inverse of :func:`lindisp_spacing` for y in [0, 1). Any shape."""
    return torch.where(y < 0.5, 2.0 * y, 1.0 / (2.0 - 2.0 * y).clamp(min=1e-12))


def s_to_t(s: Tensor, near: Tensor, far: Tensor) -> Tensor:
    """Normalised coordinates s [R, K] in [0, 1] -> distances t [R, K] in [near, far] ([R] each)."""
    g0, g1 = lindisp_spacing(near)[:, None], lindisp_spacing(far)[:, None]
    return lindisp_spacing_inv(g0 + s * (g1 - g0)).clamp(near[:, None], far[:, None])


def sample_edges_from_histogram(edges: Tensor, weights: Tensor, n_edges: int, jitter: bool, padding: float) -> Tensor:
    """Draw sorted positions from the piecewise-constant density ``weights + padding`` over bins.

    Args:
        edges: [R, B+1] bin edges; weights: [R, B] >= 0.
        n_edges: K, positions per ray (the new interval edges).
        jitter: stratified quantiles (k + u) / K with one u ~ U(0, 1) per ray; else (k + 0.5) / K.
    Returns:
        [R, K] non-decreasing positions within [edges[:, 0], edges[:, -1]].
    """
    r, b = weights.shape
    w = weights + max(padding, 1e-5)
    cdf = torch.cumsum(w, dim=-1)
    cdf = torch.cat([torch.zeros_like(cdf[:, :1]), (cdf / cdf[:, -1:]).clamp(max=1.0)], dim=-1)
    base = torch.arange(n_edges, device=edges.device, dtype=cdf.dtype) / n_edges
    offset = torch.rand((r, 1), device=edges.device, dtype=cdf.dtype) if jitter else torch.full((r, 1), 0.5, device=edges.device, dtype=cdf.dtype)
    u = (base + offset / n_edges).contiguous()
    idx = torch.searchsorted(cdf.contiguous(), u, right=True)
    lo, hi = (idx - 1).clamp(0, b), idx.clamp(0, b)
    c0, c1 = cdf.gather(1, lo), cdf.gather(1, hi)
    e0, e1 = edges.gather(1, lo), edges.gather(1, hi)
    frac = ((u - c0) / (c1 - c0)).nan_to_num(0.0).clamp(0.0, 1.0)
    return e0 + frac * (e1 - e0)


@dataclass
class ProposalSamples:
    """What one proposal-sampling pass produced for R rays.

    Attributes:
        samples: the NeRF's packed samples (``n_samples`` per ray, sorted).
        t_edges, s_edges: [R, n_samples + 1] their interval edges, in distance and in s.
        proposal_s_edges: per proposal level, [R, P_k + 1] edges in s.
        proposal_weights: per proposal level, [R, P_k] compositing weights (with a graph when the
            proposals learn this step).
    """

    samples: PackedSamples
    t_edges: Tensor
    s_edges: Tensor
    proposal_s_edges: list[Tensor]
    proposal_weights: list[Tensor]


class ProposalSampler:
    """Proposal-network sampler (see the module docstring).

    Args:
        density_fns: one callable per proposal level, points [N, 3] -> density [N].
        n_proposal_samples: samples per ray of each proposal level (nerfacto: 256, 96).
        n_samples: samples per ray handed to the NeRF (nerfacto: 48).
        anneal_steps, anneal_slope: the annealing schedule (nerfacto: 1000, 10).
        update_every, update_warmup: when the proposal networks learn (nerfacto: 5, 5000).
        histogram_padding: added to each bin's weight before resampling (nerfacto: 0.01).
    """

    def __init__(
        self,
        density_fns: list[DensityFn],
        n_proposal_samples: tuple[int, ...] = (256, 96),
        n_samples: int = 48,
        anneal_steps: int = 1000,
        anneal_slope: float = 10.0,
        update_every: int = 5,
        update_warmup: int = 5000,
        histogram_padding: float = 0.01,
    ):
        if len(density_fns) != len(n_proposal_samples) or not density_fns:
            raise ValueError("need one density callable per proposal level (at least one)")
        self.density_fns = list(density_fns)
        self.n_proposal_samples = tuple(n_proposal_samples)
        self.n_samples = n_samples
        self.anneal_steps = anneal_steps
        self.anneal_slope = anneal_slope
        self.update_every = update_every
        self.update_warmup = update_warmup
        self.histogram_padding = histogram_padding
        self.anneal = 1.0
        self.proposals_learn = True
        self._steps_since_update = 0

    def anneal_exponent(self, step: int) -> float:
        """a(step) in [0, 1] (see the module docstring)."""
        if self.anneal_steps <= 0:
            return 1.0
        x = min(max(step / self.anneal_steps, 0.0), 1.0)
        b = self.anneal_slope
        return b * x / ((b - 1.0) * x + 1.0)

    def update(self, step: int, density_fn: DensityFn | None = None) -> None:
        """Before training step ``step``: the annealing exponent and whether the proposals learn."""
        self.anneal = self.anneal_exponent(step)
        self._steps_since_update += 1
        k = min(max(step / max(self.update_warmup, 1) * self.update_every, 1.0), float(max(self.update_every, 1)))
        self.proposals_learn = self.update_every <= 0 or step < 10 or self._steps_since_update > k
        if self.proposals_learn:
            self._steps_since_update = 0

    def observe(self, points: Tensor, density: Tensor) -> None:
        """Nothing to learn from the NeRF's samples (the interlevel loss trains the proposals)."""

    def sample(self, rays: RayBundle, density_fn: DensityFn | None = None, train: bool = False) -> PackedSamples:
        """The NeRF's samples of ``rays`` (``density_fn`` is ignored: the proposals are used)."""
        return self.propose(rays, train).samples

    def propose(
        self, rays: RayBundle, train: bool, first_weights: Tensor | None = None, padding: float | None = None
    ) -> ProposalSamples:
        """Run the proposal levels on R rays. ``train``: jitter, anneal, and keep the proposals'
        graph on the steps they learn; otherwise deterministic, no annealing, no graph.

        ``first_weights`` [R, P_0]: weights of the first level's bins (:meth:`initial_s_edges`)
        computed elsewhere (activation-based sampling: an estimate from the first proposal
        network's activations), so that network is skipped; its draw then pads them with
        ``padding`` (default ``histogram_padding``). The later levels run as always."""
        near, far = rays.near, rays.far
        r = len(rays)
        s_edges = self.initial_s_edges(near, self.n_proposal_samples[0], train)
        prop_edges, prop_weights = [], []
        for level, density_fn in enumerate(self.density_fns):
            t_edges = s_to_t(s_edges, near, far)
            estimated = level == 0 and first_weights is not None
            if estimated:
                weights = first_weights
            else:
                mids = 0.5 * (t_edges[:, 1:] + t_edges[:, :-1])
                points = rays.origins[:, None, :] + mids[..., None] * rays.directions[:, None, :]
                with torch.set_grad_enabled(train and self.proposals_learn and torch.is_grad_enabled()):
                    sigma = density_fn(points.reshape(-1, 3)).float().reshape(r, -1)
                    weights = render_weight_dense(t_edges, sigma)
            prop_edges.append(s_edges)
            prop_weights.append(weights)
            n_next = self.n_proposal_samples[level + 1] if level + 1 < len(self.density_fns) else self.n_samples
            w = weights.detach()
            if train and self.anneal != 1.0:
                w = w.pow(self.anneal)
            pad = padding if (estimated and padding is not None) else self.histogram_padding
            s_edges = sample_edges_from_histogram(s_edges, w, n_next + 1, train, pad)
        t_edges = s_to_t(s_edges, near, far)
        return ProposalSamples(packed_from_dense(t_edges), t_edges, s_edges, prop_edges, prop_weights)

    @staticmethod
    def initial_s_edges(near: Tensor, n: int, train: bool = False) -> Tensor:
        """[R, n + 1] the first level's bins in s (uniform; stratified when ``train``) for rays [R]."""
        return stratified_edges(torch.zeros_like(near), torch.ones_like(near), n, jitter=train)
