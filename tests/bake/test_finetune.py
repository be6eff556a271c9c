import numpy as np
import pytest
import torch

from tree_helpers import random_rays, random_tree
from turbonerf.bake.finetune import (
    FinetuneConfig, TrainingRays, composite_samples, finetune_tree, half_stochastic, macro_distance, sample_gradients, trace_samples,
)
from turbonerf.bake.march_numpy import march_numpy
from turbonerf.bake.nerftree import NerfTree, T_MIN
from turbonerf.bake.render import close_terminated

STEP = 0.01
BG = np.array([1.0, 0.5, 0.0])


def _reference(tree, o, d, near=1.0, far=5.0):
    n = len(o)
    out = march_numpy(tree, o, d, d, np.full(n, near, np.float32), np.full(n, far, np.float32), BG, STEP, "nearest")
    return close_terminated({k: torch.from_numpy(v) for k, v in out.items()}, torch.from_numpy(BG), T_MIN)


def _render(tree, data):
    """The fine-tuner's own renderer: traced samples, composited in torch."""
    vox = np.empty((len(data), 128), np.int64)
    counts = np.empty(len(data), np.int32)
    dens = tree.density.reshape(-1).astype(np.float32)
    first = np.empty(len(data), np.int64)
    trace_samples(tree.index, macro_distance(tree.index), dens, tree.fine_res, data.g0, data.gd, data.near, data.far, data.k0, STEP, T_MIN, vox,
                  counts, first)
    cnt = torch.from_numpy(counts.astype(np.int64))
    v = torch.from_numpy(vox)[torch.arange(vox.shape[1])[None] < cnt[:, None]]
    ray_of = torch.repeat_interleave(torch.arange(len(data)), cnt)
    sigma = torch.from_numpy(dens)[v]
    coeff = torch.from_numpy(tree.sh.astype(np.float32))[torch.from_numpy(tree.sh_row.reshape(-1)).long()[v]]
    return composite_samples(sigma, coeff, ray_of, data.basis, STEP, torch.from_numpy(BG).float(), T_MIN), counts


def _rays(tree, o, d, rgb=None):
    n = len(o)
    rgb = torch.zeros(n, 3) if rgb is None else rgb
    return TrainingRays.from_rays(tree, torch.from_numpy(o), torch.from_numpy(d), torch.from_numpy(d), torch.ones(n), torch.full((n,), 5.0), rgb)


def _clustered_tree() -> NerfTree:
    """A 64^3 tree whose occupied cells fill [26, 38)^3 only: empty macro blocks around them."""
    small = random_tree(coarse_res=12, occupancy=0.4, seed=7)
    index = np.full((64, 64, 64), -1, np.int32)
    index[26:38, 26:38, 26:38] = small.index
    return NerfTree(index, small.density * 10, small.sh, small.aabb, small.sh_degree)


@pytest.mark.parametrize("clustered", [False, True])
def test_traced_samples_render_like_the_reference_marcher(clustered):
    """The samples the fine-tuner differentiates are those every marcher takes: same image (the
    clustered tree has empty macro blocks to jump)."""
    tree = _clustered_tree() if clustered else random_tree()
    o, d = random_rays()
    if clustered:  # aim at the occupied middle
        assert (macro_distance(tree.index) > 1).any()
        d = np.random.default_rng(2).uniform(-0.25, 0.25, size=o.shape) - o
        d = (d / np.linalg.norm(d, axis=1, keepdims=True)).astype(np.float32)
    ref = _reference(tree, o, d)
    assert 0.1 < float(ref["opacity"].mean()) < 0.95 and float((ref["opacity"] >= 1 - T_MIN).float().mean()) > 0.05
    (rgb, opa), counts = _render(tree, _rays(tree, o, d))
    assert counts.max() > 3
    np.testing.assert_allclose(rgb.numpy(), ref["rgb"].numpy(), atol=1e-4)
    stopped = ref["opacity"].numpy() >= 1 - T_MIN
    np.testing.assert_allclose(opa.numpy()[~stopped], ref["opacity"].numpy()[~stopped], atol=1e-5)


def test_rays_that_meet_no_density_are_dropped_and_the_others_start_at_their_first_sample():
    tree = random_tree()
    o, d = random_rays()
    data = _rays(tree, o, d)
    kept = data.with_first_samples(tree, tree.density.reshape(-1).astype(np.float32), STEP)
    ref = _reference(tree, o, d)
    hit = ref["opacity"].numpy() > 0
    assert len(kept) == hit.sum() and 0 < len(kept) < len(data)
    np.testing.assert_array_equal(kept.rgb.numpy(), data.rgb.numpy()[hit])
    (rgb, _), _ = _render(tree, kept)  # traced from k0: the same image
    np.testing.assert_allclose(rgb.numpy(), ref["rgb"].numpy()[hit], atol=1e-4)


def test_numba_gradients_match_torch_autograd_of_the_reference_compositing():
    tree = random_tree(seed=4)
    o, d = random_rays(n=600, seed=6)
    gt = torch.from_numpy(np.random.default_rng(1).random((len(o), 3)).astype(np.float32))
    data = _rays(tree, o, d, gt).with_first_samples(tree, tree.density.reshape(-1).astype(np.float32), STEP)
    dens = tree.density.reshape(-1).astype(np.float32)
    cap, n = 128, len(data)
    vox, counts, first = np.empty((n, cap), np.int64), np.empty(n, np.int32), np.empty(n, np.int64)
    md = macro_distance(tree.index)
    trace_samples(tree.index, md, dens, tree.fine_res, data.g0, data.gd, data.near, data.far, data.k0, STEP, T_MIN, vox, counts, first)
    cnt = torch.from_numpy(counts.astype(np.int64))
    v = torch.from_numpy(vox)[torch.arange(cap)[None] < cnt[:, None]]
    ray_of = torch.repeat_interleave(torch.arange(n), cnt)
    log_sigma = torch.log(torch.from_numpy(dens)[v]).double().requires_grad_()
    coeff = torch.from_numpy(tree.sh.astype(np.float64))[torch.from_numpy(tree.sh_row.reshape(-1)).long()[v]].requires_grad_()
    rgb, _ = composite_samples(log_sigma.exp(), coeff, ray_of, data.basis.double(), STEP, torch.from_numpy(BG), T_MIN)
    ((rgb - data.rgb.double()).square().mean()).backward()

    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    g_logd, g_logit = np.zeros(offsets[-1]), np.zeros((offsets[-1], 3))
    sample_gradients(tree.index, md, dens, tree.sh.reshape(-1).view(np.uint16), tree.sh_row.reshape(-1), tree.fine_res, tree.sh_degree,
                     data.g0, data.gd, data.near, data.far, data.k0, data.basis.numpy(), data.rgb.numpy(), BG, STEP, T_MIN, cap, 1.0 / (3 * n),
                     offsets, g_logd, g_logit)  # fmt: skip
    assert offsets[-1] > 1000 and np.abs(g_logd).max() > 1e-5
    np.testing.assert_allclose(g_logd, log_sigma.grad.numpy(), rtol=1e-3, atol=1e-9)
    k = tree.sh_degree**2
    g_coeff = g_logit[:, :, None] * data.basis.numpy()[ray_of.numpy()][:, None, :]
    np.testing.assert_allclose(g_coeff.reshape(-1, 3 * k), coeff.grad.numpy(), rtol=1e-3, atol=1e-9)


def test_finetuning_recovers_a_tree_from_its_images_and_keeps_its_structure():
    """Pixels rendered by a tree; a perturbed copy is fine-tuned on them: the error falls by most
    of its way, and occupancy and the voxels with density stay as they were."""
    target = random_tree(seed=3)
    rng = np.random.default_rng(0)
    o, d = random_rays(n=4000, seed=5)
    pix = _reference(target, o, d)["rgb"].float()
    dens = target.density.astype(np.float32) * np.exp(rng.normal(0, 0.5, target.density.shape))
    start = NerfTree(target.index, dens.astype(np.float16), (target.sh + rng.normal(0, 0.7, target.sh.shape)).astype(np.float16),
                     target.aabb, target.sh_degree)
    data = _rays(start, o, d, pix)
    err = lambda t: float((_render(t, data)[0][0] - pix).square().mean())  # noqa: E731
    cfg = FinetuneConfig(seconds=60.0, max_steps=300, max_epochs=1e9, rays_per_step=1024, lr_final=0.3)
    before = start.sh.copy()
    tuned, info = finetune_tree(start, data, torch.from_numpy(BG), STEP, cfg, progress=False)
    assert info["finetune_steps"] == 300
    np.testing.assert_array_equal(start.sh, before)  # the input tree is left as it was
    assert err(tuned) < 0.3 * err(start)
    np.testing.assert_array_equal(tuned.index, start.index)
    np.testing.assert_array_equal(tuned.density > 0, start.density > 0)
    assert tuned.sh.shape == start.sh.shape and tuned.sh.dtype == np.float16


def test_stochastic_rounding_to_half_is_unbiased_and_lands_on_a_neighbour():
    x = np.array([1.0 + 1e-4, -0.3 + 3e-5, 0.01234, 5.0], dtype=np.float32)
    draws = np.stack([half_stochastic(x, seed).view(np.float16) for seed in range(4000)]).astype(np.float64)
    lo = np.nextafter(x.astype(np.float16), np.float16(-np.inf)).astype(np.float64)
    hi = np.nextafter(x.astype(np.float16), np.float16(np.inf)).astype(np.float64)
    assert ((draws >= lo) & (draws <= hi)).all()
    assert (np.abs(draws.mean(0) - x) < 0.05 * (hi - lo) / 2).all()
    assert (draws[:, 3] == 5.0).all()  # representable values stay


def test_fine_tuning_stops_after_its_passes_over_the_rays_and_leaves_a_tree_without_rays_unchanged():
    tree = random_tree(seed=8)
    o, d = random_rays(n=900, seed=9)
    data = _rays(tree, o, d, torch.rand(len(o), 3)).with_first_samples(tree, tree.density.reshape(-1).astype(np.float32), STEP)
    cfg = FinetuneConfig(seconds=60.0, max_epochs=2.5, rays_per_step=256)
    _, info = finetune_tree(tree, data, torch.from_numpy(BG), STEP, cfg, progress=False)
    assert info["finetune_steps"] == int(np.ceil(2.5 * len(data) / 256))
    own = NerfTree(tree.index, tree.density.copy(), tree.sh.copy(), tree.aabb, tree.sh_degree)
    tuned, _ = finetune_tree(own, data, torch.from_numpy(BG), STEP, cfg, progress=False, in_place=True)
    assert np.shares_memory(tuned.sh, own.sh) and not np.array_equal(own.sh, tree.sh)  # in place: no copy of the pool
    same, info = finetune_tree(tree, data[np.zeros(0, np.int64)], torch.from_numpy(BG), STEP, cfg, progress=False)
    assert info["finetune_steps"] == 0
    np.testing.assert_array_equal(same.density, tree.density)
    np.testing.assert_array_equal(same.sh, tree.sh)
